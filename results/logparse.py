"""Reading MLPerf logs of every round, tolerantly.

The compliance checker says whether a log is valid; this parser says what is in it, for logs
that are valid, almost valid or broken, so that `podium score` and `podium compare` can show
published results of any round beside podium's own. It accepts everything the checker's
`mlp_parser` accepts, and more:

* `:::MLLOG {json}` lines (MLPerf v0.7 on), anywhere in a line: absl or launcher prefixes
  before the token (`I0518 12:00:00.1 140 train.py:12] :::MLLOG {...}`) are skipped;
* with or without `event_type` (v0.7 logs have none), `namespace` as a string or an int;
* MLPerf v0.6's `:::MLL <seconds> <key>: {json}` lines;
* asynchronous evals: `eval_start` of one eval before the `eval_accuracy` of the one before
  (BERT v0.7), paired through their `epoch_num`;
* `epoch_num` in epochs (ResNet), in training samples (BERT from v1.0) or in steps (BERT v0.7;
  `progress_unit` says which, and `Eval.samples` converts steps with the global batch size).

A malformed line (broken JSON, a missing key, a time that is not a number) becomes a
`LogWarning` naming file:line; nothing a file can hold makes the parser raise.

Time-to-train is computed exactly as mlperf-logging's `result_summarizer` computes it (same
lines, same float arithmetic), so podium's scores equal the official tool's.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Event", "Eval", "Interval", "LogWarning", "ParsedLog", "parse_log", "parse_text",
           "parse_lines", "guess_ruleset", "RESUME_KEY"]

TOKEN = ":::MLLOG"
LEGACY_TOKEN = ":::MLL "  # MLPerf v0.6
# `:::MLL 1558638394.123 run_start: {"value": null, "metadata": {...}}` (mlp_parser 0.6.0)
_LEGACY_LINE = re.compile(r":::MLL\s+([0-9.]+)\s+([A-Za-z0-9_]+)\s?:\s+(.+)$")

# The key podium logs when a checkpointed run starts again (value: a dict with segment,
# from_step, ...). A resumed run is not an MLPerf time-to-train: the rules want one
# contiguous run.
RESUME_KEY = "podium_resume"

# Keys that are timing events, not settings: left out of `hyperparameters`.
_TIMING_KEYS = frozenset({
    "cache_clear", "init_start", "init_stop", "run_start", "run_stop", "run_final",
    "block_start", "block_stop", "epoch_start", "epoch_stop", "eval_start", "eval_stop",
    "eval_accuracy", "eval_error", "train_loss", "tracked_stats", RESUME_KEY,
})
# Metadata keys that say how far training has come, in the order they are trusted.
_PROGRESS_KEYS = ("epoch_num", "samples_count", "step_num")
_UNITS = {"epoch_num": "epoch", "samples_count": "samples", "step_num": "steps"}


@dataclass(frozen=True)
class LogWarning:
    """Something wrong in a log, at file:line (line None: the file as a whole)."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Event:
    """One MLPerf log line. `time_ms` is None when the line's time is not a finite number;
    `line` is 1-based in `file`."""

    key: str
    value: Any
    metadata: dict
    time_ms: float | None
    event_type: str | None
    namespace: str | None
    file: str
    line: int

    def number(self, name: str) -> float | None:
        """metadata[name] if it is a finite number (bools are not numbers here)."""
        return _number(self.metadata.get(name))


@dataclass(frozen=True)
class Interval:
    """A start/stop pair (block or eval) in ms; `key` is the progress that paired them."""

    start_ms: float
    stop_ms: float
    key: Any = None


@dataclass(frozen=True)
class Eval:
    """One `eval_accuracy` line: its value and how far training had come.

    `progress` is the logged `epoch_num` (else `samples_count`, else `step_num`) in
    `unit`; `samples` is the same in training samples where it can be known (samples, or
    steps times the global batch size). `start_ms`/`stop_ms` come from the eval_start/
    eval_stop lines with the same progress, when there are such lines."""

    value: float | None
    progress: float | None
    unit: str
    samples: float | None
    time_ms: float | None
    line: int
    start_ms: float | None = None
    stop_ms: float | None = None


@dataclass
class ParsedLog:
    """What one MLPerf log says. Built by `parse_log` / `parse_text`; every field is derived
    from `events`, never guessed from file names except `round` (a `training_results_vX.Y`
    folder in the path) and the ruleset guess that follows from it."""

    path: str
    events: list[Event] = field(default_factory=list)
    warnings: list[LogWarning] = field(default_factory=list)
    benchmark: str | None = None
    submission: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    has_event_type: bool = False
    round: str | None = None
    ruleset: str | None = None
    ruleset_reason: str = ""
    init_start_ms: float | None = None
    init_stop_ms: float | None = None
    run_start_ms: float | None = None
    run_stop_ms: float | None = None
    status: str | None = None
    global_batch_size: float | None = None
    train_samples: float | None = None
    eval_samples: float | None = None
    seeds: list[Any] = field(default_factory=list)
    progress_unit: str = "epoch"
    evals: list[Eval] = field(default_factory=list)
    blocks: list[Interval] = field(default_factory=list)
    eval_intervals: list[Interval] = field(default_factory=list)
    converged: Eval | None = None
    resumes: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or self.path

    @property
    def division(self) -> str | None:
        value = self.submission.get("submission_division")
        return value if isinstance(value, str) else None

    @property
    def succeeded(self) -> bool:
        return self.status == "success"

    @property
    def resumed(self) -> bool:
        """True if the log records a restart from a checkpoint (`podium_resume` lines)."""
        return bool(self.resumes)

    @property
    def time_to_train_ms(self) -> float | None:
        if self.run_start_ms is None or self.run_stop_ms is None:
            return None
        return self.run_stop_ms - self.run_start_ms

    @property
    def time_to_train_min(self) -> float | None:
        """(run_stop - run_start) in minutes, computed as result_summarizer does."""
        ms = self.time_to_train_ms
        return None if ms is None else ms / 60 / 1000

    @property
    def init_s(self) -> float | None:
        """init_stop - first init_start, in seconds (what the init-time limit measures)."""
        if self.init_start_ms is None or self.init_stop_ms is None:
            return None
        return (self.init_stop_ms - self.init_start_ms) / 1000

    @property
    def train_s(self) -> float | None:
        """Seconds inside train blocks (their union, within the timed run)."""
        return _union_s(self.blocks, self.run_start_ms, self.run_stop_ms)

    @property
    def eval_s(self) -> float | None:
        """Seconds of the timed run spent in evals while no train block ran.

        For evals between blocks (podium, most submissions) this is the eval time; for
        asynchronous evals that overlap training (BERT v0.7) only the time the clock waited
        for them counts."""
        if not self.eval_intervals:
            return None
        total = _union_s(self.eval_intervals, self.run_start_ms, self.run_stop_ms)
        both = _union_s(_intersections(self.eval_intervals, self.blocks),
                        self.run_start_ms, self.run_stop_ms)
        if total is None:
            return None
        return total - (both or 0.0)

    @property
    def eval_share(self) -> float | None:
        """`eval_s` as a fraction of the time-to-train."""
        ttt = self.time_to_train_ms
        eval_s = self.eval_s
        if eval_s is None or not ttt or ttt <= 0:
            return None
        return eval_s * 1000 / ttt

    @property
    def work_unit(self) -> str:
        """'epochs' or 'samples': what `converged_work` counts (steps become samples)."""
        return "epochs" if self.progress_unit == "epoch" else (
            "samples" if self.progress_unit == "samples" or self.global_batch_size else "steps")

    @property
    def converged_work(self) -> float | None:
        """Epochs (or samples) trained when the run reached its target: the progress of the
        last eval before a successful run_stop, as the RCP checker reads it. None if the run
        did not succeed."""
        if self.converged is None:
            return None
        if self.work_unit == "samples":
            return self.converged.samples
        return self.converged.progress

    def first(self, key: str) -> Event | None:
        for event in self.events:
            if event.key == key:
                return event
        return None

    def all(self, key: str) -> list[Event]:
        return [e for e in self.events if e.key == key]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return out if math.isfinite(out) else None


def _union_s(intervals: Iterable[Interval], lo: float | None, hi: float | None) -> float | None:
    """Seconds covered by the union of `intervals`, clipped to [lo, hi] where given."""
    spans = []
    for iv in intervals:
        start, stop = iv.start_ms, iv.stop_ms
        if lo is not None:
            start = max(start, lo)
        if hi is not None:
            stop = min(stop, hi)
        if stop > start:
            spans.append((start, stop))
    if not spans:
        return None if not intervals else 0.0
    spans.sort()
    total, (cur_start, cur_stop) = 0.0, spans[0]
    for start, stop in spans[1:]:
        if start > cur_stop:
            total += cur_stop - cur_start
            cur_start, cur_stop = start, stop
        else:
            cur_stop = max(cur_stop, stop)
    total += cur_stop - cur_start
    return total / 1000


def _intersections(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    for x in a:
        for y in b:
            start, stop = max(x.start_ms, y.start_ms), min(x.stop_ms, y.stop_ms)
            if stop > start:
                out.append(Interval(start, stop))
    return out


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # what mlp_parser reads with; never fails


def _load_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as e:
        return None, f"not valid JSON ({e})"


def _line_entry(text: str) -> tuple[dict | None, str | None]:
    """The JSON object of one log line, or (None, why not). (None, None): not a log line."""
    at = text.find(TOKEN)
    if at >= 0:
        error = None
        # Like mlp_parser, tolerate anything before the token; if a value itself contains
        # the token, a later occurrence may be the real start.
        while at >= 0:
            entry, error = _load_json(text[at + len(TOKEN):].strip())
            if error is None:
                if not isinstance(entry, dict):
                    return None, f"the MLLOG payload is a JSON {type(entry).__name__}, not an object"
                return entry, None
            at = text.find(TOKEN, at + len(TOKEN))
        return None, error
    m = _LEGACY_LINE.search(text)
    if m:
        payload, error = _load_json(m.group(3))
        if error is not None:
            return None, error
        if not isinstance(payload, dict):
            payload = {"value": payload}
        try:
            time_ms = float(m.group(1)) * 1000
        except ValueError:
            return None, f"time {m.group(1)!r} is not a number"
        return {"time_ms": time_ms, "key": m.group(2), "value": payload.get("value"),
                "metadata": payload.get("metadata", {}), "legacy": True}, None
    if LEGACY_TOKEN in text:
        return None, "a ':::MLL' line that is not '<seconds> <key>: <json>'"
    return None, None


def _event(entry: dict, file: str, line: int, warnings: list[LogWarning]) -> Event | None:
    def warn(message: str) -> None:
        warnings.append(LogWarning(file, line, message))

    key = entry.get("key")
    if not isinstance(key, str) or not key:
        warn(f"no 'key' string in the MLLOG line (got {_short(key)})")
        return None
    if "time_ms" not in entry:
        warn(f"{key}: no 'time_ms'")
        time_ms = None
    else:
        raw = entry["time_ms"]
        try:
            # float() as mlp_parser does: numeric strings count.
            time_ms = None if isinstance(raw, bool) else float(raw)
        except (TypeError, ValueError, OverflowError):
            time_ms = None
        if time_ms is not None and not math.isfinite(time_ms):
            time_ms = None
        if time_ms is None:
            warn(f"{key}: time_ms {_short(raw)} is not a finite number")
    if "value" not in entry:
        warn(f"{key}: no 'value'")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        warn(f"{key}: metadata is a {type(metadata).__name__}, not an object")
        metadata = {}
    elif "metadata" not in entry and not entry.get("legacy"):
        warn(f"{key}: no 'metadata'")
    event_type = entry.get("event_type")
    namespace = entry.get("namespace")
    if isinstance(namespace, (int, float)) and not isinstance(namespace, bool):
        namespace = str(namespace)
    return Event(key=key, value=entry.get("value"), metadata=metadata, time_ms=time_ms,
                 event_type=event_type if isinstance(event_type, str) else None,
                 namespace=namespace if isinstance(namespace, str) else None,
                 file=file, line=line)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_lines(lines: Iterable[str | bytes], *, path: str = "<log>") -> ParsedLog:
    """Parses log lines (text or bytes, without or with their newline) read from `path`."""
    log = ParsedLog(path=str(path))
    name = log.name
    any_token = False
    for number, raw in enumerate(lines, 1):
        text = _decode(raw) if isinstance(raw, (bytes, bytearray)) else str(raw)
        entry, error = _line_entry(text.rstrip("\r\n"))
        if error is not None:
            any_token = True
            log.warnings.append(LogWarning(name, number, f"unreadable MLLOG line: {error}"))
            continue
        if entry is None:
            continue
        any_token = True
        event = _event(entry, name, number, log.warnings)
        if event is not None:
            log.events.append(event)
            log.has_event_type |= "event_type" in entry
    if not any_token:
        log.warnings.append(LogWarning(name, None, "no MLPerf log lines (':::MLLOG {...}')"))
    _analyse(log)
    return log


def parse_text(text: str | bytes, *, path: str = "<log>") -> ParsedLog:
    """Parses the whole text of a log. Lines end at '\\n' (a '\\r' before it is dropped), as
    editors and the checker count them."""
    sep = b"\n" if isinstance(text, (bytes, bytearray)) else "\n"
    return parse_lines(text.split(sep), path=path)


def parse_log(path: str | os.PathLike) -> ParsedLog:
    """Parses the log file at `path`. A file that cannot be read gives a log with no events
    and a warning saying why (the caller decides whether that is an error)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        log = ParsedLog(path=str(path))
        log.warnings.append(LogWarning(str(path), None,
                                       f"cannot read the log: {e.strerror or e}"))
        _analyse(log)
        return log
    return parse_text(data, path=str(path))


def guess_ruleset(benchmark: str | None, round_: str | None) -> tuple[str | None, str]:
    """(ruleset, why) to check a log with: its round's, else its benchmark's.

    A round comes from a `training_results_vX.Y` folder in the path; the benchmark's is the
    last round that held it (`compliance.RULESETS`) or, for podium's own benchmarks, the
    rule file's base ruleset."""
    from results import compliance  # no import cycle: compliance does not import this module
    if round_ is not None:
        try:
            return compliance.ruleset_for_round(round_), f"round v{round_} (from the path)"
        except ValueError:
            pass
    if benchmark:
        try:
            ruleset, config = compliance.ruleset_for(benchmark)
        except ValueError:
            return None, f"no rules known for benchmark {benchmark!r}"
        if config is not None:
            return ruleset, f"podium's rule file {os.path.basename(config)}"
        return ruleset, f"the last MLPerf round that held {benchmark}"
    return None, "the log names no benchmark"


def _analyse(log: ParsedLog) -> None:
    """Fills the derived fields of `log` from its events."""
    from results import compliance
    log.round = compliance.infer_round(log.path) if log.path and not log.path.startswith("<") else None
    warn = log.warnings.append
    timed = [e for e in log.events if e.time_ms is not None]

    for e in log.events:
        if e.key.startswith("submission_") and e.key not in log.submission:
            log.submission[e.key] = e.value
        elif (e.key not in _TIMING_KEYS and e.key not in log.hyperparameters
              and e.event_type in (None, "POINT_IN_TIME")):
            log.hyperparameters[e.key] = e.value
        if e.key == "seed":
            log.seeds.append(e.value)
        elif e.key == RESUME_KEY:
            info = dict(e.value) if isinstance(e.value, dict) else {"value": e.value}
            info.setdefault("segment", len(log.resumes) + 1)
            info.update(time_ms=e.time_ms, line=e.line)
            log.resumes.append(info)
    benchmark = log.submission.get("submission_benchmark")
    log.benchmark = benchmark if isinstance(benchmark, str) and benchmark else None
    log.ruleset, log.ruleset_reason = guess_ruleset(log.benchmark, log.round)
    for key in ("global_batch_size", "train_samples", "eval_samples"):
        setattr(log, key, _number(log.hyperparameters.get(key)))

    first_init = next((e for e in timed if e.key == "init_start"), None)
    init_stop = next((e for e in timed if e.key == "init_stop"), None)
    log.init_start_ms = first_init.time_ms if first_init else None
    log.init_stop_ms = init_stop.time_ms if init_stop else None

    # result_summarizer._query_run_start_stop, line for line: the last run_start and the
    # first run_stop seen before both are known.
    run_start = run_stop = None
    for e in timed:
        if e.key == "run_start":
            run_start = e
        if e.key == "run_stop":
            run_stop = e
        if run_start is not None and run_stop is not None:
            break
    log.run_start_ms = run_start.time_ms if run_start else None
    log.run_stop_ms = run_stop.time_ms if run_stop else None
    if run_stop is not None:
        status = run_stop.metadata.get("status")
        log.status = status if isinstance(status, str) else None
        if log.status is None:
            warn(LogWarning(log.name, run_stop.line, "run_stop has no metadata status"))
    if len([e for e in log.events if e.key == "run_start"]) > 1:
        warn(LogWarning(log.name, None, "more than one run_start: time-to-train uses the last "
                                        "one before the first run_stop (as result_summarizer)"))

    log.progress_unit = _progress_unit(log)
    log.blocks = _pairs(timed, "block_start", "block_stop",
                        ("first_epoch_num", "samples_count", "step_num"))
    log.eval_intervals = _pairs(timed, "eval_start", "eval_stop", _PROGRESS_KEYS)
    by_progress = {iv.key: iv for iv in log.eval_intervals if iv.key is not None}

    stop_line = run_stop.line if run_stop is not None else None
    for e in log.events:
        if e.key != "eval_accuracy":
            continue
        progress, unit_key = None, None
        for k in _PROGRESS_KEYS:
            progress = e.number(k)
            if progress is not None:
                unit_key = k
                break
        unit = _UNITS.get(unit_key, log.progress_unit) if unit_key != "epoch_num" else log.progress_unit
        value = e.value
        value = float(value) if _number(value) is not None or (
            isinstance(value, float) and math.isnan(value)) else None
        iv = by_progress.get(progress) if progress is not None else None
        ev = Eval(value=value, progress=progress, unit=unit,
                  samples=_samples(progress, unit, log.global_batch_size),
                  time_ms=e.time_ms, line=e.line,
                  start_ms=iv.start_ms if iv else None, stop_ms=iv.stop_ms if iv else None)
        log.evals.append(ev)
        if stop_line is not None and e.line < stop_line:
            log.converged = ev
    if not log.succeeded:
        log.converged = None


def _progress_unit(log: ParsedLog) -> str:
    """What epoch_num counts in this log: 'epoch', 'samples' (BERT from v1.0) or 'steps'
    (BERT v0.7)."""
    evals = [e for e in log.events if e.key == "eval_accuracy"]
    if evals and all(e.number("epoch_num") is None for e in evals):
        if any(e.number("samples_count") is not None for e in evals):
            return "samples"
        if any(e.number("step_num") is not None for e in evals):
            return "steps"
    if log.benchmark == "bert":
        if log.round is not None:
            try:
                major = int(log.round.split(".")[0])
            except ValueError:
                major = 1
            return "steps" if major < 1 else "samples"
        # v0.7 loggers wrote no event_type; every logger since v1.0 does.
        return "samples" if log.has_event_type or not log.events else "steps"
    return "epoch"


def _samples(progress: float | None, unit: str, batch: float | None) -> float | None:
    if progress is None:
        return None
    if unit == "samples":
        return progress
    if unit == "steps" and batch:
        return progress * batch
    return None


def _pairs(events: list[Event], start_key: str, stop_key: str,
           keys: tuple[str, ...]) -> list[Interval]:
    """start/stop intervals, paired by their progress metadata where they have it, else in
    order (a stop closes the oldest open start)."""
    open_by_key: dict[Any, float] = {}
    open_plain: list[float] = []
    out = []
    for e in events:
        if e.key not in (start_key, stop_key):
            continue
        k = next((v for v in (e.number(name) for name in keys) if v is not None), None)
        if e.key == start_key:
            if k is None:
                open_plain.append(e.time_ms)
            else:
                open_by_key.setdefault(k, e.time_ms)
        else:
            if k is not None and k in open_by_key:
                out.append(Interval(open_by_key.pop(k), e.time_ms, k))
            elif open_plain:
                out.append(Interval(open_plain.pop(0), e.time_ms, k))
            elif k is None and open_by_key:
                first = next(iter(open_by_key))
                out.append(Interval(open_by_key.pop(first), e.time_ms, first))
    return [iv for iv in out if iv.stop_ms >= iv.start_ms]
