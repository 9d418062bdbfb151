"""The submission layout never overwrites a result and stays clean for package_checker."""

import subprocess
import sys
import threading

import pytest

from results.layout import SubmissionLayout, atomic_write_text
from results.system_desc import system_description, write_system_description
from test_results_mllog import write_resnet_log


def test_paths(tmp_path):
    layout = SubmissionLayout(tmp_path, "podium", "tpu-v5p-64", "resnet")
    assert layout.results_dir == tmp_path / "podium" / "results" / "tpu-v5p-64" / "resnet"
    assert layout.system_json_path == tmp_path / "podium" / "systems" / "tpu-v5p-64.json"
    assert layout.record_path(3) == (
        tmp_path / "podium" / "podium_records" / "tpu-v5p-64" / "resnet" / "result_3.json")
    assert layout.log_path(3).name == "result_3.txt"


def test_reserve_never_overwrites(tmp_path):
    layout = SubmissionLayout(tmp_path, "podium", "cpu", "resnet")
    layout.results_dir.mkdir(parents=True)
    (layout.results_dir / "result_0.txt").write_text("earlier run\n")
    index, path = layout.reserve_result()
    assert (index, path) == (1, layout.results_dir / "result_1.txt")
    assert path.read_text() == ""
    assert (layout.results_dir / "result_0.txt").read_text() == "earlier run\n"
    # A record whose log was deleted still holds its index; numbering only grows.
    layout.records_dir.mkdir(parents=True)
    layout.record_path(2).write_text("{}")
    assert layout.reserve_result()[0] == 3
    (layout.results_dir / "result_0.txt").unlink()
    assert layout.reserve_result()[0] == 4
    assert layout.result_indices() == [1, 3, 4]


def test_concurrent_reservations_get_distinct_indices(tmp_path):
    layout = SubmissionLayout(tmp_path, "podium", "cpu", "bert")
    got, barrier = [], threading.Barrier(8)

    def reserve():
        barrier.wait()
        for _ in range(5):
            got.append(layout.reserve_result()[0])

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(40))
    assert layout.result_indices() == list(range(40))


@pytest.mark.parametrize("field, value", [
    ("submitter", "my org"), ("system", "a/b"), ("benchmark", ".."), ("system", ""),
    ("benchmark", "résnet"),
])
def test_names_are_validated(tmp_path, field, value):
    names = {"submitter": "podium", "system": "cpu", "benchmark": "resnet", field: value}
    with pytest.raises(ValueError, match=f"invalid {field} name {value!r}.*letters, digits"):
        SubmissionLayout(tmp_path, **names)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_records_do_not_disturb_package_checker(tmp_path):
    """5 runs with their records: package_checker counts exactly 5 logs and sees no stray
    files (records live outside results/)."""
    layout = SubmissionLayout(tmp_path, "podium", "cpu-2", "resnet")
    for seed in range(5):
        index, log = layout.reserve_result()
        write_resnet_log(log, seed=seed)
        atomic_write_text(layout.record_path(index), "{}\n")
    write_system_description(layout.system_json_path, system_description(
        submitter="podium", division="closed", status="research", system_name="cpu-2",
        number_of_nodes=1, accelerators_per_node=0, accelerator_model_name="",
        framework="JAX", other_software_stack={}))
    out = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.package_checker", str(layout.submitter_dir),
         "training", "4.0.0", "--rcp-bypass", "--log_output", "/dev/null"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = out.stdout + out.stderr
    assert "System description checker passed" in output
    assert "Incorrect number of files" not in output
    assert "Unknown files" not in output and "do not conform" not in output
    assert "does not comply" not in output
    assert "PACKAGE CHECKER FOUND NO ERRORS" in output, output
