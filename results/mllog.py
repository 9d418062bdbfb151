"""MLPerf log lines: the one way podium writes them.

Built on `mlperf_logging.mllog.MLLogger`, so every line has exactly the format the
compliance checker parses:

    :::MLLOG {"namespace": "", "time_ms": ..., "event_type": "POINT_IN_TIME", "key": ...,
              "value": ..., "metadata": {"file": ..., "lineno": ...}}

Why not the package's global `mllog.get_mllogger()`: one process may hold several runs (tests,
a resumed sweep), and a global logger with accumulated file handlers would write one run's
lines into another run's file. Each `MLPerfLogger` owns a private `logging.Logger`.

`metadata.file`/`lineno` name the podium code that called `event`/`start`/`end` (the seed
checker keys seeds on them), with paths relative to the podium checkout. Every line is
flushed as it is written, so a crash keeps everything logged before it.

Key strings come from the package: use `constants.RUN_START`, `constants.EVAL_ACCURACY`, ...
(`constants` is `mlperf_logging.mllog.constants`, re-exported here).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from mlperf_logging.mllog import constants
from mlperf_logging.mllog.mllog import MLLogger

__all__ = ["MLPerfLogger", "constants"]

# The podium checkout: call sites inside it are logged relative to it (readable, and no home
# directory names in published logs).
_CHECKOUT = Path(__file__).resolve().parent.parent

# Frames between MLLogger's get_caller and our caller: _log_helper, MLLogger.event/start/end,
# MLPerfLogger._log, MLPerfLogger.event/start/end. MLLogger adds 2 itself, so 3 reaches the
# caller of our public method.
_BASE_STACK_OFFSET = 3

_ids = itertools.count()


def _plain(value: Any, where: str) -> Any:
    """Turns `value` into plain JSON data, or says which part is not.

    Arrays and array scalars (numpy, JAX) become Python numbers and lists through `tolist()`;
    MLLogger would otherwise swallow the encoding error and write a broken line.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dictionary key {k!r} is not a string; MLPerf log "
                                "values are JSON, whose object keys are strings")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _plain(tolist(), where)
    raise TypeError(f"{where} is a {type(value).__name__}, which an MLPerf log line cannot "
                    "hold; log a number, string, bool, None, list or dict")


class MLPerfLogger:
    """Writes one run's MLPerf log.

    Args:
      path: the log file (appended to; `SubmissionLayout.reserve_result` creates it empty).
        None writes no file (with `echo=True`, stdout only).
      enabled: False on every process but 0: then nothing is written anywhere and the
        methods return at once (MLPerf logs come from one process only).
      echo: also print each line to stdout, as the reference implementations do.

    Used as a context manager, it closes the file on exit; if the block raises after
    `run_start` and before `run_stop`, it first logs `run_stop` with status `aborted`, so a
    failed run's log still ends the way the rules ask.
    """

    def __init__(self, path: str | os.PathLike | None, *, enabled: bool = True,
                 echo: bool = False):
        self.path = None if path is None else str(path)
        self.enabled = bool(enabled) and (path is not None or echo)
        self.run_started = False
        self.run_stopped = False
        self._closed = False
        self._handlers: list[logging.Handler] = []
        self._mllogger: MLLogger | None = None
        if not self.enabled:
            return
        # A Logger made directly (not logging.getLogger) stays out of logging's global
        # registry: no leak across many runs and no propagation to the root logger's handlers.
        logger = logging.Logger(f"podium.mllog.{next(_ids)}", level=logging.INFO)
        logger.propagate = False
        if self.path is not None:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"cannot write the MLPerf log {self.path}: its folder "
                                        f"{parent} does not exist")
            # StreamHandler.emit flushes after every record.
            self._handlers.append(logging.FileHandler(self.path, mode="a", encoding="utf-8"))
        if echo:
            self._handlers.append(logging.StreamHandler(sys.stdout))
        for handler in self._handlers:
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        self._mllogger = MLLogger(logger=logger, default_namespace="",
                                  default_stack_offset=1, default_clear_line=False,
                                  # MLLogger strips it with re.sub: escape the path.
                                  root_dir=re.escape(str(_CHECKOUT)))

    def event(self, key: str, value: Any = None, metadata: dict | None = None, *,
              stack_offset: int = 0) -> None:
        """Logs a POINT_IN_TIME line. `stack_offset` skips that many extra frames, for a
        helper that logs on behalf of its own caller."""
        self._log("event", key, value, metadata, stack_offset)

    def start(self, key: str, value: Any = None, metadata: dict | None = None, *,
              stack_offset: int = 0) -> None:
        """Logs an INTERVAL_START line (init_start, run_start, block_start, eval_start...)."""
        self._log("start", key, value, metadata, stack_offset)

    def end(self, key: str, value: Any = None, metadata: dict | None = None, *,
            stack_offset: int = 0) -> None:
        """Logs an INTERVAL_END line (init_stop, run_stop, block_stop, eval_stop...)."""
        self._log("end", key, value, metadata, stack_offset)

    def _log(self, kind: str, key: str, value: Any, metadata: dict | None,
             stack_offset: int) -> None:
        if not self.enabled:
            return
        if self._closed:
            raise RuntimeError(f"the MLPerf log {self.path or '<stdout>'} is closed; "
                               f"cannot log {key!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"an MLPerf log key must be a non-empty string, got {key!r}")
        # NaN/Infinity stay as Python's json writes them: the checker's json.loads reads them
        # and compares them as floats (a diverged eval_accuracy simply fails the target).
        value = _plain(value, f"value of MLPerf log key {key!r}")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise TypeError(f"metadata of MLPerf log key {key!r} must be a dict, got "
                                f"{type(metadata).__name__}")
            clash = sorted({"file", "lineno"} & metadata.keys())
            if clash:
                raise ValueError(f"metadata of MLPerf log key {key!r} may not set {clash}: "
                                 "the logger fills them with the call site (the seed checker "
                                 "relies on them)")
            metadata = _plain(metadata, f"metadata of MLPerf log key {key!r}")
        getattr(self._mllogger, kind)(key, value, metadata,
                                      stack_offset=_BASE_STACK_OFFSET + stack_offset)
        if key == constants.RUN_START:
            self.run_started = True
        elif key == constants.RUN_STOP:
            self.run_stopped = True

    def close(self) -> None:
        """Flushes, syncs the file to disk and closes it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for handler in self._handlers:
            handler.flush()
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.FileHandler) and stream is not None:
                try:
                    os.fsync(stream.fileno())
                except OSError:
                    pass  # not every file system syncs (pipes, some FUSE mounts)
            if isinstance(handler, logging.FileHandler):
                handler.close()
            if self._mllogger is not None:
                self._mllogger.logger.removeHandler(handler)
        self._handlers = []

    def __enter__(self) -> "MLPerfLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if (exc_type is not None and self.enabled and not self._closed
                    and self.run_started and not self.run_stopped):
                self.end(constants.RUN_STOP, metadata={constants.STATUS: constants.ABORTED})
        finally:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("enabled" if self.enabled else "disabled")
        return f"MLPerfLogger({self.path!r}, {state})"
