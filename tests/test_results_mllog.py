"""MLPerfLogger writes what the real mlperf-logging compliance checker accepts."""

import inspect
import json
import os
from pathlib import Path

import pytest

from results.compliance import check_log
from results.mllog import MLPerfLogger, constants as c

# Values the 4.0.0 closed ResNet + LARS rules enforce (training_3.1.0/closed_resnet_lars.yaml).
RESNET_KEYS = [
    (c.SUBMISSION_ORG, "podium"),
    (c.SUBMISSION_PLATFORM, "cpu-2"),
    (c.SUBMISSION_DIVISION, c.CLOSED),
    (c.SUBMISSION_STATUS, c.RESEARCH),
    (c.SUBMISSION_BENCHMARK, c.RESNET),
    (c.GLOBAL_BATCH_SIZE, 4096),
    (c.GRADIENT_ACCUMULATION_STEPS, 1),
    (c.TRAIN_SAMPLES, 1281167),
    (c.EVAL_SAMPLES, 50000),
    (c.OPT_NAME, c.LARS),
    (c.LARS_OPT_BASE_LEARNING_RATE, 10.0),
    (c.LARS_OPT_END_LR, 0.0001),
    (c.LARS_OPT_LR_DECAY_POLY_POWER, 2),
    (c.LARS_OPT_LR_DECAY_STEPS, 1100),
    (c.LARS_EPSILON, 0.0),
    (c.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, 5),
    (c.LARS_OPT_MOMENTUM, 0.9),
    (c.LARS_OPT_WEIGHT_DECAY, 0.00005),
]


def write_resnet_log(path, *, seed=0, skip=(), override=None, accuracies=(0.52, 0.7601)):
    """A complete closed ResNet log for ruleset 4.0.0, minus `skip`, with `override` values."""
    override = override or {}
    with MLPerfLogger(path) as log:
        log.event(c.CACHE_CLEAR, True)
        log.start(c.INIT_START)
        log.event(c.SEED, seed)
        for key, value in RESNET_KEYS:
            if key not in skip:
                log.event(key, override.get(key, value))
        log.end(c.INIT_STOP)
        log.start(c.RUN_START)
        for i, accuracy in enumerate(accuracies):
            first, count = 1 + 4 * i, 4
            epoch = {c.EPOCH_NUM: first + count - 1}
            log.start(c.BLOCK_START, metadata={c.FIRST_EPOCH_NUM: first, c.EPOCH_COUNT: count})
            log.end(c.BLOCK_STOP, metadata={c.FIRST_EPOCH_NUM: first})
            log.start(c.EVAL_START, metadata=epoch)
            log.event(c.EVAL_ACCURACY, accuracy, metadata=epoch)
            log.end(c.EVAL_STOP, metadata=epoch)
        log.end(c.RUN_STOP, metadata={c.STATUS: c.SUCCESS})
    return Path(path)


def read_lines(path):
    text = Path(path).read_text()
    assert all(line.startswith(":::MLLOG {") for line in text.splitlines())
    return [json.loads(line[len(":::MLLOG "):]) for line in text.splitlines()]


def test_complete_resnet_log_passes_ruleset_4(tmp_path):
    path = write_resnet_log(tmp_path / "result_0.txt")
    result = check_log(path)
    assert result.passed, result.output
    assert (result.ruleset, result.benchmark, result.errors) == ("4.0.0", "resnet", [])
    assert "INFO - SUCCESS" in result.output


@pytest.mark.parametrize("kwargs, named", [
    (dict(skip={c.GRADIENT_ACCUMULATION_STEPS}), "gradient_accumulation_steps"),
    (dict(override={c.LARS_EPSILON: 0.1}), "lars_epsilon"),
    (dict(accuracies=(0.5, 0.7)), "eval_accuracy"),
])
def test_missing_or_wrong_key_fails_naming_it(tmp_path, kwargs, named):
    result = check_log(write_resnet_log(tmp_path / "result_0.txt", **kwargs))
    assert not result.passed
    assert any(named in e for e in result.errors), result.errors
    assert "ERROR - FAILED" in result.output


def test_line_format_and_call_site(tmp_path):
    path = tmp_path / "log.txt"
    with MLPerfLogger(path) as log:
        log.event(c.SEED, 7); line = inspect.currentframe().f_lineno
        log.start(c.RUN_START)
        log.end(c.RUN_STOP, metadata={c.STATUS: c.SUCCESS})
    seed, start, stop = read_lines(path)
    assert list(seed) == ["namespace", "time_ms", "event_type", "key", "value", "metadata"]
    assert seed["namespace"] == "" and isinstance(seed["time_ms"], int)
    assert [e["event_type"] for e in (seed, start, stop)] == [
        "POINT_IN_TIME", "INTERVAL_START", "INTERVAL_END"]
    assert seed["value"] == 7 and stop["metadata"]["status"] == "success"
    # The call site is this test, relative to the checkout, not results/mllog.py.
    checkout = Path(__file__).resolve().parent.parent
    assert seed["metadata"]["file"] == "tests/test_results_mllog.py"
    assert (checkout / seed["metadata"]["file"]).samefile(__file__)
    assert seed["metadata"]["lineno"] == line


def test_stack_offset_names_the_helpers_caller(tmp_path):
    path = tmp_path / "log.txt"
    log = MLPerfLogger(path)

    def helper(value):
        log.event(c.EVAL_ACCURACY, value, metadata={c.EPOCH_NUM: 1}, stack_offset=1)

    helper(0.5); line = inspect.currentframe().f_lineno
    log.close()
    (entry,) = read_lines(path)
    assert entry["metadata"] == {"file": "tests/test_results_mllog.py", "lineno": line,
                                 "epoch_num": 1}


def test_disabled_logger_writes_nothing(tmp_path):
    path = tmp_path / "log.txt"
    with MLPerfLogger(path, enabled=False, echo=True) as log:
        log.event(c.SEED, 1)
        log.event(c.SEED, object())  # not even validated: other processes do no work
    assert not path.exists()


def test_lines_are_on_disk_before_close(tmp_path, capsys):
    path = tmp_path / "log.txt"
    log = MLPerfLogger(path, echo=True)
    log.event(c.SUBMISSION_BENCHMARK, c.RESNET)
    assert read_lines(path)[0]["value"] == "resnet"
    assert capsys.readouterr().out.startswith(":::MLLOG {")
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.event(c.SEED, 1)


def test_array_values_become_plain_json(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "log.txt"
    with MLPerfLogger(path) as log:
        log.event(c.EVAL_ACCURACY, np.float32(0.75), metadata={c.EPOCH_NUM: np.int64(3)})
        log.event("mesh", {"shape": (2, np.int32(4))})
    acc, mesh = read_lines(path)
    assert acc["value"] == pytest.approx(0.75) and acc["metadata"]["epoch_num"] == 3
    assert mesh["value"] == {"shape": [2, 4]}


def test_bad_input_is_refused_with_the_key_named(tmp_path):
    path = tmp_path / "log.txt"
    with MLPerfLogger(path) as log:
        with pytest.raises(TypeError, match="'seed'"):
            log.event(c.SEED, object())
        with pytest.raises(ValueError, match="lineno"):
            log.event(c.SEED, 1, metadata={"lineno": 3})
        with pytest.raises(TypeError, match="dict"):
            log.event(c.SEED, 1, metadata=[1])
    assert path.read_text() == ""  # nothing half-written
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MLPerfLogger(tmp_path / "missing" / "log.txt")


def test_exception_after_run_start_ends_the_log_aborted(tmp_path):
    path = tmp_path / "log.txt"
    with pytest.raises(KeyError):
        with MLPerfLogger(path) as log:
            log.start(c.RUN_START)
            raise KeyError("boom")
    last = read_lines(path)[-1]
    assert (last["key"], last["metadata"]["status"]) == ("run_stop", "aborted")


def test_loggers_do_not_share_files(tmp_path):
    a, b = MLPerfLogger(tmp_path / "a.txt"), MLPerfLogger(tmp_path / "b.txt")
    a.event(c.SEED, 1)
    b.event(c.SEED, 2)
    a.close(); b.close()
    assert [e["value"] for e in read_lines(tmp_path / "a.txt")] == [1]
    assert [e["value"] for e in read_lines(tmp_path / "b.txt")] == [2]


def test_results_import_no_jax_flax_or_tensorflow():
    import subprocess
    import sys
    code = ("import sys, results.mllog, results.layout, results.system_desc, "
            "results.compliance, results.record; "
            "bad = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__))


def test_nan_is_logged_as_a_number_the_checker_can_compare(tmp_path):
    """A diverged eval logs NaN (which Python's json reads as a float); a string "nan" would
    crash the checker's target comparison."""
    path = write_resnet_log(tmp_path / "result_0.txt", accuracies=(float("nan"), 0.7601))
    assert '"key": "eval_accuracy", "value": NaN' in path.read_text()
    assert check_log(path).passed
