"""Checking logs and system JSONs with mlperf-logging's own checkers.

The checkers run as `python -m mlperf_logging.<checker>` in a subprocess (what submitters run,
and their global state and logging setup stay out of podium's process); their output is parsed
into a `CheckResult`.

Which ruleset:
* ResNet and BERT are retired MLPerf benchmarks: ResNet is checked with ruleset 4.0.0 and BERT
  with 5.0.0, the last rounds that held them (`RULESETS`). The checker's default (6.1.0) no
  longer knows them and crashes instead of failing.
* Published logs of an older round are checked with that round's ruleset. `check_tree` and
  `check_log` read the round from a `training_results_v<X.Y>` folder in the path
  (`ruleset_for_round`); an explicit `ruleset=` overrides everything.
* Benchmarks that never were MLPerf benchmarks (RegNet, wav2vec2) are checked with podium's
  own rule files in the checker's YAML format: `results/rules/<name>.yaml`, where `<name>` is
  the benchmark or its family (`wav2vec2_base` -> `wav2vec2.yaml`), run with
  `--ruleset CUSTOM_BASE_RULESET --config <absolute path>`. The checker resolves
  `enqueue_config()` paths relative to its own package, so a rule file must be self-contained
  (or enqueue absolute paths).

What the checkers print (mlperf-logging 4.1.68), and how it is read:
* compliance_checker exits 1 on failure, 0 on success, and logs to stderr as
  `LEVEL - message`: a pass ends with `INFO - SUCCESS`; a failure logs one `WARNING -` record
  whose messages are separated by lines of 30 dashes, then `ERROR - FAILED`. Identical
  duplicates of an EXACTLY_ONE key are only warnings ("... but found 2" without "with
  different values"); everything else in a failing run is an error.
* system_desc_checker exits 0 either way: `INFO -   System description checker passed for X`
  or `ERROR -   System description checker failed for X : [reasons]`.
* Both crash with a traceback on some inputs (a missing rule file, numbers where the system
  JSON wants strings); that becomes an error "checker crashed: ...".
* package_checker (`check_packages`) also exits 0 either way; it logs per benchmark folder
  after `Running compliance checks in dir <folder>`: `ERROR - Incorrect number of files ...`,
  `ERROR - N files do not comply ...`, `ERROR - Seed checker failed ...`, `ERROR - RCP Test
  Failed: ...`, `WARNING - 1 file does not comply, accepting this under olympic scoring`, and
  ends with `PACKAGE CHECKER FOUND NO ERRORS, SUCCESS !` or `... FOUND ERRORS ...`.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RULESETS", "CUSTOM_BASE_RULESET", "RULES_DIR", "CheckResult", "known_rulesets",
           "known_benchmarks", "ruleset_for", "ruleset_for_round", "infer_round", "check_log",
           "check_system_json", "check_tree", "check_packages", "format_report",
           "validate_ruleset"]

# The last MLPerf Training round that held each benchmark podium runs.
RULESETS = {"resnet": "4.0.0", "bert": "5.0.0"}
# The parser version (and era of common rules) podium's own rule files are written against.
CUSTOM_BASE_RULESET = "5.0.0"
RULES_DIR = Path(__file__).resolve().parent / "rules"
DEFAULT_TIMEOUT_S = 120.0

# Found without importing it: importing would run nothing useful and podium only needs the
# rule folders' names.
_CHECKER_DIR = Path(importlib.util.find_spec("mlperf_logging.compliance_checker")
                    .submodule_search_locations[0]).resolve()
_SEPARATOR = "-" * 30
_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) - ?(.*)$")
_DUPLICATE_WARNING = re.compile(r"^Required EXACTLY_ONE occurrence of '[^']+' but found "
                                r"([2-9]|\d\d+)$")
_ROUND_DIR = re.compile(r"^training_results_v(\d+\.\d+)$")
_TOKEN = ":::MLLOG "


@dataclass
class CheckResult:
    """The verdict on one file. `errors` and `warnings` are one line each, condensed from the
    checker's output; `output` is the checker's full output (stdout and stderr)."""

    path: str
    ruleset: str | None
    passed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""
    benchmark: str | None = None
    kind: str = "log"  # 'log', 'system' or 'package' (a benchmark folder as a whole)


def known_rulesets() -> list[str]:
    """Training rulesets the installed mlperf-logging ships, oldest first."""
    out = [p.name[len("training_"):] for p in _CHECKER_DIR.glob("training_*")
           if re.fullmatch(r"training_\d+\.\d+\.\d+", p.name)]
    return sorted(out, key=lambda r: tuple(int(x) for x in r.split(".")))


def _custom_rule_file(benchmark: str) -> Path | None:
    name = benchmark
    while name:
        candidate = RULES_DIR / f"{name}.yaml"
        if candidate.is_file():
            return candidate
        if "_" not in name:
            return None
        name = name.rsplit("_", 1)[0]
    return None


def known_benchmarks() -> list[str]:
    """Benchmarks podium can check without being told a ruleset: the MLPerf ones in
    `RULESETS` and those with a rule file in `RULES_DIR` (a family file like wav2vec2.yaml
    also covers wav2vec2_*)."""
    custom = sorted(p.stem for p in RULES_DIR.glob("*.yaml")) if RULES_DIR.is_dir() else []
    return sorted(RULESETS) + [c for c in custom if c not in RULESETS]


def ruleset_for(benchmark: str) -> tuple[str, str | None]:
    """(ruleset, absolute config path or None) to check `benchmark`'s logs with.

    None means the ruleset's own `training_<ruleset>/common.yaml`. Raises ValueError for a
    benchmark podium has no rules for.
    """
    if benchmark in RULESETS:
        return RULESETS[benchmark], None
    custom = _custom_rule_file(benchmark)
    if custom is not None:
        return CUSTOM_BASE_RULESET, str(custom)
    raise ValueError(f"no compliance rules for benchmark {benchmark!r}: known benchmarks are "
                     f"{known_benchmarks()} (podium's own rule files live in {RULES_DIR})")


def ruleset_for_round(round_: str) -> str:
    """The training ruleset of an MLPerf round: '0.7' or 'v0.7' -> '0.7.0'."""
    text = str(round_).strip()
    text = text[1:] if text[:1] in ("v", "V") else text
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    ruleset = f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3) or 0)}" if m else None
    rulesets = known_rulesets()
    if ruleset not in rulesets:
        raise ValueError(f"no training ruleset for MLPerf round {round_!r}: the installed "
                         f"mlperf-logging has rulesets {rulesets}")
    return ruleset


def infer_round(path: str | os.PathLike) -> str | None:
    """The MLPerf round named by a `training_results_v<X.Y>` folder in `path` (innermost
    wins), as 'X.Y'; None if there is none. Published results repositories are named so."""
    for part in reversed(Path(os.path.abspath(path)).parts):
        m = _ROUND_DIR.match(part)
        if m:
            return m.group(1)
    return None


def _scan_log(path: Path) -> dict:
    """What the checks need to know before running: submission_benchmark/division and
    whether the lines carry event_type (logs before MLPerf v1.0 often do not)."""
    info = {"benchmark": None, "division": None, "lines": 0, "event_type": False}
    with open(path, encoding="latin-1") as f:  # what mlp_parser reads with
        for line in f:
            at = line.find(_TOKEN)
            if at < 0:
                continue
            try:
                entry = json.loads(line[at + len(_TOKEN):])
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            info["lines"] += 1
            info["event_type"] |= "event_type" in entry
            key = entry.get("key")
            if key == "submission_benchmark" and info["benchmark"] is None:
                info["benchmark"] = entry.get("value")
            elif key == "submission_division" and info["division"] is None:
                info["division"] = entry.get("value")
    return info


def _run(args: list[str], timeout: float) -> tuple[int | None, str]:
    """Runs a checker module; returns (exit code or None on timeout, stdout+stderr)."""
    try:
        proc = subprocess.run([sys.executable, "-m", *args, "--log_output", os.devnull],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        return None, out.decode(errors="replace") if isinstance(out, bytes) else out
    return proc.returncode, proc.stdout


def _records(output: str) -> tuple[list[tuple[str, str]], str | None]:
    """Splits checker output into (level, message) records and the crash line, if any."""
    records: list[list[str]] = []
    crash = None
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            tail = [l for l in lines[i + 1:] if l.strip() and not l.startswith(" ")]
            crash = tail[-1].strip() if tail else "unknown error"
            break
        if line.startswith("** Logging output also at") or line.startswith("** Detailed"):
            continue
        m = _RECORD.match(line)
        if m:
            records.append([m.group(1), m.group(2)])
        elif records:
            records[-1][1] += "\n" + line
    return [(level, text) for level, text in records], crash


def _file_lines(path: Path) -> dict[str, int]:
    """MLLOG line text -> its 1-based line number in the file (first occurrence)."""
    out: dict[str, int] = {}
    try:
        with open(path, encoding="latin-1") as f:
            for n, line in enumerate(f, 1):
                at = line.find(_TOKEN)
                if at >= 0:
                    out.setdefault(line[at:].strip(), n)
    except OSError:
        pass
    return out


def _condense(message: str, path: Path, lines: dict[str, int]) -> str:
    """One readable line from a checker message: the context dumps dropped, the checker's
    0-based MLLOG line index replaced by file:line, and the logged value shown."""
    text, _, after = message.partition("current context[s]=")
    value_note = ""
    _, sep, line_v = after.partition("current line[v]=")
    if sep:
        try:
            value = json.loads(line_v)["value"]
            if value is not None:
                value_note = f" (logged value: {json.dumps(value)})"
        except (ValueError, KeyError, TypeError):
            pass
    where = None
    kept = []
    for line in text.strip().splitlines():
        stripped = line.strip()
        if stripped.startswith(_TOKEN):
            where = lines.get(stripped)
            continue
        if stripped:
            kept.append(stripped)
    out = " ".join(" ".join(kept).split())
    if where is not None:
        out, n = re.subn(r" in line \d+:", f" at {path.name}:{where}:", out, count=1)
        if not n:
            out += f" (at {path.name}:{where})"
    return out + value_note


def _parse_compliance(output: str, returncode: int | None, path: Path
                      ) -> tuple[bool, list[str], list[str]]:
    records, crash = _records(output)
    lines = _file_lines(path)
    errors: list[str] = []
    warnings: list[str] = []
    parse_errors: list[str] = []
    pending_line = None
    in_parse_errors = False
    for level, text in records:
        body = text.strip()
        if level == "INFO":
            in_parse_errors = False
            continue
        if level == "ERROR" and body == "FAILED":
            continue
        if level == "WARNING" and body == "Found parsing errors:":
            in_parse_errors = True
            continue
        if level == "WARNING" and in_parse_errors and text.startswith("  "):
            if body.startswith("^^"):
                where = lines.get(pending_line or "", "?")
                parse_errors.append(f"unparsable line at {path.name}:{where}: "
                                    f"{body[2:].strip()}: {(pending_line or '')[:160]}")
            else:
                pending_line = body
            continue
        in_parse_errors = False
        for chunk in text.split("\n" + _SEPARATOR + "\n"):
            chunk = chunk.strip()
            if not chunk:
                continue
            if chunk == "Log lines had parsing errors." and parse_errors:
                continue
            message = _condense(chunk, path, lines)
            if returncode == 0 or _DUPLICATE_WARNING.match(chunk):
                warnings.append(message)
            else:
                errors.append(message)
    errors = parse_errors + errors
    if crash is not None:
        errors.append(f"the compliance checker crashed: {crash}")
    if returncode is None:
        errors.append("the compliance checker timed out")
    passed = returncode == 0 and crash is None and any(
        level == "INFO" and text.strip() == "SUCCESS" for level, text in records)
    if not passed and not errors:
        errors.append(f"the compliance checker failed (exit code {returncode}) without a "
                      "message; see the output")
    return passed, errors, warnings


def _rules_exist(ruleset: str, benchmark: str) -> bool:
    folder = _CHECKER_DIR / f"training_{ruleset}"
    # closed_/open_<b>.yaml from 0.7.0 on; 0.6.0 has one <b>.yaml per benchmark.
    return any((folder / f"{name}.yaml").is_file()
               for name in (f"closed_{benchmark}", f"open_{benchmark}", benchmark))


def validate_ruleset(ruleset: str) -> str:
    """`ruleset` if the installed mlperf-logging has it, else ValueError naming those it has."""
    rulesets = known_rulesets()
    if ruleset not in rulesets:
        raise ValueError(f"unknown ruleset {ruleset!r}: the installed mlperf-logging has "
                         f"training rulesets {rulesets}")
    return ruleset


def check_log(path: str | os.PathLike, *, benchmark: str | None = None,
              ruleset: str | None = None, config: str | os.PathLike | None = None,
              timeout: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    """Checks one MLPerf log with the compliance checker.

    `benchmark` defaults to the log's `submission_benchmark`; if given and the log says
    otherwise, that is an error. The ruleset is `ruleset` if given, else the round in the path
    (`infer_round`), else the benchmark's (`ruleset_for`). `config` (an absolute YAML path)
    replaces the ruleset's common.yaml; podium's own rule files are found without it.
    """
    path = Path(path)
    shown = str(path)
    if ruleset is not None:
        validate_ruleset(ruleset)
    if not path.is_file():
        return CheckResult(shown, ruleset, False,
                           [f"no such log file: {path}" if not path.exists()
                            else f"{path} is not a file"], benchmark=benchmark)
    info = _scan_log(path)
    logged = info["benchmark"]
    errors: list[str] = []
    warnings: list[str] = []
    if benchmark is None:
        benchmark = logged if isinstance(logged, str) else None
        if benchmark is None:
            return CheckResult(shown, ruleset, False,
                               ["cannot tell the benchmark: the log has no "
                                "submission_benchmark line; pass benchmark="],
                               benchmark=None)
    elif logged is not None and logged != benchmark:
        errors.append(f"the log's submission_benchmark is {logged!r}, but it is checked as "
                      f"{benchmark!r}")

    if config is None:
        custom = None if benchmark in RULESETS else _custom_rule_file(benchmark)
        if custom is not None:
            config = str(custom)
    if config is not None:
        config = os.path.abspath(config)
        if not os.path.isfile(config):
            return CheckResult(shown, ruleset, False, [f"no such rule file: {config}"],
                               benchmark=benchmark)

    if ruleset is None:
        round_ = infer_round(path)
        if round_ is not None:
            try:
                ruleset = ruleset_for_round(round_)
            except ValueError as e:
                warnings.append(f"{e}; using the benchmark's ruleset instead")
    if ruleset is None:
        if benchmark in RULESETS:
            ruleset = RULESETS[benchmark]
        elif config is not None:
            ruleset = CUSTOM_BASE_RULESET
        else:
            return CheckResult(shown, None, False,
                               [f"no compliance rules for benchmark {benchmark!r}: known "
                                f"benchmarks are {known_benchmarks()}; for another MLPerf "
                                "benchmark pass its ruleset"],
                               benchmark=benchmark)
    if config is None and not _rules_exist(ruleset, benchmark):
        holders = [r for r in known_rulesets() if _rules_exist(r, benchmark)]
        hint = (f"rulesets that have it: {holders}" if holders else
                f"known benchmarks are {known_benchmarks()}")
        return CheckResult(shown, ruleset, False,
                           errors + [f"ruleset {ruleset} has no rules for benchmark "
                                     f"{benchmark!r} ({hint})"],
                           warnings, benchmark=benchmark)

    args = ["mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", ruleset]
    if config is not None:
        args += ["--config", config]
    args.append(os.path.abspath(path))
    returncode, output = _run(args, timeout)
    passed, found_errors, found_warnings = _parse_compliance(output, returncode, path)
    errors += found_errors
    warnings += found_warnings
    if not passed and not info["event_type"] and info["lines"] and infer_round(path) is None:
        warnings.append("the log has no event_type fields, like logs written before MLPerf "
                        "v1.0: if it is from an older round, check it with that round's "
                        "ruleset (e.g. ruleset='0.7.0')")
    return CheckResult(shown, ruleset, passed and not errors, errors, warnings, output,
                       benchmark=benchmark)


def check_system_json(path: str | os.PathLike, ruleset: str, *,
                      timeout: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    """Checks a system description JSON with system_desc_checker (which exits 0 even when it
    finds errors: the verdict comes from its output)."""
    path = Path(path)
    shown = str(path)
    validate_ruleset(ruleset)
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return CheckResult(shown, ruleset, False, [f"no such system description: {path}"],
                           kind="system")
    except (ValueError, OSError) as e:
        return CheckResult(shown, ruleset, False, [f"{path} is not valid JSON: {e}"],
                           kind="system")
    returncode, output = _run(["mlperf_logging.system_desc_checker",
                               os.path.abspath(path), "training", ruleset], timeout)
    records, crash = _records(output)
    errors: list[str] = []
    warnings: list[str] = []
    passed = False
    for level, text in records:
        body = text.strip()
        if level == "INFO" and body.startswith("System description checker passed"):
            passed = True
        elif level == "ERROR":
            _, sep, reasons = body.partition(" : ")
            try:
                parsed = ast.literal_eval(reasons) if sep else None
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, list) and parsed:
                errors += [str(r) for r in parsed]
            else:
                errors.append(body)
        elif level == "WARNING":
            warnings.append(body)
    if crash is not None:
        hint = (" (system JSON values must be strings, e.g. \"8\" not 8)"
                if "expected str instance" in crash else "")
        errors.append(f"the system description checker crashed: {crash}{hint}")
    if returncode is None:
        errors.append("the system description checker timed out")
    passed = passed and not errors and returncode == 0
    if not passed and not errors:
        errors.append("the system description checker gave no verdict; see the output")
    return CheckResult(shown, ruleset, passed, errors, warnings, output, kind="system")


def _layout_benchmark(result_file: Path) -> str | None:
    """The benchmark folder name if `result_file` sits in <submitter>/results/<system>/<b>/."""
    parents = result_file.parents
    if len(parents) >= 4 and parents[2].name == "results":
        return parents[0].name
    return None


def _system_ruleset(json_path: Path, explicit: str | None) -> str:
    """A system JSON is checked with the explicit ruleset, else its round's, else the newest
    ruleset among the benchmarks it has results for (its checks only grow with the ruleset)."""
    if explicit is not None:
        return explicit
    round_ = infer_round(json_path)
    if round_ is not None:
        try:
            return ruleset_for_round(round_)
        except ValueError:
            pass
    results = json_path.parent.parent / "results" / json_path.stem
    found = []
    if results.is_dir():
        for bench in results.iterdir():
            if bench.is_dir():
                try:
                    found.append(ruleset_for(bench.name)[0])
                except ValueError:
                    pass
    candidates = found or list(RULESETS.values())
    return max(candidates, key=lambda r: tuple(int(x) for x in r.split(".")))


def _folder_ruleset(folder: Path, explicit: str | None) -> tuple[str | None, str | None]:
    """(ruleset, why not) for a benchmark folder's package checks: the explicit ruleset,
    else the round in the path, else the benchmark's."""
    if explicit is not None:
        return explicit, None
    round_ = infer_round(folder)
    if round_ is not None:
        try:
            return ruleset_for_round(round_), None
        except ValueError:
            pass
    try:
        return ruleset_for(folder.name)[0], None
    except ValueError as e:
        return None, str(e)


def _mlperf_benchmarks(ruleset: str) -> set[str]:
    from mlperf_logging.benchmark_meta import get_allowed_benchmarks
    try:
        return set(get_allowed_benchmarks("training", ruleset))
    except ValueError:
        return set()


_PACKAGE_WARNINGS = ("does not comply, accepting", "do not comply, accepting",
                     "do not conform", "Unknown files in result directory")


def check_packages(path: str | os.PathLike, *, ruleset: str | None = None,
                   log_results: list[CheckResult] | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> list[CheckResult]:
    """Package-level checks of every benchmark folder under `path` that sits in the MLPerf
    layout (<submitter>/results/<system>/<benchmark>/): the number of runs, at most one
    non-compliant run, unique seeds, and (closed division, rulesets from 1.0.0) the RCP check.

    MLPerf benchmarks get mlperf-logging's `package_checker` with their ruleset. It checks a
    whole submitter folder with one ruleset, exits 0 whatever it finds and writes scaling.json
    into the folders it checks, so it runs on a copy holding only the benchmarks of that
    ruleset, and its output is read per folder. podium's own benchmarks (RegNet, wav2vec2),
    which it skips, get the same checks from podium: run count (`scoring.required_runs`),
    compliance of the runs (`log_results`, or the checker run now) and mlperf-logging's
    seed checker.
    """
    path = Path(path)
    folders = sorted({p.parent for p in path.rglob("result_*.txt") if p.is_file()}
                     if path.is_dir() else [])
    groups: dict[tuple[Path, str], list[Path]] = {}
    out: list[CheckResult] = []
    by_log = {os.path.abspath(r.path): r for r in (log_results or []) if r.kind == "log"}
    for folder in folders:
        parents = folder.resolve().parents
        if len(parents) < 3 or parents[1].name != "results":
            continue  # not in the layout: there is no package to check
        submitter = parents[2]
        folder_ruleset, why = _folder_ruleset(folder, ruleset)
        if folder_ruleset is None:
            out.append(CheckResult(str(folder), None, False, [why], benchmark=folder.name,
                                   kind="package"))
            continue
        if not (submitter / "systems" / f"{folder.parent.name}.json").is_file():
            out.append(CheckResult(str(folder), folder_ruleset, False,
                                   [f"no system description systems/{folder.parent.name}.json "
                                    f"in {submitter}"], benchmark=folder.name, kind="package"))
            continue
        if folder.name in _mlperf_benchmarks(folder_ruleset):
            groups.setdefault((submitter, folder_ruleset), []).append(folder)
        else:
            out.append(_podium_package_check(folder, folder_ruleset, by_log, timeout))
    for (submitter, group_ruleset), members in sorted(groups.items()):
        out += _run_package_checker(submitter, group_ruleset, members, timeout)
    order = {str(f): i for i, f in enumerate(folders)}
    return sorted(out, key=lambda r: order.get(r.path, len(order)))


def _run_package_checker(submitter: Path, ruleset: str, folders: list[Path],
                         timeout: float) -> list[CheckResult]:
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory(prefix="podium_package_") as tmp:
        staged = Path(tmp) / submitter.name
        copies: dict[str, Path] = {}
        for folder in folders:
            system = folder.parent.name
            target = staged / "results" / system / folder.name
            shutil.copytree(folder, target, symlinks=True)
            copies[str(target)] = folder
            (staged / "systems").mkdir(parents=True, exist_ok=True)
            shutil.copy2(submitter / "systems" / f"{system}.json", staged / "systems")
            params = folder.parent / "package_checker_params"
            if params.is_file():
                shutil.copy2(params, target.parent)
        code = submitter / "benchmarks"
        if code.is_dir():  # the seed checker reads the benchmark's sources
            os.symlink(code, staged / "benchmarks")
        returncode, output = _run(["mlperf_logging.package_checker", str(staged), "training",
                                   ruleset], timeout)
    output = output.replace(str(staged), str(folders[0].parent.parent.parent))  # as given
    records, crash = _records(output)
    found: dict[Path, tuple[list[str], list[str]]] = {f: ([], []) for f in folders}
    current: Path | None = None
    unplaced: list[str] = []
    for level, text in records:
        body = text.strip()
        if body.startswith("Running compliance checks in dir "):
            where = body[len("Running compliance checks in dir "):].strip()
            current = next((f for f in folders if Path(where).resolve() == f.resolve()),
                           None)
            continue
        if level in ("ERROR", "CRITICAL") and body != "FAILED":
            if "System description" in body:
                continue  # reported on the system JSON itself (check_system_json)
            message = " ".join(body.split())
            if current is None:
                unplaced.append(message)
            else:
                found[current][0].append(message)
        elif level == "WARNING" and current is not None and any(
                w in body for w in _PACKAGE_WARNINGS):
            found[current][1].append(" ".join(body.split()))
    succeeded = "PACKAGE CHECKER FOUND NO ERRORS" in output
    results = []
    for folder in folders:
        errors, warnings = found[folder]
        errors = unplaced + errors
        if crash is not None:
            errors.append(f"the package checker crashed: {crash}")
        if returncode is None:
            errors.append("the package checker timed out")
        if not succeeded and not errors and "FOUND ERRORS" not in output:
            errors.append("the package checker gave no verdict; see the output")
        results.append(CheckResult(str(folder), ruleset, not errors, errors, warnings, output,
                                   benchmark=folder.name, kind="package"))
    return results


def _podium_package_check(folder: Path, ruleset: str, by_log: dict[str, CheckResult],
                          timeout: float) -> CheckResult:
    """package_checker's checks for a benchmark it does not know (podium's own)."""
    from results import scoring
    logs = sorted(p for p in folder.glob("result_*.txt") if p.is_file())
    errors: list[str] = []
    warnings: list[str] = []
    need = scoring.required_runs(folder.name)
    if need is None:
        errors.append(f"no required run count known for benchmark {folder.name!r}")
    elif len(logs) != need:
        errors.append(f"Incorrect number of files in dir {folder}, found {len(logs)}, "
                      f"expected {need}")
    failing = []
    for log in logs:
        result = by_log.get(os.path.abspath(log))
        if result is None:
            result = check_log(log, benchmark=folder.name, ruleset=None, timeout=timeout)
        if not result.passed:
            failing.append(log.name)
    allowed = scoring.max_failed_runs(folder.name)
    if len(failing) > allowed:
        errors.append(f"{len(failing)} files do not comply, directory cannot be accepted: "
                      f"{', '.join(failing)}")
    elif failing:
        warnings.append(f"{len(failing)} file does not comply, accepting this under olympic "
                        f"scoring: {', '.join(failing)}")
    from mlperf_logging.package_checker.seed_checker import SeedChecker
    import warnings as warnings_lib
    with warnings_lib.catch_warnings(record=True) as caught:
        warnings_lib.simplefilter("always")
        errors += SeedChecker(CUSTOM_BASE_RULESET)._assert_unique_seed_per_run(
            [str(p) for p in logs])
    warnings += [str(w.message) for w in caught]
    return CheckResult(str(folder), ruleset, not errors, errors, warnings, benchmark=folder.name,
                       kind="package")


def check_tree(path: str | os.PathLike, *, ruleset: str | None = None,
               timeout: float = DEFAULT_TIMEOUT_S, jobs: int | None = None,
               package: bool = False) -> list[CheckResult]:
    """Checks every `result_*.txt` and every `systems/*.json` under `path`.

    `path` may be one log or system JSON, a benchmark, system, submitter or results folder,
    or a root holding several submitters. Each file gets its ruleset as `check_log` and
    `_system_ruleset` choose, unless `ruleset` is given. Results come system JSONs first,
    then logs, each in path order, then (with `package=True`) one package result per
    benchmark folder (`check_packages`). `jobs` checker processes run at once (default: CPUs,
    at most 8).
    """
    path = Path(path)
    if ruleset is not None:
        validate_ruleset(ruleset)
    if not path.exists():
        raise FileNotFoundError(f"nothing to check: {path} does not exist")
    if path.is_file():
        if path.suffix == ".json":
            return [check_system_json(path, _system_ruleset(path, ruleset), timeout=timeout)]
        return [check_log(path, ruleset=ruleset, benchmark=_layout_benchmark(path),
                          timeout=timeout)]
    logs = sorted(p for p in path.rglob("result_*.txt") if p.is_file())
    systems = sorted(p for p in path.rglob("*.json")
                     if p.is_file() and p.parent.name == "systems")
    if path.name == "systems":
        systems = sorted(p for p in path.glob("*.json") if p.is_file())
    tasks = [functools.partial(check_system_json, p, _system_ruleset(p, ruleset),
                               timeout=timeout) for p in systems]
    tasks += [functools.partial(check_log, p, ruleset=ruleset,
                                benchmark=_layout_benchmark(p), timeout=timeout)
              for p in logs]
    jobs = jobs or min(8, os.cpu_count() or 1)
    if jobs <= 1 or len(tasks) <= 1:
        results = [task() for task in tasks]
    else:
        # Each check is a subprocess: threads are enough to overlap them.
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda task: task(), tasks))
    if package:
        results += check_packages(path, ruleset=ruleset, log_results=results, timeout=timeout)
    return results


def format_report(results: list[CheckResult]) -> str:
    """One line per file: PASS/FAIL, path, ruleset, first error (or first warning)."""
    if not results:
        return "no result_*.txt logs or systems/*.json descriptions found"
    lines = []
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        what = "package, " if r.kind == "package" else ""
        line = f"{verdict}  {r.path}  [{what}ruleset {r.ruleset or '?'}]"
        if r.errors:
            more = f" (+{len(r.errors) - 1} more)" if len(r.errors) > 1 else ""
            line += f"  {r.errors[0]}{more}"
        elif r.warnings:
            line += f"  warning: {r.warnings[0]}"
        lines.append(line)
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
