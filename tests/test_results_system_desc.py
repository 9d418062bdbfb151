"""System descriptions pass mlperf-logging's system_desc_checker."""

import json
import subprocess
import sys

import pytest

from results.compliance import check_system_json
from results.system_desc import (REQUIRED_FIELDS, describe_host, system_description,
                                 write_system_description)


def _desc(**overrides):
    kwargs = dict(submitter="podium", division="closed", status="cloud",
                  system_name="tpu-v5p-64", number_of_nodes=8, accelerators_per_node=4,
                  accelerator_model_name="TPU v5p", accelerator_memory_capacity="95 GiB",
                  framework="JAX 0.7.2", other_software_stack={"flax": "0.12.8"},
                  host={"host_processor_model_name": "AMD EPYC 9B14",
                        "host_processors_per_node": "2", "host_networking": "200 Gb/s"})
    kwargs.update(overrides)
    return system_description(**kwargs)


def test_describe_host_says_what_it_knows():
    host = describe_host()
    assert set(host) <= set(REQUIRED_FIELDS)
    assert all(isinstance(v, str) for v in host.values())
    assert host["host_processor_model_name"]
    assert int(host["host_processor_vcpu_count"]) >= 1
    assert host["host_memory_capacity"].endswith(" GB")
    assert float(host["host_memory_capacity"].split()[0]) > 0
    import socket
    assert socket.gethostname() not in json.dumps(host)


def test_description_is_complete_and_checker_accepts_it(tmp_path):
    desc = _desc()
    assert list(desc) == list(REQUIRED_FIELDS)
    assert desc["status"] == "Available cloud"
    assert desc["number_of_nodes"] == "8" and desc["accelerators_per_node"] == "4"
    assert desc["host_networking"] == "200 Gb/s"
    path = tmp_path / "systems" / "tpu-v5p-64.json"
    assert write_system_description(path, desc) is True
    assert write_system_description(path, desc) is False  # identical: untouched
    # The raw CLI, as the rules say to run it: it exits 0 either way, so read the output.
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.system_desc_checker",
                          str(path), "training", "4.0.0", "--log_output", "/dev/null"],
                         capture_output=True, text=True, timeout=60)
    output = out.stdout + out.stderr
    assert "ERROR" not in output and "System description checker passed" in output, output
    result = check_system_json(path, "4.0.0")
    assert result.passed and result.errors == [] and result.kind == "system"


def test_current_host_description_passes(tmp_path):
    desc = system_description(submitter="podium", division="open", status="research",
                              system_name="cpu", number_of_nodes=1, accelerators_per_node=0,
                              accelerator_model_name="", framework="JAX",
                              other_software_stack="")
    assert desc["status"] == "Research, Development, or Internal (RDI)"
    path = tmp_path / "cpu.json"
    write_system_description(path, desc)
    assert check_system_json(path, "5.0.0").passed


def test_rewrite_replaces_description(tmp_path):
    path = tmp_path / "s.json"
    write_system_description(path, _desc())
    assert write_system_description(path, _desc(framework="JAX 0.8.0")) is True
    assert json.loads(path.read_text())["framework"] == "JAX 0.8.0"
    with pytest.raises(ValueError, match="lacks required fields.*cooling"):
        write_system_description(path, {k: v for k, v in _desc().items() if k != "cooling"})
    assert json.loads(path.read_text())["framework"] == "JAX 0.8.0"


@pytest.mark.parametrize("kwargs, message", [
    (dict(status="available"), "invalid status 'available'.*cloud"),
    (dict(division="closd"), "invalid division 'closd'"),
    (dict(number_of_nodes="8"), "invalid number_of_nodes"),
    (dict(host={"hostname": "x"}), "fields a system JSON does not.*hostname"),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _desc(**kwargs)


def test_checker_findings_are_reported(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**_desc(), "status": "research"}))
    result = check_system_json(old, "4.0.0")
    assert not result.passed
    assert result.errors == ["Field status contains a non valid value: research, must be one "
                             "of ['Available on-premise', 'Available cloud', 'Research, "
                             "Development, or Internal (RDI)', 'Preview']"]
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps({**_desc(), "accelerators_per_node": 4}))
    result = check_system_json(numbers, "4.0.0")
    assert not result.passed and "values must be strings" in result.errors[0]
