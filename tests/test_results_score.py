"""results.scoring: the same numbers as mlperf-logging's result_summarizer, the failure rules,
the RCP check, and `podium score`."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from results import scoring
from results.mllog import constants as c
from test_results_mllog import RESNET_KEYS

ROOT = Path(__file__).resolve().parent.parent
V07 = Path(__file__).parent / "fixtures" / "mlperf_logs" / "training_results_v0.7"
GOOGLE = V07 / "Google"


def write_run(path, *, seed, minutes, converge_epoch=36, status="success", batch=4096,
              resumed=False, break_key=None, t0=1_700_000_000_000):
    """A closed ResNet log for ruleset 4.0.0 with chosen times: init 60 s, then `minutes` of
    timed run with an eval every 4 epochs, reaching 0.76 at `converge_epoch`. `break_key`
    logs that key with a value the rules refuse (the log fails compliance)."""
    lines = []
    def log(key, value=None, t=t0, event_type="POINT_IN_TIME", **metadata):
        lines.append(":::MLLOG " + json.dumps({
            "namespace": "", "time_ms": t, "event_type": event_type, "key": key,
            "value": value, "metadata": {"file": "train.py", "lineno": len(lines) + 1,
                                         **metadata}}))
    log(c.CACHE_CLEAR, True)
    log(c.INIT_START, event_type="INTERVAL_START")
    log(c.SEED, seed)
    for key, value in RESNET_KEYS:
        value = {c.GLOBAL_BATCH_SIZE: batch}.get(key, value)
        log(key, 0.5 if key == break_key else value)
    start = t0 + 60_000
    log(c.INIT_STOP, t=start, event_type="INTERVAL_END")
    log(c.RUN_START, t=start, event_type="INTERVAL_START")
    total = round(minutes * 60_000)
    evals = list(range(4, converge_epoch + 1, 4))
    for i, epoch in enumerate(evals):
        t = start + total * (i + 1) // len(evals)
        if resumed and i == 1:  # as benchmarks/train.py logs a restart from a checkpoint
            log(c.INIT_START, t=t - 300, event_type="INTERVAL_START", podium_resume=True)
            log(c.INIT_STOP, t=t - 200, event_type="INTERVAL_END", podium_resume=True)
            log("podium_resume", {"segment": 1, "start_step": 100}, t=t - 200)
        log(c.BLOCK_START, t=t - 20, event_type="INTERVAL_START", first_epoch_num=epoch - 3,
            epoch_count=4)
        log(c.BLOCK_STOP, t=t - 10, event_type="INTERVAL_END", first_epoch_num=epoch - 3)
        log(c.EVAL_START, t=t - 10, event_type="INTERVAL_START", epoch_num=epoch)
        log(c.EVAL_ACCURACY, 0.76 if epoch == evals[-1] else 0.5, t=t, epoch_num=epoch)
        log(c.EVAL_STOP, t=t, event_type="INTERVAL_END", epoch_num=epoch)
    log(c.RUN_STOP, t=start + total, event_type="INTERVAL_END", status=status)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_system(submitter_dir, system="tpu-v5p-64", chips=32):
    from results.system_desc import REQUIRED_FIELDS
    desc = {f: "" for f in REQUIRED_FIELDS}
    desc.update(submitter=submitter_dir.name, division="closed", status="Available cloud",
                system_name=system, number_of_nodes=str(chips // 4), host_processors_per_node="1",
                accelerators_per_node="4", accelerator_model_name="TPU v5p", framework="JAX")
    (submitter_dir / "systems").mkdir(parents=True, exist_ok=True)
    (submitter_dir / "systems" / f"{system}.json").write_text(json.dumps(desc, indent=2))


def make_tree(root, minutes, epochs=None, runs=None):
    """ExampleOrg's closed ResNet folder with one run per entry of `minutes`; `runs` maps a
    run index to more write_run arguments."""
    org = root / "ExampleOrg"
    write_system(org)
    folder = org / "results" / "tpu-v5p-64" / "resnet"
    epochs = epochs or [36] * len(minutes)
    for i, (m, e) in enumerate(zip(minutes, epochs)):
        write_run(folder / f"result_{i}.txt", seed=i, minutes=m, converge_epoch=e,
                  **(runs or {}).get(i, {}))
    return org, folder


def summarizer(org, ruleset, workdir):
    """Runs the real result_summarizer on a copy of `org` (it writes files into the current
    folder and scaling.json into the tree) and returns its CSV rows."""
    copy = workdir / "copy" / org.name
    shutil.copytree(org, copy)
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.result_summarizer", str(copy),
                          "training", ruleset, "--csv", "out.csv"], cwd=workdir,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(workdir / "out.csv") as f:
        summary = list(csv.DictReader(f))
    with open(workdir / "out_detailed.csv") as f:
        detailed = list(csv.DictReader(f))
    return summary, detailed, out.stdout


def test_published_v07_scores_equal_result_summarizer(tmp_path):
    """The known scores (0.4717 min ResNet, 0.4002 min BERT), equal to the float the real
    result_summarizer prints for the same tree, not just close."""
    scores = {s.benchmark: s for s in scoring.score_tree(V07)}
    (row,), _, _ = summarizer(GOOGLE, "0.7.0", tmp_path)
    for benchmark, known, runs in (("resnet", 0.4717, 5), ("bert", 0.4002, 10)):
        s = scores[benchmark]
        assert round(s.score, 4) == known
        assert s.score == float(row[benchmark])
        assert s.valid and len(s.runs) == runs == s.required_runs and s.ruleset == "0.7.0"
        assert (s.submitter, s.system, s.division) == ("Google", "tpu-v3-8192-JAX", "closed")
        assert s.rcp is not None and not s.rcp.applicable  # v0.7 had no RCPs
    assert scores["resnet"].converged_mean == 92  # epochs: olympic mean of 88, 92 x4
    assert scores["bert"].converged_mean == 496 * 8192  # steps x batch


def test_rcp_and_scores_equal_result_summarizer_on_a_4_0_tree(tmp_path):
    """A closed 4.0.0 ResNet package at batch 4096: score, mean epochs to converge and the
    RCP verdict as the summarizer reports them; the user's tree is not written to."""
    org, folder = make_tree(tmp_path / "tree", [10.0, 11.5, 10.25, 12.0, 10.75],
                            epochs=[36, 40, 36, 40, 36])
    before = sorted(p.name for p in folder.iterdir())
    s = scoring.score_folder(folder)
    (row,), (detail,), _ = summarizer(org, "4.0.0", tmp_path)
    assert s.score == float(row["resnet"]) == pytest.approx((10.25 + 10.75 + 11.5) / 3)
    assert s.converged_mean == float(detail["resnet:samples_to_converge"]) == pytest.approx(112 / 3)
    assert detail["resnet:RCP"] == "Pass" and s.rcp.passed and s.valid
    assert s.rcp.message == "RCP Interpolation"
    assert s.rcp.rcp_mean == pytest.approx(35.7417, abs=1e-4)
    assert s.rcp.rcp_min == pytest.approx(34.867, abs=1e-3)
    assert sorted(p.name for p in folder.iterdir()) == before  # no scaling.json written
    text = scoring.format_scores([s])
    assert "score: 10.8333 min (olympic mean of 3 runs" in text and "VALID MLPerf score" in text


def test_too_fast_convergence_fails_the_rcp_check(tmp_path):
    _, folder = make_tree(tmp_path, [10, 10, 10, 10, 10], epochs=[28] * 5)
    s = scoring.score_folder(folder, check=False)
    assert s.score == 10 and not s.rcp.passed and not s.valid
    assert "RCP check failed" in scoring.format_scores([s])


def test_a_non_compliant_run_is_dropped_as_the_slowest_like_the_summarizer(tmp_path):
    org, folder = make_tree(tmp_path / "tree", [10, 20, 30, 40, 5],
                            runs={4: dict(break_key=c.LARS_EPSILON)})
    s = scoring.score_folder(folder)
    (row,), _, _ = summarizer(org, "4.0.0", tmp_path)
    bad = s.runs[4]
    assert not bad.counted and bad.problem.startswith("not compliant: CHECK for 'lars_epsilon'")
    # 5 min was fastest, but a failed run plays the slowest: 10 is dropped as the fastest.
    assert s.score == float(row["resnet"]) == (20 + 30 + 40) / 3


def test_an_aborted_run_counts_as_the_slowest_whatever_its_time(tmp_path):
    """Stricter than the summarizer, which would count an aborted run that passes
    compliance as a normal one: the rules allow one non-converging run, as the slowest."""
    _, folder = make_tree(tmp_path, [10, 20, 30, 40, 1], runs={4: dict(status="aborted")})
    s = scoring.score_folder(folder)
    assert s.runs[4].compliant and not s.runs[4].counted
    assert s.runs[4].problem == "run_stop status 'aborted': did not converge"
    assert s.score == (20 + 30 + 40) / 3


def test_two_failed_runs_give_no_score(tmp_path):
    _, folder = make_tree(tmp_path, [10, 20, 30, 40, 50],
                          runs={0: dict(status="aborted"), 1: dict(status="aborted")})
    s = scoring.score_folder(folder, check=False, rcp=False)
    assert s.score is None and not s.valid
    assert s.problems == ["2 runs failed or do not count; olympic scoring takes at most 1"]


def test_a_resumed_run_is_never_counted_as_an_uninterrupted_one(tmp_path):
    _, folder = make_tree(tmp_path, [10, 20, 30, 40, 50], runs={2: dict(resumed=True)})
    s = scoring.score_folder(folder, rcp=False)
    run = s.runs[2]
    assert run.resumed and not run.counted
    assert run.problem == "resumed: not a valid MLPerf time-to-train"
    # The checker rejects the log too: init_start after run_start.
    assert not run.compliant and "init_start" in run.check.errors[0]
    assert s.score == (20 + 40 + 50) / 3
    assert "no: resumed: not a valid MLPerf time-to-train" in scoring.format_scores([s])


def test_required_runs_and_olympic_mean():
    assert scoring.required_runs("resnet") == 5 and scoring.required_runs("bert") == 10
    assert scoring.required_runs("unet3d") == 40
    assert scoring.required_runs("regnet_y_400mf") == 5
    assert scoring.required_runs("wav2vec2_base") == 10
    assert scoring.required_runs("no_such_benchmark") is None
    assert scoring.olympic_mean([3, 1, 2]) == 2
    assert scoring.olympic_mean([3, 1, 2, 4], failed=1) == 3  # 1 dropped; the failed run is 5th
    assert scoring.olympic_mean([1, 2]) is None


def test_wrong_run_count_is_shown_but_not_valid(tmp_path):
    _, folder = make_tree(tmp_path, [10, 20, 30])
    s = scoring.score_folder(folder, rcp=False)
    assert s.score == 20 and not s.valid
    assert s.problems == ["runs: 3 of the 5 runs resnet needs"]
    single = scoring.score_run(folder / "result_1.txt")
    assert single.single_run and single.score == 20 and single.label.endswith("resnet/result_1")


def podium_cli(*args, cwd):
    code = ("import sys; from launch import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'jax' not in sys.modules, 'score/compare/check imported jax'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_podium_score_command(tmp_path):
    ok = podium_cli("score", str(V07), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "score: 0.4717 min" in ok.stdout and "score: 0.4002 min" in ok.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
    _, folder = make_tree(tmp_path / "short", [10, 20, 30])
    short = podium_cli("score", str(folder), cwd=tmp_path)
    assert short.returncode == 1 and "NOT a valid MLPerf score: 3 of the 5 runs" in short.stdout
    missing = podium_cli("score", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"podium: error: nothing to score: {tmp_path / 'nowhere'} " \
                                     "does not exist"
