"""The MLPerf score of a benchmark folder: per-run time-to-train, olympic mean, RCP check.

It gives the numbers mlperf-logging's `result_summarizer` gives on the same tree (tested on
the published v0.7 logs), computed the same way:

* a run's time-to-train is `(run_stop - run_start) / 60000` minutes, taken from the lines
  the summarizer takes (`logparse`), in the same float arithmetic;
* a run that fails the compliance checker is dropped and plays the slowest run;
* the runs are sorted, the fastest and the slowest dropped, the rest averaged
  (`olympic_mean`, the summarizer's `_compute_olympic_average`); more than one failed run
  (four for unet3d) gives no score;
* a `scaling.json` in the folder (written by the RCP checker or the review committee)
  multiplies the score.

Where podium follows the rules more strictly than the summarizer (the summarizer would count
these runs as normal ones):

* a run whose `run_stop` status is not `success` counts as the failed (slowest) run,
  whatever its time (training_rules: "at most one non-converging run");
* a run resumed from a checkpoint (`podium_resume` lines in its log, or `resumed` in its
  result record) is not a valid MLPerf time-to-train: it counts as a failed run too, and says
  so.

The number of runs a benchmark needs comes from mlperf-logging's own table
(`benchmark_meta`); a score from fewer (or more) runs is shown but marked not valid. The RCP
check runs mlperf-logging's `rcp_checker` where the ruleset has reference convergence points
for the benchmark and the division is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results import compliance, logparse
from results.layout import RECORDS_DIRNAME

__all__ = ["PODIUM_REQUIRED_RUNS", "required_runs", "max_failed_runs", "olympic_mean",
           "RunScore", "RcpResult", "BenchmarkScore", "score_run", "score_folder",
           "score_tree", "benchmark_folders", "read_system_json", "format_scores",
           "format_work", "check_rcp"]

# podium's own benchmarks, which MLPerf's table does not know: RegNet is scored like ResNet
# (same data, same kind of run-to-run spread); wav2vec2 like the speech benchmark RNN-T.
PODIUM_REQUIRED_RUNS = {"regnet": 5, "wav2vec2": 10}
RESUMED = "resumed: not a valid MLPerf time-to-train"
_RESULT = re.compile(r"result_(\d+)\.txt")


def _mlperf_run_counts() -> dict[str, int]:
    from mlperf_logging.benchmark_meta import get_result_file_counts
    return dict(get_result_file_counts("training"))


def required_runs(benchmark: str | None) -> int | None:
    """Runs a score needs: mlperf-logging's table (resnet 5, bert 10, ...), else podium's
    (`PODIUM_REQUIRED_RUNS`, by benchmark family: regnet_y_16gf -> regnet)."""
    if not benchmark:
        return None
    counts = _mlperf_run_counts()
    if benchmark in counts:
        return counts[benchmark]
    name = benchmark
    while name:
        if name in PODIUM_REQUIRED_RUNS:
            return PODIUM_REQUIRED_RUNS[name]
        if "_" not in name:
            return None
        name = name.rsplit("_", 1)[0]
    return None


def max_failed_runs(benchmark: str | None) -> int:
    """Failed runs the olympic mean may absorb, and how many are dropped from each end
    (result_summarizer: 4 for unet3d, else 1)."""
    return 4 if benchmark == "unet3d" else 1


def olympic_mean(scores: list[float], failed: int = 0, drop: int = 1) -> float | None:
    """result_summarizer's olympic average: sort, drop `drop` runs from each end where the
    `failed` runs (absent from `scores`) are the slowest ones dropped; None if nothing is
    left. Same arithmetic as the summarizer, so the floats are equal, not just close."""
    scores = sorted(scores)
    countable = scores[drop:len(scores) - (drop - failed)]
    if not countable:
        return None
    return sum(countable) * 1.0 / len(countable)


@dataclass
class RunScore:
    """One run of a benchmark folder and whether it counts towards the score."""

    path: str
    log: logparse.ParsedLog
    check: compliance.CheckResult | None = None
    record: Any = None  # results.record.ResultRecord, when the run has one
    problem: str | None = None  # why the run does not count (None: it counts)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def index(self) -> int | None:
        m = _RESULT.fullmatch(self.name)
        return int(m.group(1)) if m else None

    @property
    def minutes(self) -> float | None:
        return self.log.time_to_train_min

    @property
    def status(self) -> str | None:
        return self.log.status

    @property
    def compliant(self) -> bool | None:
        return None if self.check is None else self.check.passed

    @property
    def resumed(self) -> bool:
        return self.log.resumed or bool(getattr(self.record, "resumed", False)) or len(
            getattr(self.record, "segments", None) or []) > 1

    @property
    def counted(self) -> bool:
        return self.problem is None


@dataclass
class RcpResult:
    """Outcome of mlperf-logging's RCP check on a benchmark folder."""

    applicable: bool
    passed: bool | None = None
    message: str = ""
    rcp_mean: float | None = None
    rcp_min: float | None = None  # the smallest mean epochs/samples that still passes
    norm_factor: float | None = None  # > 1: faster than the RCP mean, score to be scaled

    def describe(self) -> str:
        if not self.applicable:
            return f"n/a ({self.message})"
        verdict = "PASS" if self.passed else "FAIL"
        detail = self.message
        if self.rcp_mean is not None and self.rcp_min is not None:
            detail += f"; reference mean {self.rcp_mean:.6g}, fastest accepted {self.rcp_min:.6g}"
        if self.passed and self.norm_factor and self.norm_factor > 1:
            detail += f"; score to be scaled by {self.norm_factor:.4f}"
        return f"{verdict} ({detail})"


@dataclass
class BenchmarkScore:
    """The score of one `<submitter>/results/<system>/<benchmark>` folder (or of one run)."""

    folder: str
    benchmark: str | None
    ruleset: str | None
    runs: list[RunScore]
    submitter: str | None = None
    system: str | None = None
    division: str | None = None
    system_json: dict | None = None
    required_runs: int | None = None
    raw_score: float | None = None  # olympic mean, minutes
    scaling_factor: float = 1.0  # from scaling.json, as the summarizer applies it
    converged_mean: float | None = None  # olympic mean epochs/samples to converge
    rcp: RcpResult | None = None
    problems: list[str] = field(default_factory=list)
    single_run: bool = False

    @property
    def score(self) -> float | None:
        """The benchmark score in minutes (olympic mean times scaling.json's factor)."""
        return None if self.raw_score is None else self.raw_score * self.scaling_factor

    @property
    def failed_runs(self) -> list[RunScore]:
        return [r for r in self.runs if not r.counted]

    @property
    def work_unit(self) -> str:
        units = {r.log.work_unit for r in self.runs}
        return units.pop() if len(units) == 1 else "epochs"

    @property
    def valid(self) -> bool:
        """A valid MLPerf score: computed, from the required runs, RCP passed or n/a."""
        return self.score is not None and not self.problems and (
            self.rcp is None or not self.rcp.applicable or bool(self.rcp.passed))

    @property
    def label(self) -> str:
        parts = [p for p in (self.submitter, self.system, self.benchmark) if p]
        label = "/".join(parts) if parts else self.folder
        if self.single_run and self.runs:
            label += f"/{Path(self.runs[0].path).stem}"
        return label


def _layout_of(result_file: Path) -> tuple[Path | None, str | None, str | None]:
    """(submitter dir, system, benchmark folder name) if `result_file` sits in
    <submitter>/results/<system>/<benchmark>/, else Nones."""
    parents = result_file.resolve().parents
    if len(parents) >= 4 and parents[2].name == "results":
        return parents[3], parents[1].name, parents[0].name
    return None, None, None


def read_system_json(submitter_dir: Path | None, system: str | None) -> dict | None:
    """The system description of `system`, or None if absent or unreadable."""
    if submitter_dir is None or system is None:
        return None
    try:
        data = json.loads((submitter_dir / "systems" / f"{system}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record_for(result_file: Path) -> Any:
    """The podium result record of a log, if there is one (podium_records/ beside results/).
    Read with results.record.read_record; an unreadable record is ignored."""
    submitter, system, bench = _layout_of(result_file)
    if submitter is None:
        return None
    path = submitter / RECORDS_DIRNAME / system / bench / (result_file.stem + ".json")
    if not path.is_file():
        return None
    from results.record import read_record
    try:
        return read_record(path)
    except (ValueError, TypeError, OSError):
        return None


def _judge(run: RunScore) -> None:
    """Sets run.problem: why the run cannot count as one of the timed runs. A resumed run
    says so first (its log also fails compliance: podium logs a second init after run_start)."""
    if run.resumed:
        run.problem = RESUMED
    elif run.check is not None and not run.check.passed:
        first = run.check.errors[0] if run.check.errors else "see the checker output"
        run.problem = f"not compliant: {first}"
    elif run.log.run_start_ms is None or run.log.run_stop_ms is None:
        missing = "run_start" if run.log.run_start_ms is None else "run_stop"
        run.problem = f"no {missing} in the log"
    elif run.status != "success":
        run.problem = (f"run_stop status {run.status!r}: did not converge"
                       if run.status else "run_stop has no status")


def _checks(paths: list[Path], benchmark: str | None, ruleset: str | None,
            jobs: int | None) -> list[compliance.CheckResult]:
    import concurrent.futures
    tasks = [lambda p=p: compliance.check_log(p, benchmark=benchmark, ruleset=ruleset)
             for p in paths]
    jobs = jobs or min(8, os.cpu_count() or 1)
    if jobs <= 1 or len(tasks) <= 1:
        return [t() for t in tasks]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda t: t(), tasks))


def score_run(path: str | os.PathLike, *, ruleset: str | None = None, check: bool = True
              ) -> BenchmarkScore:
    """One run on its own: its time-to-train is its score (no olympic mean), and it is never
    a valid MLPerf benchmark score."""
    path = Path(path)
    score = _score(path.parent, [path], ruleset=ruleset, check=check, rcp=False, jobs=1)
    score.single_run = True
    score.required_runs = 1
    run = score.runs[0]
    score.problems = [] if run.counted else [run.problem]
    score.raw_score = run.minutes if run.counted else None
    score.converged_mean = run.log.converged_work if run.counted else None
    return score


def score_folder(folder: str | os.PathLike, *, ruleset: str | None = None, check: bool = True,
                 rcp: bool = True, jobs: int | None = None) -> BenchmarkScore:
    """Scores the `result_*.txt` runs of one benchmark folder.

    `ruleset` overrides the inferred one (the round in the path, else the benchmark's last
    MLPerf round or podium's rule file). `check=False` skips the compliance checker (then
    no run is dropped for compliance, unlike the summarizer)."""
    folder = Path(folder)
    paths = sorted((p for p in folder.glob("result_*.txt") if p.is_file()),
                   key=lambda p: (_index(p), p.name))
    return _score(folder, paths, ruleset=ruleset, check=check, rcp=rcp, jobs=jobs)


def _index(path: Path) -> int:
    m = _RESULT.fullmatch(path.name)
    return int(m.group(1)) if m else 1 << 62


def _score(folder: Path, paths: list[Path], *, ruleset: str | None, check: bool, rcp: bool,
           jobs: int | None) -> BenchmarkScore:
    if ruleset is not None:
        ruleset = compliance.validate_ruleset(ruleset)
    submitter_dir, system, layout_bench = _layout_of(folder / "result_0.txt")
    logs = [logparse.parse_log(p) for p in paths]
    named = [log.benchmark for log in logs if log.benchmark]
    benchmark = layout_bench or (max(set(named), key=named.count) if named else None)
    if ruleset is None:
        round_ = compliance.infer_round(folder)
        ruleset, _ = logparse.guess_ruleset(benchmark, round_)
    checks: list[compliance.CheckResult | None] = [None] * len(paths)
    if check and paths:
        checks = _checks(paths, layout_bench, ruleset, jobs)
    system_json = read_system_json(submitter_dir, system)
    division = system_json.get("division") if system_json else None
    if not isinstance(division, str) or not division:
        divisions = [log.division for log in logs if log.division]
        division = divisions[0] if divisions else None
    out = BenchmarkScore(
        folder=str(folder), benchmark=benchmark, ruleset=ruleset,
        runs=[RunScore(str(p), log, c, _record_for(p)) for p, log, c in zip(paths, logs, checks)],
        submitter=submitter_dir.name if submitter_dir else None, system=system,
        division=division, system_json=system_json, required_runs=required_runs(benchmark))
    for run in out.runs:
        _judge(run)
    if not paths:
        out.problems.append("runs: no result_*.txt in the folder")
        return out
    if out.required_runs is not None and len(paths) != out.required_runs:
        out.problems.append(
            f"runs: {len(paths)} of the {out.required_runs} runs {benchmark} needs"
            if len(paths) < out.required_runs else
            f"runs: {len(paths)} runs; {benchmark} takes exactly {out.required_runs} (choose the "
            f"{out.required_runs} consecutive runs closest to the median)")
    elif out.required_runs is None:
        out.problems.append(f"runs: no required run count known for benchmark {benchmark!r}")
    drop = max_failed_runs(benchmark)
    failed = len(out.failed_runs)
    if failed > drop:
        out.problems.append(f"{failed} runs failed or do not count; olympic scoring takes at "
                            f"most {drop}")
    else:
        out.raw_score = olympic_mean([r.minutes for r in out.runs if r.counted], failed, drop)
        if out.raw_score is None and not any(p.startswith("runs:") for p in out.problems):
            out.problems.append(f"too few runs for an olympic mean ({len(paths)}: the fastest "
                                f"and the slowest are dropped)")
        # As the RCP checker reads them: rounded to 3 decimals, a failed run infinitely slow.
        works = sorted(round(r.log.converged_work, 3)
                       if r.counted and r.log.converged_work is not None else math.inf
                       for r in out.runs)
        kept = works[drop:len(works) - drop]
        if kept and all(math.isfinite(w) for w in kept):
            out.converged_mean = float(sum(kept) / len(kept))
    out.scaling_factor = _scaling_factor(folder)
    if rcp:
        out.rcp = check_rcp(folder, benchmark, ruleset, division)
    return out


def _scaling_factor(folder: Path) -> float:
    """scaling.json's factor, as result_summarizer reads it (1.0 without the file)."""
    try:
        data = json.loads((folder / "scaling.json").read_text("utf-8"))
        return float(data["scaling_factor"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0


def _rcp_rulesets(benchmark: str) -> list[str]:
    import importlib.util
    spec = importlib.util.find_spec("mlperf_logging.rcp_checker")
    base = Path(spec.submodule_search_locations[0])
    return sorted(p.parent.name[len("training_"):]
                  for p in base.glob(f"training_*/rcps_{benchmark}.json"))


@contextlib.contextmanager
def _quiet_logging():
    """The RCP checker logs through the root logger; keep its chatter out of our output."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def check_rcp(folder: str | os.PathLike, benchmark: str | None, ruleset: str | None,
              division: str | None) -> RcpResult:
    """mlperf-logging's RCP check of a folder (pruned RCPs, as package_checker runs it),
    without writing scaling.json into the user's tree."""
    if not benchmark or not ruleset:
        return RcpResult(False, message="benchmark or ruleset unknown")
    if benchmark not in _mlperf_run_counts() or benchmark == "minigo":
        return RcpResult(False, message=f"{benchmark} has no reference convergence points")
    if division != "closed":
        return RcpResult(False, message=f"the RCP check is for the closed division "
                                        f"(this is {division or 'of unknown division'})")
    if ruleset not in _rcp_rulesets(benchmark):
        return RcpResult(False, message=f"ruleset {ruleset} has no RCPs for {benchmark}")
    import warnings
    from mlperf_logging.rcp_checker import rcp_checker
    folder = str(folder)
    try:
        # Fewer runs than an olympic mean needs make numpy warn (mean of an empty slice).
        with _quiet_logging(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            passed, message, norm = rcp_checker.check_directory(
                folder, "training", ruleset, False, False, rcp_pass="pruned_rcps",
                rcp_bypass=False, set_scaling=False)
            result = RcpResult(True, bool(passed), message, norm_factor=float(norm))
            result.rcp_mean, result.rcp_min = _rcp_reference(folder, benchmark, ruleset)
    except Exception as e:  # the checker raises on logs it cannot read
        return RcpResult(True, False, f"the RCP checker failed: {type(e).__name__}: {e}")
    return result


def _rcp_reference(folder: str, benchmark: str, ruleset: str
                   ) -> tuple[float | None, float | None]:
    """(RCP mean, fastest accepted mean) the folder's batch size is compared with: the RCP
    of that batch size, else the interpolation between its neighbours, else the smallest."""
    from mlperf_logging.rcp_checker import rcp_checker
    files = sorted(str(p) for p in Path(folder).glob("result_*.txt"))
    bs, _, _ = rcp_checker.get_submission_epochs(files, ruleset, False)
    if bs in (-1, None):
        return None, None
    checker = rcp_checker.RCP_Checker("training", ruleset, benchmark, False)
    record = checker._find_rcp(bs, "pruned_rcps")
    if record is None:
        low = checker._find_top_min_rcp(bs, "pruned_rcps")
        high = checker._find_bottom_max_rcp(bs, "pruned_rcps")
        if low is not None and high is not None:
            _, record = checker._create_interp_rcp(bs, low, high)
        elif high is not None:
            record = checker._find_min_rcp("pruned_rcps")
    if record is None:
        return None, None
    return float(record["RCP Mean"]), float(record["RCP Mean"] / record["Max Speedup"])


def benchmark_folders(path: str | os.PathLike) -> list[Path]:
    """Every folder under `path` (itself included) that holds result_*.txt logs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"nothing to score: {path} does not exist")
    if path.is_file():
        return [path.parent]
    found = {p.parent for p in path.rglob("result_*.txt") if p.is_file()}
    return sorted(found)


def score_tree(path: str | os.PathLike, *, ruleset: str | None = None, check: bool = True,
               rcp: bool = True, jobs: int | None = None) -> list[BenchmarkScore]:
    """Scores every benchmark folder under `path` (a root of submitters, a submitter, a
    system or a benchmark folder); a single result file is scored on its own."""
    path = Path(path)
    if path.is_file():
        return [score_run(path, ruleset=ruleset, check=check)]
    return [score_folder(f, ruleset=ruleset, check=check, rcp=rcp, jobs=jobs)
            for f in benchmark_folders(path)]


def format_work(value: float | None, unit: str) -> str:
    """Epochs as a short number, samples in millions ('4.06 M samples')."""
    if value is None:
        return "-"
    if unit == "samples":
        return f"{value / 1e6:.3g} M samples"
    if unit == "steps":
        return f"{value:,.0f} steps"
    return f"{value:.4g} epochs"


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def format_scores(scores: list[BenchmarkScore]) -> str:
    """The `podium score` report: per folder, each run and the score."""
    if not scores:
        return "no result_*.txt logs found"
    out = []
    for s in scores:
        need = f"{s.required_runs} runs required" if s.required_runs else "run count unknown"
        out.append(f"{s.label}  [ruleset {s.ruleset or '?'}, {s.division or '?'} division, "
                   f"{need}]")
        unit = s.work_unit
        out.append(f"  {'run':<14} {'minutes':>9}  {'status':<8} {'compliance':<10} "
                   f"{'to converge':>16}  counted")
        for r in s.runs:
            comp = "-" if r.compliant is None else ("PASS" if r.compliant else "FAIL")
            work = format_work(r.log.converged_work, r.log.work_unit)
            out.append(f"  {r.name:<14} {_fmt(r.minutes):>9}  {r.status or '-':<8} "
                       f"{comp:<10} {work:>16}  "
                       + ("yes" if r.counted else f"no: {r.problem}"))
        for r in s.runs:
            shown = r.log.warnings[:3]
            out += [f"  warning: {w}" for w in shown]
            if len(r.log.warnings) > len(shown):
                out.append(f"  ({len(r.log.warnings) - len(shown)} more warnings in {r.name})")
        if s.single_run:
            line = f"  time-to-train: {_fmt(s.score)} min (one run: not an MLPerf score)"
        elif s.score is not None:
            counted = len([r for r in s.runs if r.counted])
            kept = max(counted - max_failed_runs(s.benchmark)
                       - (max_failed_runs(s.benchmark) - len(s.failed_runs)), 0)
            line = (f"  score: {s.score:.4f} min (olympic mean of {kept} runs, fastest and "
                    f"slowest dropped")
            if s.scaling_factor != 1.0:
                line += f"; x{s.scaling_factor:.4f} from scaling.json"
            line += ")"
        else:
            line = "  score: none"
        if s.converged_mean is not None and not s.single_run:
            line += f"; to converge (olympic mean): {format_work(s.converged_mean, unit)}"
        out.append(line)
        if s.rcp is not None:
            out.append(f"  RCP: {s.rcp.describe()}")
        if not s.single_run:
            out.append("  " + ("VALID MLPerf score" if s.valid else
                               "NOT a valid MLPerf score: " + "; ".join(
                                   [p.removeprefix("runs: ") for p in s.problems]
                                   + (["RCP check failed"] if s.rcp and s.rcp.applicable
                                      and not s.rcp.passed else []))))
        out.append("")
    return "\n".join(out).rstrip() + "\n"
