"""`podium compare`: runs and submissions side by side, podium's own or published.

Each argument is a root of submitters, a submitter, a system or a benchmark folder (every
benchmark folder under it becomes one row), or a single `result_<i>.txt` (one row for that
run). Rows are scored with `results.scoring` (olympic mean, compliance, RCP) and read with
`results.logparse`, so published logs of any round and podium's logs are treated alike;
podium's result records (`podium_records/`), when present, add what logs do not say
(device kind and count, quality target, phases, MFU, resumed segments).

Outputs: a terminal table (`format_table`), the convergence curves of every run as a PNG
(`plot_curves`, matplotlib's Agg backend: no display needed) and one self-contained HTML
report with the table, the plot inlined as a data URI, and every run (`html_report`).

Columns:
  runs         result logs present / runs the benchmark's score needs ("1 run": a single file)
  score min    the olympic mean of the runs' time-to-train, in minutes (one run: its
               time-to-train; too few runs for an olympic mean: the mean of the runs that
               count); `*` marks a number that is not a valid MLPerf score (see the notes)
  chips        accelerators (system JSON: accelerators_per_node x number_of_nodes; else the
               record's device count) and their model
  chip-min/work  score x chips / work to converge: chip-minutes per epoch (ResNet-style) or
               per million samples (BERT-style), the cost of the same work on any system
  converge     epochs or samples trained when the target was reached (olympic mean), from
               the last eval before a successful run_stop, as the RCP checker reads it
  init s       seconds from the first init_start to init_stop (mean over runs)
  eval         share of the time-to-train spent in evals while no train block ran
  check        PASS: every log passes the compliance checker; FAIL: one does not;
               RESUMED: a run was resumed from a checkpoint (not a valid MLPerf time-to-train)
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results import scoring
from results.scoring import format_work

__all__ = ["Entry", "load", "rows", "format_table", "plot_curves", "html_report",
           "format_work", "RESUMED_NOTE"]

RESUMED_NOTE = scoring.RESUMED
_COLUMNS = ("#", "label", "runs", "score min", "chips", "chip-min/work", "converge", "init s",
            "eval", "check")
_LEFT = ("#", "label", "runs", "chips", "check")


@dataclass
class Entry:
    """One row: a benchmark folder or one run, with what compare needs beside its score."""

    source: str
    score: scoring.BenchmarkScore
    label: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[Any]:
        return [r.record for r in self.score.runs if r.record is not None]

    @property
    def chips(self) -> tuple[int | None, str]:
        """(count, model): from the system JSON, else from the result records."""
        desc = self.score.system_json or {}
        count = None
        try:
            count = int(desc.get("accelerators_per_node")) * int(desc.get("number_of_nodes"))
        except (TypeError, ValueError):
            pass
        model = desc.get("accelerator_model_name") if isinstance(
            desc.get("accelerator_model_name"), str) else ""
        if not count:
            devices = {getattr(r, "num_devices", None) for r in self.records}
            kinds = {getattr(r, "device_kind", None) for r in self.records}
            devices.discard(None)
            kinds.discard(None)
            if len(devices) == 1:
                count = int(devices.pop())
                model = kinds.pop() if len(kinds) == 1 else model
            else:
                count = None
        return count, model or "?"

    @property
    def resumed(self) -> bool:
        return any(r.resumed for r in self.score.runs)

    @property
    def compliant(self) -> bool | None:
        verdicts = [r.compliant for r in self.score.runs]
        if any(v is None for v in verdicts):
            return None
        return all(verdicts)

    @property
    def work_unit(self) -> str:
        return self.score.work_unit

    @property
    def minutes(self) -> float | None:
        """The score; where there are too few runs for an olympic mean, the mean
        time-to-train of the runs that count (then `is_score` is False)."""
        if self.score.score is not None:
            return self.score.score
        counted = [r.minutes for r in self.score.runs if r.counted and r.minutes is not None]
        return sum(counted) / len(counted) if counted else None

    @property
    def is_score(self) -> bool:
        """True if `minutes` is a valid MLPerf score."""
        return self.score.valid and not self.score.single_run

    @property
    def converge(self) -> float | None:
        if self.score.converged_mean is not None:
            return self.score.converged_mean
        works = [r.log.converged_work for r in self.score.runs
                 if r.counted and r.log.converged_work is not None]
        return sum(works) / len(works) if works else None

    @property
    def chip_minutes_per_work(self) -> float | None:
        """minutes x chips / work: chip-minutes per epoch, or per million samples."""
        count, _ = self.chips
        work = self.converge
        if self.minutes is None or not count or not work:
            return None
        per = work / 1e6 if self.work_unit == "samples" else work
        return self.minutes * count / per

    @property
    def init_s(self) -> float | None:
        values = [r.log.init_s for r in self.score.runs if r.log.init_s is not None]
        if not values:
            values = [r.record.init_s for r in self.score.runs
                      if r.record is not None and getattr(r.record, "init_s", None) is not None]
        return sum(values) / len(values) if values else None

    @property
    def eval_share(self) -> float | None:
        values = []
        for r in self.score.runs:
            share = r.log.eval_share
            if share is None and r.record is not None:
                share = _record_eval_share(r.record)
            if share is not None:
                values.append(share)
        return sum(values) / len(values) if values else None

    @property
    def target(self) -> float | None:
        targets = {getattr(r, "quality_target", None) for r in self.records}
        targets.discard(None)
        return targets.pop() if len(targets) == 1 else None

    @property
    def metric(self) -> str:
        names = {getattr(r, "quality_metric", None) for r in self.records}
        names.discard(None)
        return names.pop() if len(names) == 1 else "eval_accuracy"


def _record_eval_share(record: Any) -> float | None:
    phases = getattr(record, "phases", None) or {}
    eval_s = phases.get("eval") if isinstance(phases, dict) else None
    if eval_s is None:
        eval_s = (getattr(record, "extra", None) or {}).get("eval_s")
    ttt = getattr(record, "time_to_train_s", None)
    if isinstance(eval_s, (int, float)) and ttt:
        return float(eval_s) / ttt
    return None


def load(sources: list[str | os.PathLike], *, ruleset: str | None = None,
         check: bool = True, rcp: bool = True) -> list[Entry]:
    """One Entry per benchmark folder under each source, or per single result file.

    Raises FileNotFoundError for a source that does not exist or holds no result_*.txt."""
    entries: list[Entry] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"cannot compare {source}: no such file or folder")
        if path.is_file():
            scores = [scoring.score_run(path, ruleset=ruleset, check=check)]
        else:
            folders = scoring.benchmark_folders(path)
            if not folders:
                raise FileNotFoundError(f"cannot compare {source}: no result_*.txt logs under it")
            scores = [scoring.score_folder(f, ruleset=ruleset, check=check, rcp=rcp)
                      for f in folders]
        entries += [Entry(str(source), s, s.label) for s in scores]
    labels = [e.label for e in entries]
    for e in entries:
        if labels.count(e.label) > 1:
            e.label = f"{e.source}: {e.label}"
    for e in entries:
        e.notes = _notes(e)
    return entries


def _notes(entry: Entry) -> list[str]:
    s = entry.score
    notes = []
    for run in s.runs:
        if run.log.warnings:
            more = len(run.log.warnings) - 1
            notes.append(f"warning: {run.log.warnings[0]}"
                         + (f" (+{more} more)" if more else ""))
        if run.resumed:
            notes.append(f"{run.name}: {RESUMED_NOTE}")
        elif not run.counted and not s.single_run:
            notes.append(f"{run.name}: does not count ({run.problem})")
        elif not run.counted:
            notes.append(f"{run.name}: {run.problem}")
    if not s.single_run:
        if s.score is None and entry.minutes is not None:
            counted = len([r for r in s.runs if r.counted])
            notes.append(f"score shown: the mean time-to-train of the {counted} run"
                         f"{'s that count' if counted > 1 else ' that counts'} "
                         "(too few runs for an olympic mean)")
        if not s.valid:
            reasons = [p.removeprefix("runs: ") for p in s.problems]
            if s.rcp is not None and s.rcp.applicable and not s.rcp.passed:
                reasons.append(f"RCP check failed: {s.rcp.message}")
            notes.append("not a valid MLPerf score: " + "; ".join(reasons))
        if s.rcp is not None and s.rcp.applicable and s.rcp.passed:
            notes.append(f"RCP: {s.rcp.describe()}")
    else:
        notes.append("one run: its time-to-train, not an MLPerf score (that needs "
                     f"{scoring.required_runs(s.benchmark) or 'several'} runs)")
    if any(r.log.progress_unit == "steps" for r in s.runs) and entry.work_unit == "samples":
        notes.append("epoch_num counts steps in these logs (MLPerf v0.7 BERT): samples = "
                     "steps x global batch size")
    return notes


def rows(entries: list[Entry]) -> list[dict[str, str]]:
    """The table as strings, one dict per entry (keys: _COLUMNS plus 'label')."""
    out = []
    for i, e in enumerate(entries, 1):
        s = e.score
        count, model = e.chips
        runs = ("1 run" if s.single_run else
                f"{len(s.runs)}/{s.required_runs}" if s.required_runs else str(len(s.runs)))
        minutes = e.minutes
        score = "-" if minutes is None else f"{minutes:.4f}" + ("" if e.is_score else "*")
        per = e.chip_minutes_per_work
        per_text = "-" if per is None else (
            f"{per:.3g} /Msample" if e.work_unit == "samples" else f"{per:.3g} /epoch")
        check = ("RESUMED" if e.resumed else "-" if e.compliant is None
                 else "PASS" if e.compliant else "FAIL")
        out.append({
            "#": str(i), "label": e.label, "runs": runs, "score min": score,
            "chips": f"{count} {model}" if count else model,
            "chip-min/work": per_text, "converge": format_work(e.converge, e.work_unit),
            "init s": "-" if e.init_s is None else f"{e.init_s:.1f}",
            "eval": "-" if e.eval_share is None else f"{100 * e.eval_share:.1f}%",
            "check": check,
        })
    return out


def format_table(entries: list[Entry]) -> str:
    """The terminal table: one line per entry, then the labels and the notes."""
    if not entries:
        return "nothing to compare"
    table = rows(entries)
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in _COLUMNS}
    def line(values: dict[str, str]) -> str:
        cells = []
        for c in _COLUMNS:
            cells.append(values[c].ljust(widths[c]) if c in _LEFT
                         else values[c].rjust(widths[c]))
        return "  ".join(cells).rstrip()
    out = [line({c: c for c in _COLUMNS}), "  ".join("-" * widths[c] for c in _COLUMNS)]
    out += [line(r) for r in table]
    out.append("")
    for r, e in zip(table, entries):
        if e.notes:
            out.append(f"[{r['#']}] {e.label}  (ruleset {e.score.ruleset or '?'})")
            out += [f"    {n}" for n in e.notes]
    if any(r["score min"].endswith("*") for r in table):
        out.append("* not a valid MLPerf score (see the notes)")
    return "\n".join(out) + "\n"


def _curves(entry: Entry) -> list[tuple[str, list[tuple[float, float]], tuple | None]]:
    """(run name, [(work, value)], converged point or None) for every run of an entry."""
    out = []
    unit = entry.work_unit
    for run in entry.score.runs:
        points = []
        for ev in run.log.evals:
            x = ev.samples if unit == "samples" else ev.progress
            if x is None or ev.value is None or not math.isfinite(ev.value):
                continue
            points.append((x, ev.value))
        conv = run.log.converged
        mark = None
        if conv is not None and conv.value is not None and math.isfinite(conv.value):
            x = conv.samples if unit == "samples" else conv.progress
            if x is not None:
                mark = (x, conv.value)
        out.append((run.name, points, mark))
    return out


def plot_curves(entries: list[Entry], path: str | os.PathLike | None = None) -> bytes:
    """Eval metric against epochs (or samples) for every run, one panel per benchmark and
    unit, one colour per entry; the converged eval of each run marked, the records' target
    dashed. Writes the PNG to `path` if given; returns its bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(entries):
        panels.setdefault((e.score.benchmark or "?", e.work_unit), []).append(i)
    n = max(len(panels), 1)
    fig = Figure(figsize=(7.5, 4.2 * n), dpi=100)
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(entries))]
    for k, ((benchmark, unit), members) in enumerate(sorted(panels.items())):
        ax = fig.add_subplot(n, 1, k + 1)
        metrics = set()
        for i in members:
            e = entries[i]
            metrics.add(e.metric)
            first = True
            for name, points, mark in _curves(e):
                if not points:
                    continue
                xs = [p[0] / 1e6 if unit == "samples" else p[0] for p in points]
                ax.plot(xs, [p[1] for p in points], color=colors[i], alpha=0.8, linewidth=1.2,
                        marker=".", markersize=3,
                        label=f"[{i + 1}] {e.label}" if first else None)
                first = False
                if mark is not None:
                    mx = mark[0] / 1e6 if unit == "samples" else mark[0]
                    ax.plot([mx], [mark[1]], color=colors[i], marker="o", markersize=6,
                            markerfacecolor="none")
        targets = {entries[i].target for i in members} - {None}
        for i in members:
            target = entries[i].target
            if target is not None:  # one grey line when every entry has the same target
                ax.axhline(target, color="grey" if len(targets) == 1 else colors[i],
                           linestyle="--", linewidth=0.8, alpha=0.8)
        if len(targets) == 1:
            ax.plot([], [], color="grey", linestyle="--", linewidth=0.8,
                    label=f"target {targets.pop():g}")
        ax.set_title(f"{benchmark}: eval metric per run (o: target reached)", fontsize=10)
        ax.set_xlabel("training samples (millions)" if unit == "samples" else unit)
        ax.set_ylabel(" / ".join(sorted(metrics)) or "eval metric")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
.pass { color: #176b2c; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def html_report(entries: list[Entry], path: str | os.PathLike | None = None,
                png: bytes | None = None) -> str:
    """One self-contained HTML page: the table, the curves (inlined as a data: URI) and
    every run. Writes it to `path` if given; returns the HTML."""
    if png is None:
        png = plot_curves(entries)
    table = rows(entries)
    head = "".join(f"<th class='l'>{_e(c)}</th>" if c in _LEFT else f"<th>{_e(c)}</th>"
                   for c in _COLUMNS)
    body = []
    for r in table:
        cells = []
        for c in _COLUMNS:
            cls = "l" if c in _LEFT else ""
            if c == "check":
                cls += " pass" if r[c] == "PASS" else " fail" if r[c] in ("FAIL", "RESUMED") else ""
            cells.append(f"<td class='{cls.strip()}'>{_e(r[c])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>podium compare</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>podium compare</h1>",
        f"<p class='note'>{_e(datetime.datetime.now().isoformat(timespec='seconds'))}: "
        f"{len(entries)} entries. Scores are olympic means in minutes, computed as "
        "mlperf-logging's result_summarizer computes them.</p>",
        f"<table><tr>{head}</tr>{''.join(body)}</table>",
    ]
    for r, e in zip(table, entries):
        parts.append(f"<p><b>[{_e(r['#'])}] {_e(e.label)}</b> "
                     f"<span class='note'>ruleset {_e(e.score.ruleset or '?')}, "
                     f"{_e(e.source)}</span></p>")
        if e.notes:
            parts.append("<ul class='note'>" + "".join(f"<li>{_e(n)}</li>" for n in e.notes)
                         + "</ul>")
    parts.append("<h2>Convergence</h2>")
    parts.append("<img alt='eval metric against epochs or samples, every run' "
                 f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")
    parts.append("<h2>Runs</h2>")
    run_head = ("run", "minutes", "status", "compliance", "to converge", "init s", "eval",
                "device", "MFU", "counted")
    for r, e in zip(table, entries):
        parts.append(f"<h3>[{_e(r['#'])}] {_e(e.label)}</h3><table><tr>"
                     + "".join(f"<th>{_e(h)}</th>" for h in run_head) + "</tr>")
        for run in e.score.runs:
            rec = run.record
            device = (f"{getattr(rec, 'num_devices', '?')} {getattr(rec, 'device_kind', '')}"
                      if rec is not None else "")
            mfu = getattr(rec, "mfu", None) if rec is not None else None
            compliance = "-" if run.compliant is None else ("PASS" if run.compliant else "FAIL")
            counted = "yes" if run.counted else f"no: {run.problem}"
            cells = [run.name, _fmt(run.minutes, ".4f"), run.status or "-", compliance,
                     format_work(run.log.converged_work, run.log.work_unit),
                     _fmt(run.log.init_s, ".1f"),
                     "-" if run.log.eval_share is None else f"{100 * run.log.eval_share:.1f}%",
                     device, "-" if mfu is None else f"{100 * mfu:.1f}%", counted]
            parts.append("<tr>" + "".join(
                f"<td class='{'l' if j in (0, 2, 3, 7, 9) else ''}'>{_e(c)}</td>"
                for j, c in enumerate(cells)) + "</tr>")
            if rec is not None:
                phases = getattr(rec, "phases", None) or {}
                segments = getattr(rec, "segments", None) or []
                extra = []
                if phases:
                    extra.append("phases: " + ", ".join(
                        f"{k} {v:.1f} s" for k, v in phases.items()
                        if isinstance(v, (int, float))))
                if len(segments) > 1 or getattr(rec, "resumed", False):
                    extra.append(f"{len(segments)} segments: {RESUMED_NOTE}")
                extra.append(f"recipe {getattr(rec, 'recipe', '?')}, config "
                             f"{str(getattr(rec, 'config_hash', ''))[:12]}, podium "
                             f"{str(getattr(rec, 'podium_commit', '') or '?')[:10]}")
                parts.append(f"<tr><td class='l note' colspan='{len(run_head)}'>"
                             f"{_e('; '.join(extra))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    text = "\n".join(parts)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    return text
