"""Checkpoints, preemption and resuming: a long run survives losing its machines.

What a checkpoint holds (one orbax CheckpointManager step, two items):
  state     the train state: step, params, model state (BatchNorm statistics), optimizer
            state; sharded arrays, each host writing its own shards.
  progress  JSON: the blocks already evaluated, the eval curve, the timers (train, eval, data
            wait, checkpoint), the step-time samples, the run's segments, its result index,
            the config hash and the seed.
The RNG needs no saving: the loop derives every step's key from (seed, step). The data
position is the step: the input is index-based (`Task.train_batches(start_step)`), so a
resumed run reads exactly the batches the uninterrupted run would have read.

Saves are asynchronous: orbax copies the arrays to host memory and writes them in a thread
while training goes on. A checkpoint becomes visible only when all of it is written (orbax
writes to a temporary folder and renames it), so a failed save (a full disk) leaves the
previous checkpoint as the latest; the run warns and goes on.

Beside the checkpoints, process 0 keeps `run_state.json` in the run directory: which result
index the run writes, its config hash, its status (running / interrupted / finished), its
process id and host, and a heartbeat (last step, wall time). A restart of the same command
finds the unfinished run through it (`checkpoint.resume='auto'`) and learns from the
heartbeat how much work a SIGKILL lost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from results.layout import atomic_write_text

RUN_STATE_FILE = 'run_state.json'
RUNNING, INTERRUPTED, FINISHED = 'running', 'interrupted', 'finished'


class RunInterrupted(RuntimeError):
  """SIGTERM (a TPU VM preemption notice) stopped the run at a step boundary."""

  def __init__(self, step: int, checkpoint_dir: str | None):
    self.step, self.checkpoint_dir = step, checkpoint_dir
    saved = (f'checkpoint saved at step {step} in {checkpoint_dir}; run the same command '
             f'again to resume' if checkpoint_dir else
             'checkpointing is off, so the run cannot be resumed (set checkpoint.every_steps)')
    super().__init__(f'stopped by SIGTERM at step {step}: {saved}')


# -- the run's own state file ----------------------------------------------------------------

def read_run_state(run_dir: str | os.PathLike) -> dict | None:
  path = Path(run_dir) / RUN_STATE_FILE
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, json.JSONDecodeError) as error:
    logging.warning('podium: ignoring unreadable %s (%s)', path, error)
    return None


def write_run_state(run_dir: str | os.PathLike, **fields) -> dict:
  """Updates `run_state.json` atomically with `fields` (and the writer's pid/host)."""
  state = read_run_state(run_dir) or {}
  state.update(fields, pid=os.getpid(), host=socket.gethostname(), updated=time.time())
  atomic_write_text(Path(run_dir) / RUN_STATE_FILE, json.dumps(state, indent=2, sort_keys=True))
  return state


def _alive_here(state: dict) -> bool:
  """Whether the process that wrote `state` still runs on this host (a concurrent run)."""
  if state.get('host') != socket.gethostname() or not state.get('pid'):
    return False
  try:
    os.kill(int(state['pid']), 0)
  except (ProcessLookupError, ValueError):
    return False
  except PermissionError:
    return True
  return int(state['pid']) != os.getpid()


@dataclasses.dataclass
class Resumable:
  result_index: int
  run_dir: Path
  run_state: dict


def find_resumable(runs_root: str | os.PathLike, config_hash: str) -> tuple[Resumable | None, list[str]]:
  """The newest unfinished run under `runs_root` (one folder per result index) with this
  config and a checkpoint, and notes about unfinished runs that cannot be resumed."""
  notes = []
  candidates = []
  for run_state_path in Path(runs_root).glob(f'result_*/{RUN_STATE_FILE}'):
    run_dir = run_state_path.parent
    state = read_run_state(run_dir)
    if not state or state.get('status') == FINISHED:
      continue
    if state.get('config_hash') != config_hash:
      notes.append(f'{run_dir} is unfinished but was started with another config; not resuming it')
      continue
    if state.get('status') == RUNNING and _alive_here(state):
      notes.append(f'{run_dir} is still running (pid {state["pid"]}); not resuming it')
      continue
    if latest_step(state.get('checkpoint_dir')) is None:
      continue
    candidates.append(Resumable(int(state['result_index']), run_dir, state))
  if not candidates:
    return None, notes
  return max(candidates, key=lambda c: c.result_index), notes


def latest_step(directory: str | os.PathLike | None) -> int | None:
  """The newest complete checkpoint step in `directory`, without starting a manager."""
  if not directory or not Path(directory).is_dir():
    return None
  steps = [int(p.name) for p in Path(directory).iterdir()
           if p.is_dir() and p.name.isdigit() and (p / '_CHECKPOINT_METADATA').exists()]
  return max(steps, default=None)


def read_state(directory: str | os.PathLike, step: int | None = None) -> dict:
  """The train state saved at `step` (default: the latest) as numpy arrays on this host,
  whatever topology wrote it: for export, inspection and tests."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {directory}')
  path = os.path.join(os.fspath(directory), str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return _int_keys(jax.tree.map(np.asarray, checkpointer.restore(path, target)))


def _int_keys(tree):
  """Orbax writes the integer keys of NNX pure dicts (list indices) as strings; undo it."""
  if not isinstance(tree, dict):
    return tree
  return {int(key) if isinstance(key, str) and key.isdigit() else key: _int_keys(value)
          for key, value in tree.items()}


# -- orbax ---------------------------------------------------------------------------------

class Checkpointer:
  """An orbax CheckpointManager for the loop's state plus its JSON progress."""

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # Leftovers of a save that died (a full disk, a SIGKILL) are removed at start.
            cleanup_tmp_directories=True),
        item_names=('state', 'progress'))
    self.save_s = 0.0           # time the loop spent blocked in saves
    self.failures: list[str] = []

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, progress: dict, *, wait: bool = False) -> bool:
    """Starts saving `state` and `progress` as step `step`; True if the save started.

    An earlier asynchronous save that failed is reported here (orbax raises it on the next
    call) as a warning: the checkpoint before it is still the latest complete one.
    """
    start = time.perf_counter()
    self._check_background()
    args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(state),
                                    progress=self._ocp.args.JsonSave(progress))
    try:
      started = self.manager.save(step, args=args, force=True)
      if wait:
        self.manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 -- a failed save must not end the run
      self._failed(step, error)
      started = False
    self.save_s += time.perf_counter() - start
    return started

  def _check_background(self) -> None:
    try:
      self.manager.check_for_errors()
    except Exception as error:  # noqa: BLE001
      self._failed(None, error)

  def _failed(self, step, error) -> None:
    latest = self.latest_step()
    message = (f'checkpoint{"" if step is None else f" at step {step}"} failed: '
               f'{type(error).__name__}: {error}; '
               + (f'the checkpoint of step {latest} is still usable' if latest is not None
                  else 'there is no earlier checkpoint'))
    self.failures.append(message)
    logging.warning('podium: %s', message)
    print(f'podium: warning: {message}', flush=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state (with `abstract_state`'s shardings and dtypes) and progress of `step`."""
    restored = self.manager.restore(step, args=self._ocp.args.Composite(
        state=self._ocp.args.StandardRestore(abstract_state),
        progress=self._ocp.args.JsonRestore()))
    return restored['state'], dict(restored['progress'])

  def wait(self) -> None:
    start = time.perf_counter()
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001
      self._failed(None, error)
    self.save_s += time.perf_counter() - start

  def close(self) -> None:
    self.wait()
    self.manager.close()


# -- SIGTERM -------------------------------------------------------------------------------

class PreemptionWatch:
  """Tells the loop, at a step boundary that every process agrees on, that SIGTERM came.

  One process: a Python SIGTERM handler sets a flag. Several: JAX's preemption service
  (started by `jax.distributed.initialize`) receives the notice on any host and picks the
  step at which all hosts stop, so every host saves the same step.
  """

  def __init__(self, process_count: int):
    self.multi = process_count > 1
    self.received = False
    self._previous = None
    if not self.multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.received = True

  def reached(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is off: nothing to agree on
        return False
    return self.received

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
