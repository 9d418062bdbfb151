"""`podium launch tpu-vm`: a Cloud TPU VM slice from nothing to fetched results.

  create        a queued resource (on-demand, spot, reserved or best-effort), polled until
                ACTIVE with its state changes printed
  setup         the checkout's HEAD (git archive) on every worker, unpacked and installed
                (`pip install -e '.[tpu]'`); then every worker is checked to run it
  preflight     the doctor (launch/preflight.py) on every worker, one line per failure
  run           preflight, then `podium run ...` on all workers at once: one ssh per worker,
                each worker's output in runs/launch/<name>/<time>/worker_<i>.log, worker 0's
                streamed. If one worker fails the others get a grace period, then podium
                stops them (local ssh and a remote pkill) and says what is still billed.
  fetch         worker 0's results tree (MLPerf logs, result records, system JSON, run
                folders without checkpoints) into runs/launch/<name>/results
  stop          SIGTERM (then SIGKILL) to podium runs on every worker
  delete        the queued resource and its TPU VMs; then checks nothing is left
  up-run-down   all of it for one recipe; the slice is deleted at the end whatever happened

Preemption: a spot slice that is preempted goes SUSPENDING -> SUSPENDED and its VMs (and
their disks) are gone. With checkpoints on GCS (checkpoint.every_steps / every_epochs and
checkpoint.dir=gs://...) the run resumes on a new slice, which needs its run folder
(run_state.json): `run` copies worker 0's results tree back every --sync-minutes, and
`--resume-from` / up-run-down's `--retry-preempted` put it back before running again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import posixpath
import shlex
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from launch import preflight, source
from launch.gcloud import LaunchError, Result, Runner, TpuVm, kill_group, remote
from launch.recipe_info import DataSpec, RecipeInfo

QUEUED_HINTS = {
    'CREATING': 'request received',
    'ACCEPTED': 'queued',
    'WAITING_FOR_RESOURCES': 'queued, waiting for capacity; not billed until ACTIVE',
    'PROVISIONING': 'capacity found, creating the TPU VMs',
    'ACTIVE': 'the TPU VMs are up; billed from now on',
}
# The pattern `stop` kills by. The brackets keep it from matching the very shell command
# line that carries it (pkill -f would otherwise kill its own shell).
RUN_PATTERN = '[l]aunch.cli run'
REMOTE_RESULTS_ARCHIVE = 'podium_results.tar.gz'
REMOTE_RESTORE_ARCHIVE = 'podium_restore.tar.gz'
STOP_TIMEOUT_S = 60

EXIT_MEANINGS = {
    1: 'the run failed or did not reach its target',
    2: 'podium rejected the recipe or the data',
    130: 'interrupted',
    143: 'SIGTERM: preempted or stopped; a run with checkpointing saved before exiting',
    255: 'ssh failed or the connection was lost',
}


class Preempted(LaunchError):
  """The queued resource was suspended (spot preemption, maintenance): its VMs are gone."""


class QueueFailed(LaunchError):
  """The queued resource request FAILED (quota, capacity window expired, bad request)."""


class CreateRefused(LaunchError):
  """gcloud refused the request itself: nothing of ours exists to clean up."""


@dataclasses.dataclass
class QueuedState:
  state: str                 # ACTIVE, WAITING_FOR_RESOURCES, ..., or NOT_FOUND
  detail: str = ''
  initiator: str = ''


@dataclasses.dataclass
class Pod:
  """One TPU VM slice and how to talk to it. Clock and sleep are injectable for tests."""
  tpu: TpuVm
  runner: Runner = dataclasses.field(default_factory=Runner)
  out: Callable[[str], None] = print
  stream: Callable[[str], None] = lambda line: _echo(line)   # worker 0's output, as it comes
  clock: Callable[[], float] = time.monotonic
  sleep: Callable[[float], None] = time.sleep
  poll_s: float = 30.0        # queued-resource state polling
  monitor_s: float = 2.0      # worker process polling during a run
  grace_s: float = 60.0       # after a worker ends, how long the others may take to end too
  heartbeat_s: float = 600.0  # a progress line at least this often while waiting
  remote_dir: str = 'podium'          # the code on every worker (relative to home)
  remote_output: str = 'podium_runs'  # results on worker 0 (relative to home); kept by setup
  python: str = 'python3'
  logs_root: Path = Path('runs/launch')
  repo: Path = source.ROOT
  results_path: Path | None = None    # where fetch puts worker 0's results
  _log_dir: Path | None = None

  @property
  def name(self) -> str:
    return self.tpu.name

  @property
  def dry_run(self) -> bool:
    return self.runner.dry_run

  def log_dir(self) -> Path:
    """runs/launch/<name>/<time>/: this command's logs (one folder per podium command)."""
    if self._log_dir is None:
      stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
      self._log_dir = self.logs_root / self.name / stamp
      if not self.dry_run:
        self._log_dir.mkdir(parents=True, exist_ok=True)
    return self._log_dir

  def results_dir(self) -> Path:
    return self.results_path or self.logs_root / self.name / 'results'

  def output_from_code(self) -> str:
    """The results folder as `podium run --output` sees it from the code folder."""
    if posixpath.isabs(self.remote_output):
      return self.remote_output
    return posixpath.relpath(self.remote_output, self.remote_dir)


# -- the queued resource ------------------------------------------------------------------------

def status(pod: Pod) -> QueuedState:
  result = pod.runner.run(pod.tpu.describe_queued(), quiet=True)
  if pod.dry_run:
    return QueuedState('ACTIVE', 'dry run: assumed')
  if not result.ok:
    error = result.error_line()
    if 'NOT_FOUND' in error or 'not found' in error.lower():
      return QueuedState('NOT_FOUND')
    raise LaunchError(f'cannot read the state of {pod.name}: {error}')
  state = result.json().get('state', {}) or {}
  name = state.get('state', 'STATE_UNSPECIFIED')
  detail = ''
  failed = (state.get('failedData') or {}).get('error') or {}
  if failed:
    detail = failed.get('message', '') or str(failed)
  return QueuedState(name, detail, state.get('stateInitiator', ''))


def billing_note(pod: Pod, state: QueuedState | None = None) -> str:
  """What of `pod` is still there and billed, and the command that removes it."""
  try:
    state = state or status(pod)
  except LaunchError as error:
    return (f'{pod.name}: state unknown ({error}); it may still be billed: check with '
            f'`{pod.tpu.podium("status")}`, delete with `{pod.tpu.podium("delete")}`')
  delete = f'`{pod.tpu.podium("delete")}`'
  if state.state == 'NOT_FOUND':
    return f'{pod.name}: nothing is left, nothing is billed'
  if state.state in ('ACTIVE', 'PROVISIONING'):
    return f'{pod.name} is {state.state}: its TPU VMs are billed until you run {delete}'
  if state.state in ('WAITING_FOR_RESOURCES', 'ACCEPTED', 'CREATING'):
    return (f'{pod.name} is {state.state}: queued, not billed until it is ACTIVE; withdraw '
            f'it with {delete}')
  return f'{pod.name} is {state.state}: it holds no TPU VMs; remove the request with {delete}'


def create(pod: Pod, accelerator_type: str, runtime_version: str | None = None,
           capacity: str = 'on-demand', timeout_s: float = 6 * 3600) -> None:
  """Requests the slice and waits until it is ACTIVE (FAILED/SUSPENDED/timeout raise)."""
  spec = _single_slice(accelerator_type)
  runtime_version = runtime_version or default_runtime(spec)
  result = pod.runner.run(pod.tpu.create(accelerator_type, runtime_version, capacity))
  if not result.ok:
    error = result.error_line()
    if 'ALREADY_EXISTS' in error or 'already exists' in error.lower():
      raise CreateRefused(f'{pod.name} already exists in {pod.tpu.zone}: use it (setup, run), '
                          f'or delete it first with `{pod.tpu.podium("delete")}`', exit_code=2)
    hint = ''
    if 'quota' in error.lower() or 'RESOURCE_EXHAUSTED' in error:
      hint = (f' (the project\'s TPU quota in {pod.tpu.zone} does not cover {accelerator_type} '
              f'{capacity}: see IAM & Admin > Quotas, or try --spot / another zone)')
    raise CreateRefused(f'creating {pod.name} ({accelerator_type}, {capacity}) failed: '
                        f'{error}{hint}. {billing_note(pod)}')
  pod.out(f'{pod.name}: requested {accelerator_type} ({spec.describe()}), {capacity}, '
          f'runtime {runtime_version}, in {pod.tpu.zone}')
  wait_active(pod, timeout_s)


def wait_active(pod: Pod, timeout_s: float) -> None:
  if pod.dry_run:
    pod.runner.run(pod.tpu.describe_queued())
    pod.out(f'(polled every {pod.poll_s:g} s until the state is ACTIVE)')
    return
  try:
    _wait(pod, timeout_s)
  except KeyboardInterrupt:
    pod.out(f'interrupted while waiting. {billing_note(pod)}')
    raise


def _wait(pod: Pod, timeout_s: float) -> None:
  start = pod.clock()
  last, last_print, errors = None, start, 0
  while True:
    try:
      state = status(pod)
      errors = 0
    except LaunchError:
      errors += 1  # a passing API error; five in a row is not passing
      if errors >= 5:
        raise
      pod.sleep(pod.poll_s)
      continue
    now = pod.clock()
    elapsed = _hms(now - start)
    if state.state != last or now - last_print >= pod.heartbeat_s:
      hint = QUEUED_HINTS.get(state.state, '')
      pod.out(f'[{elapsed}] {pod.name}: {state.state}' + (f' ({hint})' if hint else ''))
      last, last_print = state.state, now
    if state.state == 'ACTIVE':
      return
    if state.state == 'NOT_FOUND':
      raise LaunchError(f'{pod.name} disappeared while waiting (deleted by someone?)')
    if state.state == 'FAILED':
      raise QueueFailed(f'{pod.name} FAILED: {state.detail or "no reason given"}. '
                        f'{billing_note(pod, state)}')
    if state.state in ('SUSPENDING', 'SUSPENDED', 'DELETING'):
      raise Preempted(f'{pod.name} is {state.state} before it ran anything (initiated by '
                      f'{state.initiator or "the service"}). {billing_note(pod, state)}')
    if timeout_s and now - start >= timeout_s:
      raise LaunchError(f'{pod.name} is still {state.state} after {_hms(now - start)}. '
                        f'{billing_note(pod, state)}; or wait longer with a larger --timeout')
    pod.sleep(pod.poll_s)


def delete(pod: Pod) -> None:
  result = pod.runner.run(pod.tpu.delete())
  if pod.dry_run:
    pod.runner.run(pod.tpu.describe_queued())
    return
  if not result.ok:
    error = result.error_line()
    if 'NOT_FOUND' in error:
      pod.out(f'{pod.name}: already deleted; nothing is billed')
      return
    raise LaunchError(f'deleting {pod.name} FAILED: {error}. It may still be billed: delete '
                      f'it with `{shlex.join(pod.tpu.delete())}` or in the Cloud console')
  pod.out(f'deleted {pod.name}. {billing_note(pod)}')


def show_status(pod: Pod) -> int:
  state = status(pod)
  pod.out(f'{pod.name}: queued resource {state.state}' +
          (f' ({state.detail})' if state.detail else ''))
  if state.state == 'ACTIVE':
    workers, accelerator = node_workers(pod)
    pod.out(f'{pod.name}: {accelerator}, {workers} worker(s)')
  pod.out(billing_note(pod, state))
  return 0


# -- the code on the workers ------------------------------------------------------------------

def node_workers(pod: Pod, fallback_topology: str = '') -> tuple[int, str]:
  """(number of workers, accelerator type) of the READY slice."""
  result = pod.runner.run(pod.tpu.describe_node(), quiet=True)
  if pod.dry_run:
    if not fallback_topology:
      return 1, ''
    spec = _single_slice(fallback_topology)
    pod.out(f'(dry run: {spec.num_hosts} worker(s), from the recipe\'s topology '
            f'{fallback_topology}; a real run counts them with `tpu-vm describe`)')
    return spec.num_hosts, fallback_topology
  if not result.ok:
    raise LaunchError(f'{pod.name} has no TPU VM to use ({result.error_line()}): create it '
                      f'with `{pod.tpu.podium("create")} --accelerator-type=...`', exit_code=2)
  node = result.json()
  state = node.get('state', '?')
  if state != 'READY':
    raise LaunchError(f'{pod.name}\'s TPU VMs are {state}, not READY. '
                      f'{billing_note(pod)}')
  workers = len(node.get('networkEndpoints') or []) or 1
  return workers, node.get('acceleratorType', '')


def install_command(pod: Pod, commit: str, archive: str) -> str:
  new = f'{pod.remote_dir}.new'
  commit_file = posixpath.join(new, preflight.COMMIT_FILE)
  return remote(
      ['rm', '-rf', new], ['mkdir', '-p', new], ['tar', '-xzf', archive, '-C', new],
      ['rm', '-f', archive],
      shlex.join(['printf', r'%s\n', commit]) + ' > ' + shlex.quote(commit_file),
      ['rm', '-rf', pod.remote_dir], ['mv', new, pod.remote_dir], ['cd', pod.remote_dir],
      [pod.python, '-m', 'pip', 'install', '-e', '.[tpu]'])


def setup(pod: Pod, *, allow_dirty: bool = False, workers: int | None = None,
          fallback_topology: str = '', commit: str | None = None) -> str:
  """Ships HEAD to every worker and installs it; returns the commit."""
  commit = commit or source.check_clean(pod.repo, allow_dirty, pod.out)
  if workers is None:
    workers, _ = node_workers(pod, fallback_topology)
  with tempfile.TemporaryDirectory(prefix='podium-setup-') as tmp:
    archive = Path(tmp) / f'podium-{commit[:12]}.tar.gz'
    _must(pod.runner.run(source.archive_argv(pod.repo, archive)), 'git archive')
    pod.out(f'{pod.name}: copying commit {commit[:12]} to {workers} worker(s)')
    _must(pod.runner.run(pod.tpu.scp_to(archive, archive.name, 'all'), timeout=1800),
          f'copying the code to {pod.name}')
  pod.out(f'{pod.name}: unpacking into ~/{pod.remote_dir} and installing (pip install -e '
          f"'.[tpu]') on every worker")
  result = pod.runner.run(pod.tpu.ssh(install_command(pod, commit, archive.name), 'all'),
                          timeout=3600)
  log = _save(pod, 'setup.log', result)
  _must(result, f'installing podium on {pod.name} (log: {log})')
  outputs = probe_workers(pod, workers)
  if pod.dry_run:
    return commit
  problems = preflight.analyze(outputs, _expect(pod, commit, workers))
  if problems:
    raise LaunchError('setup did not leave every worker ready:\n  ' + '\n  '.join(problems))
  pod.out(f'{pod.name}: {preflight.summary(outputs)}')
  return commit


# -- preflight ------------------------------------------------------------------------------------

def probe_command(pod: Pod, data: DataSpec | None = None) -> str:
  argv = [pod.python, '-m', 'launch.preflight', 'probe']
  if data is not None:
    argv += ['--data-dir', data.dir]
    for pattern in data.patterns:
      argv += ['--pattern', pattern]
  return remote(['cd', pod.remote_dir], argv)


def probe_workers(pod: Pod, workers: int, data: DataSpec | None = None,
                  ) -> list[preflight.WorkerOutput]:
  command = probe_command(pod, data)

  def one(worker: int) -> preflight.WorkerOutput:
    result = pod.runner.run(pod.tpu.ssh(command, worker), timeout=900, quiet=True)
    return preflight.WorkerOutput(worker, result.returncode, result.stdout, result.stderr)

  if pod.dry_run:
    return [one(w) for w in range(workers)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, 32)) as pool:
    return list(pool.map(one, range(workers)))


def _expect(pod: Pod, commit: str | None, workers: int, info: RecipeInfo | None = None,
            ) -> preflight.Expect:
  min_files = max(workers, info.input_shards) if info is not None else 0
  return preflight.Expect(commit=commit, hosts=workers, min_files=min_files,
                          setup_hint=pod.tpu.podium('setup'), stop_hint=pod.tpu.podium('stop'))


def static_checks(info: RecipeInfo, accelerator_type: str) -> list[str]:
  """What the recipe and the slice say without asking any worker."""
  spec = _single_slice(accelerator_type)
  return preflight.batch_problems(info.global_batch_size, info.eval_batch_size,
                                  spec.num_devices, info.mesh, info.dcn_mesh,
                                  f'{accelerator_type} ({spec.num_devices} devices)')


def run_preflight(pod: Pod, info: RecipeInfo, workers: int, accelerator_type: str) -> list[str]:
  problems = static_checks(info, accelerator_type)
  if info.topology and accelerator_type and info.topology != accelerator_type:
    pod.out(f'note: recipe {info.recipe} is written for {info.topology}; running it on '
            f'{accelerator_type}')
  if info.data is None and info.data_note:
    pod.out(f'preflight: no data check ({info.data_note})')
  commit = _local_commit(pod)
  outputs = probe_workers(pod, workers, info.data)
  if pod.dry_run:
    return problems
  problems += preflight.analyze(outputs, _expect(pod, commit, workers, info))
  if not problems:
    pod.out(f'preflight passed on {workers} worker(s): {preflight.summary(outputs)}' +
            (f'; {info.data.dir} readable' if info.data else ''))
  return problems


def _local_commit(pod: Pod) -> str | None:
  try:
    return source.head(pod.repo)
  except LaunchError:
    return None


# -- running ---------------------------------------------------------------------------------------

def run_command(pod: Pod, info: RecipeInfo) -> str:
  argv = [pod.python, '-m', 'launch.cli', 'run', info.benchmark, '--recipe', info.recipe]
  for assignment in info.sets:
    argv += ['--set', assignment]
  argv += ['--output', pod.output_from_code()]
  return remote(['cd', pod.remote_dir], ['exec', *argv])


def stop_command() -> str:
  waiting = shlex.join(['pgrep', '-f', RUN_PATTERN]) + ' >/dev/null'
  return '; '.join([
      shlex.join(['pkill', '-TERM', '-f', RUN_PATTERN]),
      shlex.join(['timeout', str(STOP_TIMEOUT_S), 'sh', '-c',
                  f'while {waiting}; do sleep 1; done']),
      shlex.join(['pkill', '-KILL', '-f', RUN_PATTERN]),
      'true'])


def stop(pod: Pod) -> bool:
  result = pod.runner.run(pod.tpu.ssh(stop_command(), 'all'), timeout=STOP_TIMEOUT_S + 120)
  if pod.dry_run:
    return True
  if result.ok:
    pod.out(f'{pod.name}: no podium run is left on any worker (SIGTERM, then SIGKILL after '
            f'{STOP_TIMEOUT_S} s)')
    return True
  pod.out(f'{pod.name}: stopping podium on the workers FAILED ({result.error_line()}): a run '
          f'may still hold the TPUs; try `{pod.tpu.podium("stop")}` again')
  return False


@dataclasses.dataclass
class _Worker:
  index: int
  proc: object
  log_path: Path
  last_line: str = ''
  thread: threading.Thread | None = None
  stopped: str = ''   # why podium stopped it, if it did


@dataclasses.dataclass
class RunOutcome:
  codes: list[int]
  log_dir: Path
  preempted: bool = False
  stopped_workers: list[int] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return bool(self.codes) and all(c == 0 for c in self.codes)

  @property
  def exit_code(self) -> int:
    if self.ok:
      return 0
    if self.codes and self.codes[0] > 0:
      return self.codes[0]
    bad = [c for c in self.codes if c > 0]
    return bad[0] if bad else 1


def run(pod: Pod, info: RecipeInfo, *, skip_preflight: bool = False, sync_s: float = 0.0,
        resume_from: Path | None = None) -> RunOutcome:
  """Preflight, then `podium run` on every worker at once; stops all if one fails."""
  workers, accelerator = node_workers(pod, info.topology)
  problems = (static_checks(info, accelerator or info.topology) if skip_preflight else
              run_preflight(pod, info, workers, accelerator or info.topology))
  if problems:
    for line in problems:
      pod.out(f'preflight: {line}')
    raise LaunchError(f'preflight failed on {pod.name}: nothing was started. '
                      f'{billing_note(pod)}', exit_code=2)
  if resume_from is not None:
    restore_results(pod, resume_from)
  command = run_command(pod, info)
  log_dir = pod.log_dir()
  pod.out(f'{pod.name}: starting `{command}` on {workers} worker(s); logs in {log_dir}/'
          f'worker_<i>.log, worker 0 below')
  started = []
  try:
    for index in range(workers):
      proc = pod.runner.start(pod.tpu.ssh(command, index))
      if proc is not None:
        worker = _Worker(index, proc, log_dir / f'worker_{index}.log')
        worker.thread = threading.Thread(target=_pump, args=(worker, pod.stream if index == 0
                                                              else None), daemon=True)
        worker.thread.start()
        started.append(worker)
    if pod.dry_run:
      return RunOutcome([0] * workers, log_dir)
    outcome = _monitor(pod, started, log_dir, sync_s)
  except BaseException:
    _stop_all(pod, started)
    raise
  return _report(pod, info, outcome, started)


def _pump(worker: _Worker, echo: Callable[[str], None] | None) -> None:
  with open(worker.log_path, 'a', encoding='utf-8', errors='replace') as log:
    for line in worker.proc.stdout:
      log.write(line)
      log.flush()
      if line.strip():
        worker.last_line = line.strip()
      if echo is not None:
        echo(line)


def _monitor(pod: Pod, workers: list[_Worker], log_dir: Path, sync_s: float) -> RunOutcome:
  ended_at, why = None, ''
  last_sync = pod.clock()
  try:
    while True:
      codes = [w.proc.poll() for w in workers]
      if all(c is not None for c in codes):
        break
      now = pod.clock()
      if ended_at is None:
        bad = [(w.index, c) for w, c in zip(workers, codes) if c not in (None, 0)]
        if bad:
          index, code = bad[0]
          pod.out(f'worker {index} ended with exit {code} ({_meaning(code)}); the others get '
                  f'{pod.grace_s:g} s to end, then podium stops them')
          ended_at, why = now, f'worker {index} had failed'
        elif codes[0] == 0:   # worker 0 is done: the others should end within the grace
          ended_at, why = now, f'still running {pod.grace_s:g} s after worker 0 ended'
      if ended_at is not None and now - ended_at >= pod.grace_s:
        break
      if sync_s and now - last_sync >= sync_s:
        _sync(pod)
        last_sync = pod.clock()
      pod.sleep(pod.monitor_s)
  except KeyboardInterrupt:
    pod.out('interrupted: stopping podium on every worker')
    _stop_all(pod, workers, 'interrupted')
    pod.out(billing_note(pod))
    raise
  stopped = _stop_all(pod, workers, why)
  for w in workers:
    if w.thread is not None:
      w.thread.join(timeout=10)
  return RunOutcome([w.proc.returncode for w in workers], log_dir, stopped_workers=stopped)


def _stop_all(pod: Pod, workers: list[_Worker], why: str = '') -> list[int]:
  """Ends the local ssh processes still running, then podium runs on every worker."""
  running = [w for w in workers if w.proc.poll() is None]
  for w in running:
    w.stopped = why or 'stopped'
    kill_group(w.proc)
  if running:
    pod.out(f'stopped the ssh sessions of {_list(w.index for w in running)}; stopping podium '
            f'on every worker of {pod.name}')
    stop(pod)
  return [w.index for w in running]


def _report(pod: Pod, info: RecipeInfo, outcome: RunOutcome, workers: list[_Worker]) -> RunOutcome:
  if outcome.ok:
    pod.out(f'{pod.name}: the run ended on all {len(outcome.codes)} worker(s); logs in '
            f'{outcome.log_dir}. Results are on worker 0 in ~/{pod.remote_output}: '
            f'`{pod.tpu.podium("fetch")}`')
    return outcome
  for w in workers:
    code = w.proc.returncode
    if code == 0:
      continue
    if w.stopped:
      pod.out(f'worker {w.index}: stopped by podium ({w.stopped}) [{w.log_path}]')
    else:
      pod.out(f'worker {w.index}: exit {code} ({_meaning(code)}): {w.last_line or "no output"}'
              f' [{w.log_path}]')
  try:
    state = status(pod)
  except LaunchError:
    pod.out(billing_note(pod))
    return outcome
  if state.state in ('SUSPENDING', 'SUSPENDED'):
    outcome.preempted = True
    pod.out(preemption_advice(pod, info, state))
  pod.out(billing_note(pod, state))
  return outcome


def preemption_advice(pod: Pod, info: RecipeInfo, state: QueuedState) -> str:
  by = f', initiated by {state.initiator}' if state.initiator else ''
  lines = [f'{pod.name} was preempted (queued resource {state.state}{by}): its TPU VMs and '
           f'their disks are gone.']
  if not info.checkpointing:
    lines.append('Checkpointing was off, so the run starts over. For spot capacity run with '
                 '--set checkpoint.every_steps=N --set checkpoint.dir=gs://BUCKET/ckpt.')
  elif not info.checkpoint_dir.startswith('gs://'):
    lines.append('The checkpoints were on the lost VM\'s disk: set checkpoint.dir=gs://... '
                 'so a new slice can resume.')
  else:
    mirror = pod.results_dir()
    lines.append(f'The checkpoints in {info.checkpoint_dir} keep the progress; the run '
                 f'folder was last copied to {mirror}. To resume: delete {pod.name}, create and '
                 f'set up a new slice, then `run ... --resume-from {mirror}` '
                 f'(or `up-run-down ... --retry-preempted N` does all of it).')
  return ' '.join(lines)


def _meaning(code: int | None) -> str:
  if code is None:
    return 'still running'
  if code < 0:
    return f'killed by signal {-code}'
  return EXIT_MEANINGS.get(code, 'failed')


# -- results ---------------------------------------------------------------------------------------

def fetch(pod: Pod, dest: Path | None = None, *, quiet: bool = False) -> Path:
  """Worker 0's results tree (no checkpoints) into `dest` (runs/launch/<name>/results)."""
  dest = Path(dest or pod.results_dir())
  pack = remote(['tar', '-czf', REMOTE_RESULTS_ARCHIVE, '--exclude=checkpoints', '-C',
                 pod.remote_output, '.'])
  result = pod.runner.run(pod.tpu.ssh(pack, 0), timeout=1800, quiet=quiet)
  if result.returncode not in (0, 1):   # tar: 1 = a file changed while read (a live run)
    raise LaunchError(f'packing ~/{pod.remote_output} on worker 0 of {pod.name} failed: '
                      f'{result.error_line()} (has a run written results there yet?)')
  with tempfile.TemporaryDirectory(prefix='podium-fetch-') as tmp:
    local = Path(tmp) / REMOTE_RESULTS_ARCHIVE
    _must(pod.runner.run(pod.tpu.scp_from(REMOTE_RESULTS_ARCHIVE, local, 0), timeout=1800,
                         quiet=quiet), f'copying the results from {pod.name}')
    if pod.dry_run:
      return dest
    dest.mkdir(parents=True, exist_ok=True)
    _extract(local, dest)
  if not quiet:
    logs = sorted(dest.glob('*/results/*/*/result_*.txt'))
    pod.out(f'fetched worker 0\'s ~/{pod.remote_output} into {dest}: {len(logs)} MLPerf '
            f'log(s)' + ''.join(f'\n  {p}' for p in logs) +
            f'\ncheck and score them: podium check {dest}; podium score {dest}')
  return dest


def _sync(pod: Pod) -> None:
  try:
    fetch(pod, quiet=True)
  except LaunchError as error:
    pod.out(f'note: copying the results folder back failed this time ({error})')


def restore_results(pod: Pod, src: Path) -> None:
  """Puts a fetched results tree back on worker 0, so a resumed run finds its run folder."""
  src = Path(src)
  if not pod.dry_run and not src.is_dir():
    raise LaunchError(f'--resume-from {src}: no such folder (it is where fetch puts worker '
                      f'0\'s results: {pod.results_dir()})', exit_code=2)
  with tempfile.TemporaryDirectory(prefix='podium-restore-') as tmp:
    archive = Path(tmp) / REMOTE_RESTORE_ARCHIVE
    if not pod.dry_run:
      with tarfile.open(archive, 'w:gz') as tar:
        for child in sorted(src.iterdir()):
          tar.add(child, arcname=child.name)
    _must(pod.runner.run(pod.tpu.scp_to(archive, REMOTE_RESTORE_ARCHIVE, 0), timeout=1800),
          f'copying {src} to worker 0')
  unpack = remote(['mkdir', '-p', pod.remote_output],
                  ['tar', '-xzf', REMOTE_RESTORE_ARCHIVE, '-C', pod.remote_output],
                  ['rm', '-f', REMOTE_RESTORE_ARCHIVE])
  _must(pod.runner.run(pod.tpu.ssh(unpack, 0)), f'unpacking {src} on worker 0')
  pod.out(f'{pod.name}: put {src} back into ~/{pod.remote_output} on worker 0')


def _extract(archive: Path, dest: Path) -> None:
  with tarfile.open(archive, 'r:gz') as tar:
    if hasattr(tarfile, 'data_filter'):
      tar.extractall(dest, filter='data')
      return
    root = dest.resolve()
    for member in tar.getmembers():  # Pythons without extraction filters: no escapes
      target = (dest / member.name).resolve()
      if root not in (target, *target.parents) or member.issym() or member.islnk():
        raise LaunchError(f'refusing to unpack {member.name!r} from worker 0 outside {dest}')
    tar.extractall(dest)


# -- everything ------------------------------------------------------------------------------------

def up_run_down(pod: Pod, info: RecipeInfo, *, accelerator_type: str = '',
                runtime_version: str | None = None, capacity: str = 'on-demand',
                timeout_s: float = 6 * 3600, allow_dirty: bool = False, keep: bool = False,
                retry_preempted: int = 0, sync_s: float = 0.0,
                skip_preflight: bool = False) -> int:
  """create -> setup -> run -> fetch -> delete; the slice is deleted whatever happens."""
  accelerator_type = accelerator_type or info.topology
  if not accelerator_type:
    raise LaunchError(f'recipe {info.recipe} names no TPU topology: give --accelerator-type '
                      f'(e.g. v4-64)', exit_code=2)
  problems = static_checks(info, accelerator_type)
  if problems:
    raise LaunchError('\n'.join(problems) + '\nnothing was created', exit_code=2)
  commit = source.check_clean(pod.repo, allow_dirty, pod.out)   # before anything is billed
  if retry_preempted and not sync_s:
    sync_s = 600.0
  created = False
  try:
    attempt = 0
    while True:
      try:
        create(pod, accelerator_type, runtime_version, capacity, timeout_s)
      except CreateRefused:
        raise
      except BaseException:
        created = True   # the request exists (FAILED, queued, suspended): delete it below
        raise
      created = True
      setup(pod, fallback_topology=accelerator_type, commit=commit)
      mirror = pod.results_dir()
      resume = mirror if attempt and (pod.dry_run or mirror.is_dir()) else None
      outcome = run(pod, info, skip_preflight=skip_preflight, sync_s=sync_s, resume_from=resume)
      if outcome.preempted and attempt < retry_preempted:
        attempt += 1
        pod.out(f'recreating {pod.name} after the preemption (attempt {attempt + 1} of '
                f'{retry_preempted + 1})')
        created = False
        delete(pod)
        continue
      if not outcome.preempted:
        try:
          fetch(pod)
        except LaunchError as error:
          pod.out(f'fetching the results FAILED: {error}')
      return outcome.exit_code
  finally:
    if created and not keep:
      pod.out(f'deleting {pod.name} (up-run-down leaves nothing running)')
      delete(pod)
    elif created:
      pod.out(f'--keep: {billing_note(pod)}')


# -- helpers ------------------------------------------------------------------------------------

def _single_slice(accelerator_type: str):
  from launch import chips  # benchmarks.config (ml_collections), no JAX
  try:
    spec = chips.parse_topology(accelerator_type)
  except ValueError as error:
    raise LaunchError(str(error), exit_code=2) from None
  if spec.num_slices > 1:
    raise LaunchError(f'{accelerator_type} is {spec.num_slices} slices: a TPU VM queued '
                      f'resource here holds one slice; run multi-slice jobs on GKE with '
                      f'`podium launch gke`', exit_code=2)
  return spec


def default_runtime(spec) -> str:
  from launch import gcloud
  version = gcloud.RUNTIME_VERSIONS.get(spec.chip.name)
  if version is None:
    raise LaunchError(f'no default TPU software version for {spec.chip.product}: give '
                      f'--runtime-version (https://cloud.google.com/tpu/docs/runtimes)',
                      exit_code=2)
  return version


def _must(result: Result, what: str) -> Result:
  if not result.ok:
    raise LaunchError(f'{what} failed: {result.error_line()}')
  return result


def _save(pod: Pod, name: str, result: Result) -> Path:
  path = pod.log_dir() / name
  if not pod.dry_run:
    path.write_text(f'$ {shlex.join(result.argv)}\n{result.stdout}{result.stderr}',
                    encoding='utf-8')
  return path


def _echo(line: str) -> None:
  sys.stdout.write(line)
  sys.stdout.flush()


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _list(indices) -> str:
  return preflight._workers(list(indices))  # noqa: SLF001  ('worker 3' / 'workers 0-2')
