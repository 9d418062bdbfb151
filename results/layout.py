"""Where results go: the MLPerf submission layout.

    <root>/<submitter>/systems/<system>.json
    <root>/<submitter>/results/<system>/<benchmark>/result_<i>.txt     MLPerf log of run i
    <root>/<submitter>/podium_records/<system>/<benchmark>/result_<i>.json   podium's record

The result records live in a sibling tree, not beside the logs. mlperf-logging 4.1.68's
`package_checker` counts only `result_*.txt`, so a `result_<i>.json` beside them does not
change the count, but it does make the checker warn for every benchmark folder ("Detected N
total files ... should you rename them to result_*.txt ?" and "Unknown files in result
directory"), and a submission's results folders should hold what the rules list and nothing
else. `podium_records/` sits outside `results/`, which neither `package_checker` nor
`result_summarizer` walk, so a submitter folder can be packaged as it is.

Run indices only grow: `reserve_result` claims one past the highest index already used (by a
log or a record), creating the log with O_EXCL, so neither a second process nor a restarted run
can overwrite an earlier result, and the indices keep the order the runs happened in (the rules
allow choosing N consecutive runs out of M only as the window closest to the median, which
needs that order). Gaps (a deleted failed run) are fine: the tools glob `result_*.txt`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SubmissionLayout", "validate_name", "atomic_write_text", "RECORDS_DIRNAME"]

RECORDS_DIRNAME = "podium_records"

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_RESULT = re.compile(r"result_(\d+)\.(txt|json)")


def validate_name(value: str, what: str) -> str:
    """Returns `value` if it is usable as one folder or file name in the layout.

    MLPerf tools split paths on '/' and build URLs from these names, so only letters, digits,
    '-', '_' and '.' are allowed (and not a name of dots only, which would leave the tree).
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or set(value) == {"."}:
        raise ValueError(f"invalid {what} name {value!r}: use only letters, digits, '-', '_' "
                         "and '.' (for example 'tpu-v5p-64' or 'podium_1.0'), not only dots")
    return value


@dataclass(frozen=True)
class SubmissionLayout:
    """The paths of one (submitter, system, benchmark) in a results tree under `root`."""

    root: Path
    submitter: str
    system: str
    benchmark: str

    def __init__(self, root: str | os.PathLike, submitter: str, system: str, benchmark: str):
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "submitter", validate_name(submitter, "submitter"))
        object.__setattr__(self, "system", validate_name(system, "system"))
        object.__setattr__(self, "benchmark", validate_name(benchmark, "benchmark"))

    @property
    def submitter_dir(self) -> Path:
        """The folder `package_checker` and `result_summarizer` take as ORG_DIR."""
        return self.root / self.submitter

    @property
    def results_dir(self) -> Path:
        return self.submitter_dir / "results" / self.system / self.benchmark

    @property
    def records_dir(self) -> Path:
        return self.submitter_dir / RECORDS_DIRNAME / self.system / self.benchmark

    @property
    def system_json_path(self) -> Path:
        return self.submitter_dir / "systems" / f"{self.system}.json"

    def log_path(self, index: int) -> Path:
        return self.results_dir / f"result_{_index(index)}.txt"

    def record_path(self, index: int) -> Path:
        """The result record (JSON) of run `index`; see the module docstring for why it is
        not in `results_dir`."""
        return self.records_dir / f"result_{_index(index)}.json"

    def result_indices(self) -> list[int]:
        """Indices of the MLPerf logs present, ascending."""
        return sorted(_indices(self.results_dir, "txt"))

    def reserve_result(self) -> tuple[int, Path]:
        """Claims the next run index and creates its (empty) log file.

        Returns (index, log_path). The index is one past the highest used by any log or
        record; creation is exclusive (O_EXCL), so concurrent callers get distinct indices.
        """
        self.results_dir.mkdir(parents=True, exist_ok=True)
        used = _indices(self.results_dir, "txt") | _indices(self.records_dir, "json")
        index = max(used, default=-1) + 1
        while True:
            path = self.log_path(index)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                index += 1
                continue
            os.close(fd)
            if self.record_path(index).exists():
                # A record without its log (log deleted by hand): leave both alone, move on.
                os.unlink(path)
                index += 1
                continue
            return index, path


def _index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"a run index is an integer >= 0, got {index!r}")
    return index


def _indices(folder: Path, ext: str) -> set[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        m = _RESULT.fullmatch(name)
        if m and m.group(2) == ext:
            out.add(int(m.group(1)))
    return out


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the new one, never a torn
    one (temporary file in the same folder, fsync, rename). Creates missing folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
