"""`podium launch gke`: the same recipe on a GKE cluster's TPU slices, through xpk.

xpk (https://github.com/AI-Hypercomputer/xpk) runs a JobSet with one container per TPU VM
host, on one or more slices (multi-slice over the data-center network). podium uses xpk's
default image flow (xpk docs/usage/docker.md): `--script-dir`, here the checkout's HEAD
exported with `git archive` plus `.podium_commit`, is layered onto `--base-docker-image`,
and `--command` runs in that folder on every host:

  download the workload's earlier results (a restarted pod resumes from its checkpoint)
  && pip install -e '.[tpu]'                        (fast when the base image has the deps)
  && python3 -m launch.preflight gate ...           (commit, libtpu, data files, TPU holders)
  || exit; python3 -m launch.cli run ... --output runs   (SIGTERM passed on to it)
  ; upload runs/ to --results gs://.../<workload>   (the first host; pods' disks are gone after)

xpk wraps the command in `bash -c` and restarts the JobSet (--max-restarts) on exit codes 42
and 127-255, so podium's 143 after SIGTERM (a preemption; the run saved a checkpoint)
restarts and resumes, while a failed preflight (exit 3) or a bad recipe (2) fails at once.
Commands: xpk's own help (xpk 1.16) and docs/usage/workloads.md.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from launch import preflight, source
from launch.gcloud import LaunchError, Runner, check_name, kill_group, remote
from launch.recipe_info import RecipeInfo

OUTPUT = 'runs'   # podium run --output inside the container (/app/runs)


@dataclasses.dataclass(frozen=True)
class Xpk:
  cluster: str
  workload: str
  project: str | None = None
  zone: str | None = None
  xpk: str = 'xpk'

  def __post_init__(self):
    check_name(self.cluster, 'cluster name')
    check_name(self.workload, 'workload name')

  def _where(self) -> list[str]:
    return ([f'--cluster={self.cluster}'] + ([f'--project={self.project}'] if self.project else [])
            + ([f'--zone={self.zone}'] if self.zone else []))

  def create(self, command: str, tpu_type: str, num_slices: int, script_dir: str | os.PathLike,
             base_image: str, max_restarts: int = 0, priority: str = 'medium') -> list[str]:
    return [self.xpk, 'workload', 'create', *self._where(), f'--workload={self.workload}',
            f'--tpu-type={tpu_type}', f'--num-slices={num_slices}',
            f'--script-dir={os.fspath(script_dir)}', f'--base-docker-image={base_image}',
            f'--max-restarts={max_restarts}', f'--priority={priority}', f'--command={command}']

  def wait(self, timeout_s: int) -> list[str]:
    # Exit status: 0 finished and succeeded, 124 timed out, 125 finished but failed, 1 other.
    return [self.xpk, 'workload', 'list', *self._where(),
            f'--wait-for-job-completion={self.workload}', f'--timeout={int(timeout_s)}']

  def delete(self) -> list[str]:
    # --workload always: without it xpk deletes every workload of the cluster.
    return [self.xpk, 'workload', 'delete', *self._where(), f'--workload={self.workload}',
            '--force']


def slices(topology: str):
  """(tpu type of one slice, number of slices, TopologySpec) for '2xv5p-256' and the like."""
  from launch import chips
  try:
    spec = chips.parse_topology(topology)
  except ValueError as error:
    raise LaunchError(str(error), exit_code=2) from None
  unit = 2 if spec.chip.name_counts_cores else 1
  return f'{spec.chip.accelerator_prefixes[0]}-{spec.chips_per_slice * unit}', spec.num_slices, spec


def static_checks(info: RecipeInfo, topology: str) -> list[str]:
  _, num_slices, spec = slices(topology)
  problems = preflight.batch_problems(info.global_batch_size, info.eval_batch_size,
                                      spec.num_devices, info.mesh, info.dcn_mesh,
                                      f'{topology} ({spec.num_devices} devices)')
  split = 1
  for value in info.dcn_mesh.values():
    split *= max(int(value), 1)
  if split != num_slices:
    problems.append(f'recipe: dcn_mesh {info.dcn_mesh} spans {split} slice(s) but {topology} '
                    f'has {num_slices}: --set dcn_mesh.data={num_slices} (and mesh per slice)')
  return problems


def pod_command(info: RecipeInfo, commit: str, hosts: int, results: str,
                python: str = 'python3') -> str:
  """What every host runs in /app; values are shlex-quoted, so --set values stay literal.

  xpk forwards SIGTERM to the shell running this; the trap passes it on to podium run (which
  saves a checkpoint and exits 143), and the results are uploaded whatever the exit status.
  """
  target = results.rstrip('/')
  gate = [python, '-m', 'launch.preflight', 'gate', '--expect-commit', commit,
          '--hosts', str(hosts), '--min-files', str(max(hosts, info.input_shards))]
  if info.data is not None:
    gate += ['--data-dir', info.data.dir]
    for pattern in info.data.patterns:
      gate += ['--pattern', pattern]
  run = [python, '-m', 'launch.cli', 'run', info.benchmark, '--recipe', info.recipe]
  for assignment in info.sets:
    run += ['--set', assignment]
  run += ['--output', OUTPUT]
  prepare = remote([python, '-m', 'launch.gke', 'download', target, OUTPUT],
                   [python, '-m', 'pip', 'install', '-e', '.[tpu]'], gate)
  return '; '.join([
      f'{prepare} || exit $?',
      f'{shlex.join(run)} & pid=$!',
      "trap 'kill -TERM $pid' TERM",
      'wait $pid; rc=$?',
      'while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done',
      shlex.join([python, '-m', 'launch.gke', 'upload', OUTPUT, target]),
      'exit $rc'])


@dataclasses.dataclass
class Gke:
  xpk: Xpk
  runner: Runner = dataclasses.field(default_factory=Runner)
  out: Callable[[str], None] = print
  stream: Callable[[str], None] = lambda line: (sys.stdout.write(line), sys.stdout.flush())
  repo: Path = source.ROOT
  gcloud: str = 'gcloud'
  logs_root: Path = Path('runs/launch')


def launch(gke: Gke, info: RecipeInfo, *, results: str, topology: str = '',
           base_image: str = 'python:3.11', max_restarts: int = 0, priority: str = 'medium',
           wait: bool = True, timeout_s: int = 7 * 24 * 3600, allow_dirty: bool = False,
           dest: Path | None = None) -> int:
  topology = topology or info.topology
  if not topology:
    raise LaunchError(f'recipe {info.recipe} names no TPU topology: give --topology (e.g. '
                      f'v5p-256, or 2xv5p-256 for two slices)', exit_code=2)
  if not results.startswith('gs://'):
    raise LaunchError(f'--results {results!r}: give a gs:// folder; a pod\'s disk goes with '
                      f'the pod, so the hosts upload their results there', exit_code=2)
  tpu_type, num_slices, spec = slices(topology)
  problems = static_checks(info, topology)
  if problems:
    raise LaunchError('\n'.join(problems) + '\nnothing was submitted', exit_code=2)
  if info.data is None and info.data_note:
    gke.out(f'preflight: no data check ({info.data_note})')
  commit = source.check_clean(gke.repo, allow_dirty, gke.out)
  target = f'{results.rstrip("/")}/{gke.xpk.workload}'
  command = pod_command(info, commit, spec.num_hosts, target)
  with tempfile.TemporaryDirectory(prefix='podium-gke-') as tmp:
    script_dir = Path(tmp) / 'podium'
    archive = Path(tmp) / 'podium.tar.gz'
    result = gke.runner.run(source.archive_argv(gke.repo, archive))
    if not result.ok:
      raise LaunchError(f'git archive failed: {result.error_line()}')
    if not gke.runner.dry_run:
      script_dir.mkdir()
      with tarfile.open(archive) as tar:   # our own git archive of HEAD
        if hasattr(tarfile, 'data_filter'):
          tar.extractall(script_dir, filter='data')
        else:
          tar.extractall(script_dir)
      (script_dir / preflight.COMMIT_FILE).write_text(commit + '\n')
    gke.out(f'submitting {gke.xpk.workload}: {info.benchmark}/{info.recipe} at {commit[:12]} on '
            f'{num_slices} x {tpu_type} ({spec.num_hosts} hosts) in cluster {gke.xpk.cluster}')
    code = _stream(gke, gke.xpk.create(command, tpu_type, num_slices, script_dir, base_image,
                                       max_restarts, priority))
  if code:
    raise LaunchError(f'xpk workload create failed (exit {code}): nothing of '
                      f'{gke.xpk.workload} should be running; check with `xpk workload list '
                      f'--cluster={gke.xpk.cluster}`')
  if not wait:
    gke.out(f'submitted. Wait: `{shlex.join(gke.xpk.wait(timeout_s))}`; stop: '
            f'`{shlex.join(gke.xpk.delete())}`; results: {target}')
    return 0
  try:
    code = _stream(gke, gke.xpk.wait(timeout_s))
  except KeyboardInterrupt:
    gke.out(f'interrupted: deleting {gke.xpk.workload} so it stops holding the slices')
    gke.runner.run(gke.xpk.delete())
    raise
  if gke.runner.dry_run:
    fetch(gke, target, dest)
    return 0
  billed = (f'the TPU node pools of cluster {gke.xpk.cluster} stay billed until you delete '
            f'them (xpk cluster delete --cluster={gke.xpk.cluster})')
  if code == 124:
    gke.out(f'{gke.xpk.workload} is still running after {timeout_s} s: it holds its slices '
            f'until it ends or `{shlex.join(gke.xpk.delete())}`; {billed}')
    return 124
  if code == 0:
    gke.out(f'{gke.xpk.workload} finished successfully; nothing of it is running; {billed}')
  else:
    gke.out(f'{gke.xpk.workload} FAILED (xpk exit {code}): its pods have ended; the hosts\' '
            f'output is in the pod logs (xpk printed the link); {billed}')
  try:
    fetch(gke, target, dest)
  except LaunchError as error:
    gke.out(f'fetching the results FAILED: {error}')
  return 0 if code == 0 else 1


def fetch(gke: Gke, target: str, dest: Path | None = None) -> Path:
  dest = Path(dest or gke.logs_root / gke.xpk.workload / 'results')
  if not gke.runner.dry_run:
    dest.mkdir(parents=True, exist_ok=True)
  result = gke.runner.run([gke.gcloud, 'storage', 'cp', '--recursive', f'{target}/*',
                           os.fspath(dest)])
  if not result.ok:
    raise LaunchError(f'copying {target} failed: {result.error_line()}')
  if not gke.runner.dry_run:
    logs = sorted(dest.glob('*/results/*/*/result_*.txt'))
    gke.out(f'fetched {target} into {dest}: {len(logs)} MLPerf log(s)' +
            ''.join(f'\n  {p}' for p in logs) +
            f'\ncheck and score them: podium check {dest}; podium score {dest}')
  return dest


def _stream(gke: Gke, argv: Sequence[str]) -> int:
  proc = gke.runner.start(argv)
  if proc is None:
    return 0
  try:
    for line in proc.stdout:
      gke.stream(line)
    return proc.wait()
  except BaseException:
    kill_group(proc)
    raise


# -- inside the container ----------------------------------------------------------------------

def _first_host() -> bool:
  """Process 0 writes the results: host 0 of slice 0 (GKE sets both variables)."""
  return (os.environ.get('TPU_WORKER_ID', '0') in ('', '0')
          and os.environ.get('MEGASCALE_SLICE_ID', '0') in ('', '0'))


class _LocalFs:
  """The few tf.io.gfile calls `copy_tree` makes, for local paths."""
  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  walk = staticmethod(os.walk)

  @staticmethod
  def makedirs(path):
    os.makedirs(path, exist_ok=True)

  @staticmethod
  def copy(src, dst, overwrite=True):
    shutil.copyfile(src, dst)


def _fs(*paths: str):
  if any(p.startswith('gs://') for p in paths):
    import tensorflow as tf  # GCS needs TF's file system; the image has it (a podium dependency)
    return tf.io.gfile
  return _LocalFs


def copy_tree(src: str, dst: str, skip: Sequence[str] = ('checkpoints',)) -> int:
  """Copies the files under `src` to `dst` (local or gs://), leaving out folders in `skip`."""
  fs = _fs(src, dst)
  if not fs.isdir(src):
    return 0
  copied = 0
  for folder, dirs, files in fs.walk(src):
    dirs[:] = [d for d in dirs if d.rstrip('/') not in skip]
    rel = os.path.relpath(folder, src) if not src.startswith('gs://') else \
        folder[len(src.rstrip('/')):].lstrip('/')
    target = dst.rstrip('/') + ('/' + rel if rel not in ('', '.') else '')
    fs.makedirs(target)
    for name in files:
      fs.copy(folder.rstrip('/') + '/' + name, target + '/' + name, overwrite=True)
      copied += 1
  return copied


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog='python3 -m launch.gke')
  parser.add_argument('action', choices=['upload', 'download'])
  parser.add_argument('src')
  parser.add_argument('dst')
  args = parser.parse_args(argv)
  if args.action == 'upload' and not _first_host():
    print('podium: results are uploaded by host 0 of slice 0', flush=True)
    return 0
  copied = copy_tree(args.src, args.dst)
  print(f'podium: {args.action}ed {copied} file(s) from {args.src} to {args.dst}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
