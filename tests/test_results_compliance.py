"""Rulesets, round inference and the checkers on real published logs."""

from pathlib import Path

import pytest

from results import compliance
from results.compliance import (CheckResult, check_log, check_tree, format_report,
                                infer_round, ruleset_for, ruleset_for_round)
from test_results_mllog import write_resnet_log

V07 = Path(__file__).parent / "fixtures" / "mlperf_logs" / "training_results_v0.7"
GOOGLE_V07 = V07 / "Google"


def test_rulesets():
    assert ruleset_for("resnet") == ("4.0.0", None)
    assert ruleset_for("bert") == ("5.0.0", None)
    with pytest.raises(ValueError, match=r"'ssd'.*\['bert', 'resnet'"):
        ruleset_for("ssd")
    assert ruleset_for_round("0.7") == "0.7.0"
    assert ruleset_for_round("v4.0") == "4.0.0"
    assert ruleset_for_round("5.0.0") == "5.0.0"
    with pytest.raises(ValueError, match="no training ruleset for MLPerf round '9.9'"):
        ruleset_for_round("9.9")
    assert infer_round(GOOGLE_V07 / "results" / "x" / "resnet" / "result_0.txt") == "0.7"
    assert infer_round("/data/runs/podium/results/x/resnet/result_0.txt") is None


def test_published_v07_logs_pass_their_round():
    """Google's MLPerf v0.7 JAX submission: every log and the system JSON pass 0.7.0,
    which check_tree reads from the folder name."""
    results = check_tree(V07)
    assert len(results) == 16  # 1 system JSON + 5 ResNet + 10 BERT logs
    assert all(r.passed for r in results), format_report(results)
    assert {r.ruleset for r in results} == {"0.7.0"}
    assert [r.kind for r in results].count("system") == 1
    assert {r.benchmark for r in results if r.kind == "log"} == {"resnet", "bert"}


def test_published_v07_packages_pass_the_package_checker():
    """package=True adds one result per benchmark folder from mlperf-logging's
    package_checker (run counts, compliance), read from its output."""
    results = check_tree(V07, package=True)
    packages = [r for r in results if r.kind == "package"]
    assert len(results) == 18 and all(r.passed for r in results), format_report(results)
    assert [(Path(r.path).name, r.ruleset) for r in packages] == [("bert", "0.7.0"),
                                                                   ("resnet", "0.7.0")]
    assert "PACKAGE CHECKER FOUND NO ERRORS" in packages[0].output
    assert "[package, ruleset 0.7.0]" in format_report(packages)


def test_v07_log_fails_the_last_resnet_ruleset():
    log = GOOGLE_V07 / "results" / "tpu-v3-8192-JAX" / "resnet" / "result_0.txt"
    result = check_log(log, ruleset="4.0.0")
    assert not result.passed
    assert result.errors == [
        "Required EXACTLY_ONE occurrence of 'gradient_accumulation_steps' but found 0"]
    (system,) = check_tree(GOOGLE_V07 / "systems", ruleset="4.0.0")
    assert not system.passed and "non valid value: research" in system.errors[0]


def test_ruleset_without_the_benchmark_fails_cleanly(tmp_path):
    """The checker crashes on a ruleset that retired the benchmark; podium says why."""
    log = write_resnet_log(tmp_path / "result_0.txt")
    result = check_log(log, ruleset="6.1.0")
    assert not result.passed and result.output == ""
    assert result.errors == ["ruleset 6.1.0 has no rules for benchmark 'resnet' (rulesets "
                             "that have it: ['0.6.0', '0.7.0', '1.0.0', '1.1.0', '2.0.0', "
                             "'2.1.0', '3.0.0', '3.1.0', '4.0.0'])"]
    with pytest.raises(ValueError, match="unknown ruleset '7.7.7'"):
        check_log(log, ruleset="7.7.7")


def test_unknown_benchmark_is_a_failing_result(tmp_path):
    folder = tmp_path / "podium" / "results" / "cpu" / "imagenet_toy"
    folder.mkdir(parents=True)
    log = write_resnet_log(folder / "result_0.txt")
    text = log.read_text().replace('"value": "resnet"', '"value": "imagenet_toy"')
    log.write_text(text)
    (result,) = check_tree(tmp_path)
    assert not result.passed
    assert result.errors == ["no compliance rules for benchmark 'imagenet_toy': known "
                             f"benchmarks are {compliance.known_benchmarks()}; for another "
                             "MLPerf benchmark pass its ruleset"]
    assert compliance.known_benchmarks()[:2] == ["bert", "resnet"]
    no_benchmark = tmp_path / "plain.txt"
    no_benchmark.write_text("hello\n")
    assert "no submission_benchmark line" in check_log(no_benchmark).errors[0]
    assert check_log(tmp_path / "absent.txt").errors == [
        f"no such log file: {tmp_path / 'absent.txt'}"]


def test_tree_of_a_podium_submission(tmp_path):
    """Submitter folder with a good run, a broken run and a run filed under the wrong
    benchmark; file:line in errors points into the log."""
    results = tmp_path / "podium" / "results" / "cpu"
    (results / "resnet").mkdir(parents=True)
    good = write_resnet_log(results / "resnet" / "result_0.txt")
    broken = write_resnet_log(results / "resnet" / "result_1.txt", seed=1,
                              override={"lars_opt_end_learning_rate": 0.1})
    (results / "bert").mkdir()
    misfiled = write_resnet_log(results / "bert" / "result_0.txt", seed=2)
    by_path = {Path(r.path): r for r in check_tree(tmp_path / "podium")}
    assert by_path[good].passed
    assert not by_path[broken].passed
    (error,) = by_path[broken].errors
    assert error.startswith("CHECK for 'lars_opt_end_learning_rate' failed at result_1.txt:")
    assert error.endswith("failed test: v['value'] == 0.0001 (logged value: 0.1)")
    line = int(error.split("result_1.txt:")[1].split(":")[0])
    assert '"lars_opt_end_learning_rate"' in broken.read_text().splitlines()[line - 1]
    assert not by_path[misfiled].passed
    assert by_path[misfiled].errors[0] == ("the log's submission_benchmark is 'resnet', but "
                                           "it is checked as 'bert'")
    report = format_report(list(by_path.values())).splitlines()
    assert report[-1] == "1 passed, 2 failed"
    assert any(l.startswith("FAIL  ") and "lars_opt_end_learning_rate" in l for l in report)


def test_duplicate_identical_key_is_a_warning(tmp_path):
    log = write_resnet_log(tmp_path / "result_0.txt")
    with open(log, "a") as f:
        f.write([l for l in log.read_text().splitlines() if '"global_batch_size"' in l][0]
                + "\n")
    result = check_log(log)
    assert result.passed and result.errors == []
    assert result.warnings == [
        "Required EXACTLY_ONE occurrence of 'global_batch_size' but found 2"]


def test_podium_rule_file_for_a_non_mlperf_benchmark(tmp_path, monkeypatch):
    """A rule file in RULES_DIR is found by benchmark family and passed as --config."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "wav2vec2.yaml").write_text(
        "- KEY:\n"
        "    NAME:  submission_benchmark\n"
        "    REQ:   EXACTLY_ONE\n"
        "    CHECK: \" v['value'] in ['wav2vec2_base', 'wav2vec2_large'] \"\n"
        "- KEY:\n"
        "    NAME:  eval_accuracy\n"
        "    REQ:   AT_LEAST_ONE\n"
        "    ATLEAST_ONE_CHECK: \"v['value'] >= 0.9\"\n")
    monkeypatch.setattr(compliance, "RULES_DIR", rules)
    assert compliance.known_benchmarks() == ["bert", "resnet", "wav2vec2"]
    assert ruleset_for("wav2vec2_base") == ("5.0.0", str(rules / "wav2vec2.yaml"))
    log = tmp_path / "result_0.txt"
    log.write_text(
        ':::MLLOG {"namespace": "", "time_ms": 1, "event_type": "POINT_IN_TIME", '
        '"key": "submission_benchmark", "value": "wav2vec2_base", "metadata": {}}\n'
        ':::MLLOG {"namespace": "", "time_ms": 2, "event_type": "POINT_IN_TIME", '
        '"key": "eval_accuracy", "value": 0.95, "metadata": {}}\n')
    result = check_log(log)
    assert result.passed, result.output
    assert str(rules / "wav2vec2.yaml") in result.output
    log.write_text(log.read_text().replace("0.95", "0.5"))
    result = check_log(log)
    assert not result.passed and "eval_accuracy" in result.errors[0]


def test_format_report():
    report = format_report([
        CheckResult("a/result_0.txt", "4.0.0", True),
        CheckResult("a/result_1.txt", "4.0.0", False, ["first", "second"]),
    ])
    assert report.splitlines() == [
        "PASS  a/result_0.txt  [ruleset 4.0.0]",
        "FAIL  a/result_1.txt  [ruleset 4.0.0]  first (+1 more)",
        "1 passed, 1 failed",
    ]
    assert "no result_*.txt" in format_report([])


def test_fixtures_are_self_contained():
    """The published logs are copied into tests/ (the repository is cloned alone)."""
    assert len(list(GOOGLE_V07.rglob("result_*.txt"))) == 15
    assert (V07.parent / "README.md").is_file()


def test_checker_crash_is_a_failing_result(tmp_path):
    log = write_resnet_log(tmp_path / "result_0.txt")
    log.write_text(log.read_text().replace('"value": 0.52,', '"value": "nan",'))
    result = check_log(log)
    assert not result.passed
    assert result.errors == ["the compliance checker crashed: TypeError: '>=' not supported "
                             "between instances of 'str' and 'float'"]
    assert "Traceback" in result.output


def _package(tmp_path, seeds=(0, 1, 2, 3, 4), broken=()):
    """ExampleOrg's closed ResNet package at batch 4096 (RCP passes), runs in `broken`
    failing compliance."""
    from test_results_score import write_run, write_system
    org = tmp_path / "ExampleOrg"
    write_system(org)
    folder = org / "results" / "tpu-v5p-64" / "resnet"
    for i, seed in enumerate(seeds):
        write_run(folder / f"result_{i}.txt", seed=seed, minutes=10 + i,
                  break_key="lars_epsilon" if i in broken else None)
    return org, folder


def podium_check(*args, cwd):
    from test_results_score import podium_cli
    return podium_cli("check", *map(str, args), cwd=cwd)


def test_podium_check_passes_a_good_package_and_fails_a_broken_log(tmp_path):
    org, folder = _package(tmp_path)
    ok = podium_check(org, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == "7 passed, 0 failed"  # system JSON, 5 logs, package
    assert f"PASS  {folder}  [package, ruleset 4.0.0]" in ok.stdout

    lines = (folder / "result_2.txt").read_text().splitlines()
    lines[5] = lines[5][:40]  # a line cut short, as by a crash mid-write
    (folder / "result_2.txt").write_text("\n".join(lines) + "\n")
    broken = podium_check(org, cwd=tmp_path)
    assert broken.returncode == 1
    log_fail, package_fail = [l for l in broken.stdout.splitlines() if l.startswith("FAIL")]
    assert log_fail.startswith(f"FAIL  {folder / 'result_2.txt'}  [ruleset 4.0.0]  unparsable "
                               "line at result_2.txt:6:")
    # The seed checker cannot read that log either, which fails the package.
    assert package_fail.startswith(f"FAIL  {folder}  [package, ruleset 4.0.0]  Seed checker "
                                   "failed")


def test_one_non_compliant_run_is_accepted_by_the_package_checker(tmp_path):
    org, folder = _package(tmp_path, broken=(3,))
    results = check_tree(org, package=True)
    assert [r.passed for r in results if r.kind == "log"] == [True, True, True, False, True]
    (package,) = [r for r in results if r.kind == "package"]
    assert package.passed and package.warnings == [
        "1 file does not comply, accepting this under olympic scoring"]


def test_package_errors_run_count_and_seeds(tmp_path):
    org, folder = _package(tmp_path, seeds=(0, 1, 1), broken=(0,))
    (package,) = [r for r in check_tree(org, package=True) if r.kind == "package"]
    assert not package.passed
    assert package.errors[0] == (f"Incorrect number of files in dir, or wrong file names in "
                                 f"directory {folder}, found 3, expected 5")
    assert any("already logs the same seed" in e for e in package.errors), package.errors
    # --no-package: the logs alone (one of them broken).
    out = podium_check(org, "--no-package", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout.splitlines()[-1] == "3 passed, 1 failed"
    assert "[package" not in out.stdout


def test_podium_package_checks_for_own_benchmarks(tmp_path, monkeypatch):
    """A benchmark with a podium rule file (which package_checker would skip) gets podium's
    package checks: run count, non-compliant runs, mlperf-logging's seed checker."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "wav2vec2.yaml").write_text(
        "- KEY:\n"
        "    NAME:  submission_benchmark\n"
        "    REQ:   EXACTLY_ONE\n")
    monkeypatch.setattr(compliance, "RULES_DIR", rules)
    from test_results_score import write_system
    org = tmp_path / "podium"
    write_system(org, system="cpu-x1")
    folder = org / "results" / "cpu-x1" / "wav2vec2_base"
    folder.mkdir(parents=True)
    for i, seed in enumerate((5, 5)):
        (folder / f"result_{i}.txt").write_text(
            ':::MLLOG {"namespace": "", "time_ms": 1, "event_type": "POINT_IN_TIME", '
            '"key": "submission_benchmark", "value": "wav2vec2_base", "metadata": {}}\n'
            ':::MLLOG {"namespace": "", "time_ms": 2, "event_type": "POINT_IN_TIME", "key": '
            f'"seed", "value": {seed}, "metadata": {{"file": "train.py", "lineno": 3}}}}\n')
    results = check_tree(org, package=True)
    (package,) = [r for r in results if r.kind == "package"]
    assert [r.passed for r in results if r.kind == "log"] == [True, True]
    assert (package.ruleset, package.passed) == ("5.0.0", False)
    assert package.errors[0] == (f"Incorrect number of files in dir {folder}, found 2, "
                                 "expected 10")
    assert "already logs the same seed on the same line" in package.errors[1]


@pytest.mark.parametrize("rule_file", sorted(compliance.RULES_DIR.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_podium_rule_files_are_picked_up(rule_file):
    """Every rule file in results/rules/ (RegNet, wav2vec2, ...) is what podium checks that
    benchmark's logs with."""
    assert compliance.ruleset_for(rule_file.stem) == (compliance.CUSTOM_BASE_RULESET,
                                                      str(rule_file))
    assert rule_file.stem in compliance.known_benchmarks()
