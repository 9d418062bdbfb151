"""results.logparse on real published logs, every round's line format, broken lines, fuzz."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from mlperf_logging.compliance_checker.mlp_parser import parse_file
from mlperf_logging.compliance_checker.mlp_parser.ruleset_070 import parse_generator
from mlperf_logging.result_summarizer.result_summarizer import _query_run_start_stop

from results.logparse import parse_log, parse_text

GOOGLE = (Path(__file__).parent / "fixtures" / "mlperf_logs" / "training_results_v0.7" / "Google"
          / "results" / "tpu-v3-8192-JAX")
LOGS = sorted(GOOGLE.glob("*/result_*.txt"))


def line(key, value=None, time_ms=1000, **extra):
    metadata = extra.pop("metadata", {})
    entry = {"namespace": "", "time_ms": time_ms, "event_type": "POINT_IN_TIME", "key": key,
             "value": value, "metadata": metadata, **extra}
    return ":::MLLOG " + json.dumps(entry)


@pytest.mark.parametrize("path", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_published_logs_parse_cleanly_with_the_summarizers_times(path):
    """Every v0.7 log parses without a warning, and its run_start/run_stop are the ones
    mlperf-logging's own parser and result_summarizer take."""
    log = parse_log(path)
    assert log.warnings == []
    assert log.benchmark == path.parent.name and log.round == "0.7" and log.ruleset == "0.7.0"
    assert not log.has_event_type and log.succeeded
    loglines, failed = parse_file(str(path), ruleset="0.7.0")
    assert failed == [] and len(log.events) == len(loglines)
    start, stop = _query_run_start_stop(loglines)
    assert (log.run_start_ms, log.run_stop_ms) == (start, stop)
    assert log.time_to_train_min == (stop - start) / 60 / 1000
    assert 100 < log.init_s < 300  # the TPU pod's init: compile before the clock starts


def test_resnet_v07_evals_are_epochs():
    log = parse_log(GOOGLE / "resnet" / "result_1.txt")
    assert log.progress_unit == "epoch" and log.work_unit == "epochs"
    assert [e.progress for e in log.evals[:3]] == [4, 8, 12]
    assert log.converged.progress == 88 and log.converged_work == 88
    assert log.converged.value >= 0.759
    assert log.global_batch_size == 65536 and log.seeds and log.train_samples == 1281167
    assert log.hyperparameters["opt_name"] == "lars"
    assert log.submission["submission_org"] == "Google"
    # No eval_start/eval_stop lines in these logs: the eval share is unknown, not zero.
    assert log.eval_intervals == [] and log.eval_share is None
    assert 0 < log.train_s <= log.time_to_train_ms / 1000


def test_bert_v07_async_evals_paired_and_steps_converted_to_samples():
    """BERT v0.7 logs eval_start of the next eval before the previous eval's accuracy, and
    its epoch_num counts steps (8192 samples each)."""
    log = parse_log(GOOGLE / "bert" / "result_0.txt")
    assert log.progress_unit == "steps" and log.work_unit == "samples"
    assert [e.progress for e in log.evals] == [372, 434, 496]
    assert [e.samples for e in log.evals] == [372 * 8192, 434 * 8192, 496 * 8192]
    first = log.evals[0]
    # eval 372 started at its own eval_start, not at the eval_start of 434 or 558 logged since.
    assert (first.start_ms, first.stop_ms) == (1593108044669, 1593108055696)
    assert len(log.eval_intervals) == 3  # eval 558 never stopped: the run ended first
    assert log.converged_work == 496 * 8192
    # Evals overlap training: only time with an eval in flight and no train block counts,
    # i.e. the gaps between blocks and the wait for evals after the last block.
    gaps = [(1593108044669, 1593108045347), (1593108046725, 1593108046796),
            (1593108047865, 1593108047931), (1593108048992, 1593108061555)]
    assert log.eval_s == pytest.approx(sum(b - a for a, b in gaps) / 1000)
    assert log.eval_share == pytest.approx(log.eval_s * 1000 / log.time_to_train_ms)


def test_round_formats_prefixes_namespaces_and_samples():
    text = "\n".join([
        "I0518 12:00:00.100 140 train.py:12] " + line("submission_benchmark", "bert"),
        line("global_batch_size", 4096, namespace=7),  # an int namespace
        "some unrelated output",
        line("run_start", time_ms=10_000, event_type="INTERVAL_START"),
        "[1,0]<stdout>:" + line("eval_start", time_ms=20_000, metadata={"epoch_num": 2_000_000}),
        line("eval_accuracy", 0.721, time_ms=21_000, metadata={"epoch_num": 2_000_000}),
        line("eval_stop", time_ms=22_000, metadata={"epoch_num": 2_000_000}),
        line("run_stop", time_ms=70_000, metadata={"status": "success"}),
    ])
    log = parse_text(text, path="result_0.txt")
    assert log.warnings == []
    assert log.events[1].namespace == "7" and log.has_event_type
    assert log.progress_unit == "samples" and log.converged_work == 2_000_000
    assert log.time_to_train_min == 1.0 and log.eval_s == 2.0 and log.eval_share == 2 / 60
    assert log.ruleset == "5.0.0"  # no round in the path: BERT's last MLPerf round

    v06 = parse_text(':::MLL 1558638394.000 run_start: {"value": null, "metadata": {}}\n'
                     ':::MLL 1558638454.500 run_stop: {"value": null, "metadata": '
                     '{"status": "success"}}\n')
    assert v06.warnings == [] and v06.time_to_train_ms == 60_500


def test_malformed_lines_warn_with_file_and_line_and_the_rest_parses():
    text = "\n".join([
        line("submission_benchmark", "resnet"),
        ':::MLLOG {"key": "run_start", "time_ms": 1000',          # truncated (a crash)
        ':::MLLOG ["not", "an", "object"]',
        ':::MLLOG {"time_ms": 5, "value": 1, "metadata": {}}',     # no key
        line("seed", 3, time_ms="soon"),                            # time not a number
        line("eval_accuracy", 0.5, metadata=[1, 2]),                # metadata not an object
        ":::MLL garbage",
        line("run_start", time_ms=2000),
    ])
    log = parse_text(text, path="result_3.txt")
    assert [str(w) for w in log.warnings] == [
        "result_3.txt:2: unreadable MLLOG line: not valid JSON "
        "(Expecting ',' delimiter: line 1 column 37 (char 36))",
        "result_3.txt:3: unreadable MLLOG line: the MLLOG payload is a JSON list, not an object",
        "result_3.txt:4: no 'key' string in the MLLOG line (got None)",
        "result_3.txt:5: seed: time_ms 'soon' is not a finite number",
        "result_3.txt:6: eval_accuracy: metadata is a list, not an object",
        "result_3.txt:7: unreadable MLLOG line: a ':::MLL' line that is not "
        "'<seconds> <key>: <json>'",
    ]
    assert [e.key for e in log.events] == ["submission_benchmark", "seed", "eval_accuracy",
                                           "run_start"]
    assert log.events[1].time_ms is None and log.run_start_ms == 2000
    assert log.run_stop_ms is None and log.time_to_train_min is None and log.status is None
    assert [str(w) for w in parse_text("", path="empty.txt").warnings] == [
        "empty.txt: no MLPerf log lines (':::MLLOG {...}')"]
    missing = parse_log("/no/such/result_0.txt")
    assert missing.events == [] and "cannot read the log" in str(missing.warnings[0])


def test_resume_lines_are_exposed():
    text = "\n".join([
        line("run_start", time_ms=0),
        line("podium_resume", {"segment": 2, "from_step": 120}, time_ms=50_000),
        line("run_stop", time_ms=90_000, metadata={"status": "success"}),
    ])
    log = parse_text(text)
    assert log.resumed
    assert log.resumes == [{"segment": 2, "from_step": 120, "time_ms": 50_000, "line": 2}]
    assert "podium_resume" not in log.hyperparameters
    assert not parse_text(line("run_start")).resumed


_KEYS = st.sampled_from(["run_start", "run_stop", "init_start", "init_stop", "eval_start",
                         "eval_stop", "eval_accuracy", "block_start", "block_stop",
                         "submission_benchmark", "global_batch_size", "podium_resume", "seed"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
_METADATA = st.dictionaries(st.sampled_from(["epoch_num", "samples_count", "step_num",
                                             "first_epoch_num", "status", "file", "lineno"]),
                            _JSON, max_size=3) | _JSON
_ENTRY = st.fixed_dictionaries({"key": _KEYS | _JSON, "time_ms": st.integers() | _JSON},
                               optional={"value": _JSON, "metadata": _METADATA,
                                         "event_type": _JSON, "namespace": _JSON})


def _touch_everything(log):
    """Every derived field: none may raise."""
    for name in ("name", "division", "succeeded", "resumed", "time_to_train_ms",
                 "time_to_train_min", "init_s", "train_s", "eval_s", "eval_share",
                 "work_unit", "converged_work"):
        getattr(log, name)
    [str(w) for w in log.warnings]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ENTRY, max_size=12), st.lists(st.text(max_size=40), max_size=4))
def test_fuzz_structured_lines_never_raise(entries, noise):
    lines = [":::MLLOG " + json.dumps(e) for e in entries] + [":::MLLOG " + n for n in noise]
    _touch_everything(parse_text("\n".join(lines), path="fuzz.txt"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_fuzz_arbitrary_input_never_raises(data):
    for text in (data, (b":::MLLOG " if isinstance(data, bytes) else ":::MLLOG ") + data):
        _touch_everything(parse_text(text, path="fuzz.txt"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["run_start", "run_stop", "seed"]),
                          st.integers(0, 10**6)), max_size=10))
def test_fuzz_run_start_stop_match_the_summarizer(lines):
    """Whatever the order and repetition of run_start/run_stop, podium takes the lines
    result_summarizer takes."""
    text = [line(key, time_ms=t, metadata={"status": "success"}) for key, t in lines]
    log = parse_text("\n".join(text))
    loglines, _ = parse_generator(text)
    try:
        expected = _query_run_start_stop(loglines)
    except ValueError:
        assert log.time_to_train_ms is None
        return
    assert (log.run_start_ms, log.run_stop_ms) == expected
