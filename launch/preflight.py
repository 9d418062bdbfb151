"""The preflight doctor: every worker is checked before a pod run; one line per failure.

A multi-host run starts only when every host can start it, and the usual ways it cannot
are dull and slow to diagnose on a pod: one worker with other code or another jax/libtpu,
a process from an earlier run still holding the TPU (the next run then hangs at "TPU
backend initialization is taking more than 60 seconds"), fewer training files than hosts
(each host reads its own files), a global batch the chips do not divide, a data path the
VMs cannot read.

Worker side: `python3 -m launch.preflight probe ...`, run from the podium checkout on each
worker, prints one `PODIUM_PREFLIGHT {json}` line: the deployed commit, the jax / jaxlib /
libtpu versions, the processes holding TPU device files, the training files it sees.
`python3 -m launch.preflight gate ...` (GKE: every pod checks itself) prints the failures
and exits 3.
Local side: `analyze` compares the workers' reports and turns each problem into one line
naming the worker(s) and what to do; `static_checks` needs no worker at all.

Only the standard library is imported at module level: the probe runs where nothing is yet
known to work (TensorFlow is imported only to list a gs:// directory).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import fnmatch
import glob
import json
import os
import platform
import socket
import sys
from typing import Iterable, Sequence

MARKER = 'PODIUM_PREFLIGHT '
COMMIT_FILE = '.podium_commit'   # written by `podium launch ... setup` beside the code
# TPU device files: /dev/accel* (v4, v5e, v5p), VFIO groups (v6e and later). A comma-separated
# list of globs in PODIUM_TPU_DEVICES replaces them (other images; tests).
DEVICE_GLOBS = ('/dev/accel*', '/dev/vfio/[0-9]*')
DEVICE_ENV = 'PODIUM_TPU_DEVICES'
GATE_EXIT = 3   # not in xpk's restart-on-exit codes (42, 127-255): a failed check is final


# -- worker side -------------------------------------------------------------------------------

def _versions() -> dict[str, str | None]:
  from importlib import metadata
  found = {}
  for key, dists in (('jax', ('jax',)), ('jaxlib', ('jaxlib',)),
                     ('libtpu', ('libtpu', 'libtpu-nightly'))):
    found[key] = None
    for dist in dists:
      try:
        found[key] = metadata.version(dist)
        break
      except metadata.PackageNotFoundError:
        continue
  return found


def _read_commit(path: str = COMMIT_FILE) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip() or None
  except OSError:
    return None


def _device_globs() -> list[str]:
  custom = os.environ.get(DEVICE_ENV, '')
  return [g for g in custom.split(',') if g] if custom else list(DEVICE_GLOBS)


def tpu_holders(globs: Iterable[str] | None = None, proc: str = '/proc') -> list[dict]:
  """Processes (other than this one) with a TPU device file open: pid, device, command."""
  devices = {os.path.realpath(p) for g in (globs or _device_globs()) for p in glob.glob(g)}
  if not devices:
    return []
  holders = []
  me = os.getpid()
  for entry in os.listdir(proc):
    if not entry.isdigit() or int(entry) == me:
      continue
    fd_dir = os.path.join(proc, entry, 'fd')
    try:
      fds = os.listdir(fd_dir)
    except OSError:   # gone, or another user's process
      continue
    held = set()
    for fd in fds:
      try:
        target = os.readlink(os.path.join(fd_dir, fd))
      except OSError:
        continue
      if target in devices:
        held.add(target)
    if held:
      try:
        with open(os.path.join(proc, entry, 'cmdline'), 'rb') as f:
          command = f.read().replace(b'\0', b' ').decode(errors='replace').strip()
      except OSError:
        command = '?'
      holders.append({'pid': int(entry), 'devices': sorted(held), 'command': command[:160]})
  return sorted(holders, key=lambda h: h['pid'])


def data_files(directory: str, patterns: Sequence[str]) -> dict:
  """The training files under `directory` that the first matching pattern names, and
  whether one of them can be read."""
  report = {'dir': directory, 'pattern': patterns[0] if patterns else '', 'files': 0,
            'error': None}
  try:
    if directory.startswith('gs://'):
      import tensorflow as tf  # only for GCS: listing gs:// needs TF's file system
      names = [n.rstrip('/') for n in tf.io.gfile.listdir(directory)]
      opener = lambda path: tf.io.gfile.GFile(path, 'rb')  # noqa: E731
    else:
      names = os.listdir(directory)
      opener = lambda path: open(path, 'rb')  # noqa: E731
    for pattern in patterns:
      files = sorted(n for n in names if fnmatch.fnmatch(n, pattern) and not n.startswith('.'))
      if files:
        report.update(pattern=pattern, files=len(files))
        with opener(directory.rstrip('/') + '/' + files[0]) as f:
          f.read(1)
        break
  except Exception as error:  # noqa: BLE001  (any failure to list or read is the finding)
    report['error'] = f'{type(error).__name__}: {error}'.strip()[:300]
  return report


def probe(data_dir: str = '', patterns: Sequence[str] = ()) -> dict:
  report = {'host': socket.gethostname(), 'python': platform.python_version(),
            'commit': _read_commit(), 'versions': _versions(), 'tpu_holders': tpu_holders()}
  if data_dir:
    report['data'] = data_files(data_dir, patterns)
  return report


# -- local side --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Expect:
  """What every worker should report, and the commands the advice names."""
  commit: str | None             # the local checkout's HEAD; None: the workers need only agree
  hosts: int                     # processes of the run: one per worker
  min_files: int = 0             # training files needed (hosts, or data.input_shards)
  need_libtpu: bool = True
  setup_hint: str = 'podium launch tpu-vm setup'
  stop_hint: str = 'podium launch tpu-vm stop'


@dataclasses.dataclass(frozen=True)
class WorkerOutput:
  worker: int
  returncode: int
  stdout: str
  stderr: str = ''


def parse(output: WorkerOutput) -> dict | None:
  for line in output.stdout.splitlines():
    if line.startswith(MARKER):
      try:
        return json.loads(line[len(MARKER):])
      except json.JSONDecodeError:
        return None
  return None


def _workers(ids: Sequence[int]) -> str:
  """[0, 1, 2, 5] -> 'workers 0-2, 5'; [3] -> 'worker 3'."""
  ids = sorted(ids)
  if len(ids) == 1:
    return f'worker {ids[0]}'
  spans, start = [], ids[0]
  for prev, cur in zip(ids, ids[1:] + [None]):
    if cur != prev + 1:
      spans.append(f'{start}' if start == prev else f'{start}-{prev}')
      start = cur
  return 'workers ' + ', '.join(spans)


def _stack(versions: dict) -> str:
  return ', '.join(f'{k} {versions.get(k) or "missing"}' for k in ('jax', 'jaxlib', 'libtpu'))


def _last_line(output: WorkerOutput) -> str:
  lines = [l.strip() for l in (output.stderr + '\n' + output.stdout).splitlines() if l.strip()]
  return lines[-1][:200] if lines else 'no output'


def analyze(outputs: Sequence[WorkerOutput], expect: Expect) -> list[str]:
  """One line per problem: which worker(s), what is wrong, what to do. Empty: all is well."""
  problems: dict[str, list[int]] = collections.OrderedDict()

  def add(message: str, worker: int) -> None:
    problems.setdefault(message, []).append(worker)

  reports = {}
  for out in outputs:
    report = parse(out)
    if report is None:
      last = _last_line(out)
      if out.returncode == 255:
        add(f'cannot be reached (ssh exit 255: {last}): check that the TPU VM is READY '
            f'(podium launch tpu-vm status) and try again', out.worker)
      elif 'No such file or directory' in last or 'No module named' in last:
        add(f'has no podium checkout to check ({last}): run `{expect.setup_hint}`', out.worker)
      else:
        add(f'the preflight did not run (exit {out.returncode}: {last})', out.worker)
      continue
    reports[out.worker] = report

  commits = collections.Counter(r.get('commit') for r in reports.values() if r.get('commit'))
  want_commit = expect.commit or (commits.most_common(1)[0][0] if commits else None)
  stacks = collections.Counter(_stack(r.get('versions', {})) for r in reports.values())
  common_stack = stacks.most_common(1)[0][0] if stacks else ''
  for worker, report in sorted(reports.items()):
    commit = report.get('commit')
    if not commit:
      add(f'has no podium commit recorded (not installed by podium launch): run '
          f'`{expect.setup_hint}`', worker)
    elif want_commit and commit != want_commit:
      where = 'the local checkout is at' if expect.commit else 'most workers have'
      add(f'runs podium {commit[:12]} but {where} {want_commit[:12]}: run '
          f'`{expect.setup_hint}` so every worker runs the same code', worker)
    versions = report.get('versions', {})
    missing = [k for k in ('jax', 'jaxlib') + (('libtpu',) if expect.need_libtpu else ())
               if not versions.get(k)]
    if missing:
      add(f'{" and ".join(missing)} not installed: run `{expect.setup_hint}` (it installs '
          f"podium with its '[tpu]' extra)", worker)
    elif len(stacks) > 1 and _stack(versions) != common_stack:
      add(f'has {_stack(versions)} but the other workers have {common_stack}: run '
          f'`{expect.setup_hint}` so every worker installs the same versions', worker)
    holders = report.get('tpu_holders') or []
    if holders:
      first = holders[0]
      pids = ', '.join(str(h['pid']) for h in holders[:4])
      add(f'process {pids} holds the TPU ({first["devices"][0]}: `{first["command"][:80]}`); '
          f'with it the run hangs at "TPU backend initialization is taking more than 60 '
          f'seconds": run `{expect.stop_hint}` (it stops podium runs on every worker) or '
          f'`kill {pids}` on that worker', worker)
    data = report.get('data')
    if data:
      where, pattern = data['dir'], data['pattern']
      if data.get('error'):
        add(f'cannot read {where} ({data["error"]}): check the path and that the VM\'s '
            f'service account may read it (gcloud storage ls {where})', worker)
      elif data['files'] == 0:
        add(f'finds no training files matching {pattern!r} in {where}: set data.dir to the '
            f'folder that holds them', worker)
      elif data['files'] < expect.min_files:
        add(f'finds {data["files"]} training files ({pattern!r}) in {where} but the run needs '
            f'at least {expect.min_files}, one per host (data.input_shards): write the data '
            f'in more files', worker)
  return [f'{_workers(ws)}: {message}' for message, ws in problems.items()]


def batch_problems(global_batch: int, eval_batch: int, devices: int, mesh: dict,
                   dcn_mesh: dict, where: str) -> list[str]:
  """The recipe's batches must split evenly over the devices the batch is sharded on."""
  tensor = max(int(mesh.get('tensor', 1)), 1) * max(int(dcn_mesh.get('tensor', 1)), 1)
  shards = devices // tensor if devices % tensor == 0 else devices
  lines = []
  for key, value in (('train.global_batch_size', global_batch),
                     ('train.eval_batch_size', eval_batch)):
    if value and value % shards:
      fix = (value // shards + 1) * shards
      lines.append(f'recipe: {key}={value} is not divisible by the {shards} chips of {where} '
                   f'that split the batch: use a multiple of {shards} (--set {key}={fix})')
  return lines


def summary(outputs: Sequence[WorkerOutput]) -> str:
  """'8 workers: podium 1a2b3c4d5e6f, jax 0.6.2, jaxlib 0.6.2, libtpu 0.0.17' when they agree."""
  reports = [r for r in map(parse, outputs) if r]
  if not reports:
    return 'no worker answered'
  lines = collections.Counter(
      f'podium {(r.get("commit") or "?")[:12]}, {_stack(r.get("versions", {}))}'
      for r in reports)
  return '; '.join(f'{n} worker{"s" if n > 1 else ""}: {line}' for line, n in lines.items())


# -- command line (worker side) ----------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python3 -m launch.preflight')
  sub = parser.add_subparsers(dest='mode', required=True)
  for mode in ('probe', 'gate'):
    p = sub.add_parser(mode)
    p.add_argument('--data-dir', default='')
    p.add_argument('--pattern', action='append', default=[])
    if mode == 'gate':
      p.add_argument('--expect-commit', default='')
      p.add_argument('--hosts', type=int, default=1)
      p.add_argument('--min-files', type=int, default=0)
  args = parser.parse_args(argv)
  report = probe(args.data_dir, args.pattern)
  print(MARKER + json.dumps(report, sort_keys=True), flush=True)
  if args.mode == 'probe':
    return 0
  expect = Expect(commit=args.expect_commit or None, hosts=args.hosts,
                  min_files=args.min_files, setup_hint='rebuild the image / resubmit',
                  stop_hint='delete the pod holding the TPU')
  worker = int(os.environ.get('TPU_WORKER_ID', '0') or 0)
  problems = analyze([WorkerOutput(worker, 0, MARKER + json.dumps(report))], expect)
  for line in problems:
    print(f'podium preflight: {line}', file=sys.stderr, flush=True)
  return GATE_EXIT if problems else 0


if __name__ == '__main__':
  sys.exit(main())
