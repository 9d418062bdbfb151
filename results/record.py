"""The result record: one JSON file per run, what `podium compare` reads.

The MLPerf log is the official account of a run; the record is the same run made easy to
compare: times already computed, the resolved config and its hash, the hardware, the software
versions and the podium commit. It is written next to the log's layout
(`SubmissionLayout.record_path`).

Schema (version 2; version 1 records, which lack `resumed`, `segments` and `phases`, are read
with their defaults). Times are seconds; "progress" is epochs for ResNet-style benchmarks and
training samples for BERT-style ones (MLPerf's `epoch_num` convention), named by
`progress_unit`.

| field                         | type                   | meaning |
|-------------------------------|------------------------|---------|
| schema_version                | int                    | 2; `read_record` reads 1 and 2, refuses others |
| benchmark                     | str                    | benchmark name (`resnet`, `bert`, `wav2vec2_base`, ...) |
| recipe                        | str                    | recipe name in the benchmark registry |
| status                        | 'success' / 'aborted'  | the run_stop status: target reached or not |
| time_to_train_s               | float / null           | run_start -> run_stop, wall clock (the MLPerf score of one run; for a resumed run it spans every segment and the time between them) |
| init_s                        | float / null           | init_start -> init_stop (compile, warm-up) |
| quality_metric                | str                    | e.g. 'eval_accuracy', 'masked_lm_accuracy', 'wer' |
| quality_value                 | float / null           | the last evaluated value |
| quality_target                | float / null           | the value that ends the run |
| epochs_or_samples_to_converge | float / null           | progress at the eval that reached the target (null if none) |
| progress_unit                 | 'epoch' / 'samples' / 'steps' | unit of the progress numbers |
| eval_curve                    | list of [progress, value, time_s] | every eval; time_s since run_start |
| throughput                    | float / null           | training examples per second (mean over the timed run) |
| model_flops_per_step          | float / null           | FLOPs of one train step, all devices (XLA cost analysis) |
| mfu                           | float / null           | model FLOP/s per device / the device's peak (median step time) |
| global_batch_size             | int                    | examples per optimizer step, all devices |
| num_devices                   | int                    | accelerator devices in the run (all hosts) |
| device_kind                   | str                    | e.g. 'TPU v5p', 'NVIDIA H100 80GB HBM3', 'cpu' |
| mesh_shape                    | {axis: int}            | device mesh, e.g. {'data': 64, 'fsdp': 1} |
| config                        | dict                   | the resolved recipe config, as JSON data |
| config_hash                   | str                    | sha256 hex of `config` as canonical JSON (sorted keys, no spaces) |
| versions                      | {name: str}            | software versions given by the caller (jax, flax, libtpu, ...) |
| podium_commit                 | str / null             | `git rev-parse HEAD` of the podium checkout, null outside git |
| podium_dirty                  | bool / null            | uncommitted changes in that checkout |
| started_at                    | str                    | ISO 8601 time with UTC offset at which the run started |
| log_path                      | str                    | the MLPerf log of this run |
| resumed                       | bool                   | true if the run was stopped and resumed from a checkpoint: then it is NOT a valid MLPerf time-to-train (the rules want one contiguous run) |
| segments                      | list of dicts          | one per process lifetime: segment, start_step, end_step, started_at, ended_at, ended ('success', 'aborted', 'interrupted' by SIGTERM, 'killed'), init_s, run_s, lost_steps (trained but not checkpointed, so trained again), lost_s, downtime_s (from the end of the segment before to this one's start) |
| phases                        | {phase: float}         | seconds per phase: init, compile, train, eval, data_wait, checkpoint (summed over segments) |
| extra                         | dict                   | anything else (MFU, data-loading share, notes) |

Non-finite floats (a diverged loss) are written as null: JSON has no NaN.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results.layout import atomic_write_text

__all__ = ["SCHEMA_VERSION", "ResultRecord", "canonical_json", "config_hash",
           "podium_revision", "now_iso", "iso_time", "write_record", "read_record"]

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
STATUSES = ("success", "aborted")
PROGRESS_UNITS = ("epoch", "samples", "steps")


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON data from configs and metrics (tuples, array scalars, paths included)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string (JSON object keys are)")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)  # ml_collections.ConfigDict
    if callable(to_dict):
        return _jsonable(to_dict(), where)
    tolist = getattr(value, "tolist", None)  # numpy / JAX arrays and scalars
    if callable(tolist):
        return _jsonable(tolist(), where)
    raise TypeError(f"{where} is a {type(value).__name__}, which a result record cannot "
                    "hold; use numbers, strings, bools, None, lists and dicts")


def canonical_json(value: Any) -> str:
    """The one JSON text of `value` that hashing uses: sorted keys, no spaces, ASCII."""
    return json.dumps(_jsonable(value, "config"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def config_hash(config: Any) -> str:
    """sha256 hex of the canonical JSON of `config`: equal configs hash equal whatever their
    key order or container types (tuple vs list, ConfigDict vs dict)."""
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


def now_iso() -> str:
    """The current time, ISO 8601 with UTC offset, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def iso_time(seconds: float) -> str:
    """`time.time()` seconds as ISO 8601 with UTC offset, to the second."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def podium_revision(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding `path` (default: this podium checkout).

    (None, None) outside a git checkout, without git, or before the first commit.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None
    head = git("rev-parse", "--verify", "--quiet", "HEAD")
    if not head:
        return None, None
    status = git("status", "--porcelain")
    return head.strip(), (None if status is None else bool(status.strip()))


@dataclass
class ResultRecord:
    """One run's result; see the module docstring for the meaning of each field."""

    benchmark: str
    recipe: str
    status: str
    time_to_train_s: float | None
    init_s: float | None
    quality_metric: str
    quality_value: float | None
    quality_target: float | None
    epochs_or_samples_to_converge: float | None
    global_batch_size: int
    num_devices: int
    device_kind: str
    config: dict
    log_path: str
    progress_unit: str = "epoch"
    eval_curve: list[tuple[float, float, float]] = field(default_factory=list)
    throughput: float | None = None
    model_flops_per_step: float | None = None
    mfu: float | None = None
    mesh_shape: dict[str, int] = field(default_factory=dict)
    config_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    podium_commit: str | None = None
    podium_dirty: bool | None = None
    started_at: str = field(default_factory=now_iso)
    resumed: bool = False
    segments: list[dict] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"invalid result status {self.status!r}: use one of {STATUSES}")
        if self.progress_unit not in PROGRESS_UNITS:
            raise ValueError(f"invalid progress_unit {self.progress_unit!r}: use one of "
                             f"{PROGRESS_UNITS}")
        self.config = _jsonable(self.config, "config")
        if not isinstance(self.config, dict):
            raise TypeError(f"config must be a dict (or ConfigDict), got "
                            f"{type(self.config).__name__}")
        curve = []
        for i, point in enumerate(self.eval_curve):
            point = _jsonable(point, f"eval_curve[{i}]")
            if not isinstance(point, list) or len(point) != 3:
                raise ValueError(f"eval_curve[{i}] = {point!r}: each point is "
                                 "(progress, value, time_s)")
            curve.append(tuple(point))
        self.eval_curve = curve
        self.mesh_shape = {str(k): int(v) for k, v in dict(self.mesh_shape).items()}
        self.log_path = os.fspath(self.log_path)
        expected = config_hash(self.config)
        if not self.config_hash:
            self.config_hash = expected
        elif self.config_hash != expected:
            raise ValueError(f"config_hash {self.config_hash} does not match the config "
                             f"(its hash is {expected}): the record was edited or is corrupt")

    def to_json(self) -> str:
        data = _jsonable(dataclasses.asdict(self), "record")
        # schema_version first: it says how to read the rest.
        data = {"schema_version": data.pop("schema_version"), **data}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_record(path: str | os.PathLike, record: ResultRecord) -> None:
    """Writes `record` to `path` atomically (a reader never sees half a record)."""
    atomic_write_text(path, record.to_json())


def read_record(path: str | os.PathLike) -> ResultRecord:
    """Reads and validates a record written by `write_record`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"result record {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"result record {path} holds a {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"result record {path} has schema_version {version!r}; this podium "
                         f"reads schema_version {', '.join(map(str, READABLE_VERSIONS))}"
                         + (" (the record is newer: update podium)"
                            if isinstance(version, int) and version > SCHEMA_VERSION else ""))
    fields = {f.name: f for f in dataclasses.fields(ResultRecord)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"result record {path} has unknown fields {unknown}")
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"result record {path} lacks required fields {missing}")
    try:
        return ResultRecord(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"result record {path}: {e}") from None
