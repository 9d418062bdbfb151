"""`podium compare` on published logs and on a real podium run: table, PNG, HTML."""

import base64
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from results import compare, scoring
from test_results_score import podium_cli

ROOT = Path(__file__).resolve().parent.parent
V07 = Path(__file__).parent / "fixtures" / "mlperf_logs" / "training_results_v0.7"
GOOGLE_RESNET = V07 / "Google" / "results" / "tpu-v3-8192-JAX" / "resnet"
RUN = Path("podium") / "results" / "cpu-x1" / "resnet" / "result_0.txt"
RECORD = Path("podium") / "podium_records" / "cpu-x1" / "resnet" / "result_0.json"


@pytest.fixture(scope="module")
def podium_trees(tmp_path_factory, worker_id):
    """One real digits run (`podium run`, ~40 s), copied into a second tree and into a third
    whose log says the run was resumed from a checkpoint. Under pytest-xdist the workers
    share one run (a file lock in the session's temporary folder)."""
    if worker_id == "master":
        return _make_trees(tmp_path_factory.mktemp("compare"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, common to the workers
    with open(shared / "podium_compare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = shared / "podium_compare"
        if not (work / "done").exists():
            shutil.rmtree(work, ignore_errors=True)
            _make_trees(work)
            (work / "done").write_text("")
    return work


def _make_trees(work):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, "-m", "launch.cli", "run", "resnet50", "--recipe",
                          "digits_cpu", "--output", str(work / "a"), "--set",
                          f"data.dir={work / 'data'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    shutil.copytree(work / "a" / "podium", work / "b" / "podium")
    shutil.copytree(work / "a" / "podium", work / "resumed" / "podium")
    # A restart after the first block, logged as benchmarks/train.py logs one: a second
    # init, then a podium_resume event.
    log = work / "resumed" / RUN
    lines = log.read_text().splitlines()
    at = next(i for i, l in enumerate(lines) if '"key": "block_stop"' in l) + 1
    entry = json.loads(lines[at].split(":::MLLOG ", 1)[1])
    resume = [dict(entry, key="init_start", value=None, event_type="INTERVAL_START",
                   metadata={"podium_resume": True}),
              dict(entry, key="init_stop", value=None, event_type="INTERVAL_END",
                   metadata={"podium_resume": True}),
              dict(entry, key="podium_resume", value={"segment": 1, "start_step": 47},
                   event_type="POINT_IN_TIME", metadata={})]
    lines[at:at] = [":::MLLOG " + json.dumps(e) for e in resume]
    log.write_text("\n".join(lines) + "\n")
    return work


def test_published_rows_numbers(tmp_path):
    """Score, chips, chip-minutes per epoch, epochs to converge, init, check: the published
    ResNet and BERT folders as the table shows them."""
    entries = compare.load([V07])
    rows = {r["label"]: r for r in compare.rows(entries)}
    resnet = rows["Google/tpu-v3-8192-JAX/resnet"]
    score = scoring.score_folder(GOOGLE_RESNET).score
    assert resnet["score min"] == "0.4717" and resnet["chips"] == "4096 TPU v3"
    assert resnet["chip-min/work"] == f"{score * 4096 / 92:.3g} /epoch"
    assert resnet["converge"] == "92 epochs" and resnet["check"] == "PASS"
    assert resnet["runs"] == "5/5" and resnet["eval"] == "-"  # no eval_start lines in v0.7
    bert = rows["Google/tpu-v3-8192-JAX/bert"]
    assert bert["score min"] == "0.4002" and bert["converge"] == "4.06 M samples"
    assert bert["chip-min/work"] == f"{0.40022708333333334 * 4096 / 4.063232:.3g} /Msample"
    by_label = {e.label: e for e in entries}
    assert 190 < by_label["Google/tpu-v3-8192-JAX/bert"].init_s < 200
    text = compare.format_table(entries)
    assert text.splitlines()[0].split() == ["#", "label", "runs", "score", "min", "chips",
                                            "chip-min/work", "converge", "init", "s", "eval",
                                            "check"]
    assert "samples = steps x global batch size" in text and "*" not in text


def test_podium_run_beside_published_and_its_record(podium_trees):
    record = json.loads((podium_trees / "a" / RECORD).read_text())
    entries = compare.load([podium_trees / "a", GOOGLE_RESNET])
    mine, google = entries
    assert mine.label == "podium/cpu-x1/resnet" and len(mine.records) == 1
    assert mine.chips == (1, "cpu")  # the system JSON has 0 accelerators: from the record
    assert mine.target == record["quality_target"] == 0.95 and mine.metric == "top1"
    assert mine.converge == record["epochs_or_samples_to_converge"]
    assert mine.minutes == pytest.approx(record["time_to_train_s"] / 60, abs=0.01)
    # init: the log's init_start -> init_stop; the record's clock starts a little earlier.
    lines = [json.loads(l.split(":::MLLOG ", 1)[1])
             for l in (podium_trees / "a" / RUN).read_text().splitlines()]
    times = {l["key"]: l["time_ms"] for l in lines if l["key"] in ("init_start", "init_stop")}
    assert mine.init_s == (times["init_stop"] - times["init_start"]) / 1000
    assert 0 < mine.init_s <= record["init_s"] + 0.01
    eval_s = record.get("phases", {}).get("eval", record["extra"].get("eval_s"))
    assert mine.eval_share == pytest.approx(eval_s / record["time_to_train_s"], abs=0.03)
    row = compare.rows(entries)[0]
    assert row["runs"] == "1/5" and row["score min"].endswith("*") and row["check"] == "PASS"
    assert "1 of the 5 runs resnet needs" in " ".join(mine.notes)
    assert google.is_score and not mine.is_score


def test_png_and_self_contained_html(podium_trees, tmp_path):
    entries = compare.load([podium_trees / "a", GOOGLE_RESNET], check=False)
    png = compare.plot_curves(entries, tmp_path / "curves.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "curves.png").read_bytes() == png
    from PIL import Image
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 600 and len(set(image.getdata())) > 50  # a drawn plot, not blank
    # Every eval of every run is a plotted point.
    for entry in entries:
        curves = compare._curves(entry)
        assert [len(points) for _, points, _ in curves] == [len(r.log.evals)
                                                            for r in entry.score.runs]
    page = compare.html_report(entries, tmp_path / "report.html", png)
    assert (tmp_path / "report.html").read_text() == page
    (data,) = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert base64.b64decode(data) == png
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # no external assets
    assert "<script" not in page and "<link" not in page
    for entry in entries:
        assert entry.label in page
        for run in entry.score.runs:
            assert f"<td class='l'>{run.name}</td>" in page
    assert "recipe digits_cpu" in page  # from the podium record


def test_two_podium_trees_and_a_resumed_run(podium_trees):
    entries = compare.load([podium_trees / "a", podium_trees / "b", podium_trees / "resumed"])
    labels = [e.label for e in entries]
    assert labels == [f"{podium_trees / name}: podium/cpu-x1/resnet"
                      for name in ("a", "b", "resumed")]
    rows = compare.rows(entries)
    assert rows[0]["score min"] == rows[1]["score min"] != "-"
    resumed = entries[2]
    assert resumed.resumed and rows[2]["check"] == "RESUMED" and rows[2]["score min"] == "-"
    assert "result_0.txt: resumed: not a valid MLPerf time-to-train" in resumed.notes
    assert "resumed: not a valid MLPerf time-to-train" in compare.format_table(entries)


def test_compare_command_writes_png_and_html_without_jax(podium_trees, tmp_path):
    png, page = tmp_path / "out" / "c.png", tmp_path / "out" / "c.html"
    out = podium_cli("compare", str(podium_trees / "a"), str(podium_trees / "b" / RUN),
                     str(GOOGLE_RESNET), "--png", str(png), "--html", str(page), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("#  label") and len([l for l in lines[2:5] if l[:1].isdigit()]) == 3
    assert "podium/cpu-x1/resnet/result_0" in out.stdout  # the single run
    assert png.read_bytes()[:4] == b"\x89PNG" and page.read_text().startswith("<!DOCTYPE html>")
    assert f"convergence curves: {png}" in out.stdout
    bad = podium_cli("compare", str(tmp_path / "empty"), cwd=tmp_path)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr


def test_results_modules_import_no_jax():
    code = ("import sys, results.logparse, results.scoring, results.compare, "
            "results.compliance, results.record, results.layout, results.mllog; "
            "bad = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
