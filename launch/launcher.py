"""`podium launch`: the command line of launch/tpu_vm.py and launch/gke.py.

  podium launch tpu-vm create NAME --zone Z --accelerator-type v4-64 [--spot|--reserved|--best-effort]
  podium launch tpu-vm setup NAME --zone Z [--allow-dirty]
  podium launch tpu-vm preflight NAME BENCHMARK --recipe R [--set k=v ...] --zone Z
  podium launch tpu-vm run NAME BENCHMARK --recipe R [--set k=v ...] --zone Z
  podium launch tpu-vm fetch | stop | status | delete NAME --zone Z
  podium launch tpu-vm up-run-down NAME BENCHMARK --recipe R [--set k=v ...] --zone Z [--spot]
  podium launch gke BENCHMARK --recipe R --cluster C --workload W --results gs://B/P

Every action takes --dry-run (print the exact commands, run none). JAX is never imported:
recipes are resolved in a child process (launch/recipe_info.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.gcloud import CAPACITY, LaunchError, Runner, TpuVm

TPU_ACTIONS = {
    'create': 'request a slice (queued resource) and wait until it is ACTIVE',
    'setup': 'put the checkout\'s HEAD on every worker and install it',
    'preflight': 'check every worker for a recipe: code, versions, TPU holders, data, batch',
    'run': 'preflight, then podium run on all workers; worker 0 streamed, all logged',
    'fetch': 'copy worker 0\'s results (MLPerf logs, records) here',
    'stop': 'stop podium runs on every worker (SIGTERM, then SIGKILL)',
    'status': 'the queued resource\'s state and what is billed',
    'delete': 'delete the queued resource and its TPU VMs',
    'up-run-down': 'create, setup, run, fetch, delete: one recipe from nothing to results',
}
NEEDS_RECIPE = ('preflight', 'run', 'up-run-down')


def add_arguments(parser: argparse.ArgumentParser) -> None:
  targets = parser.add_subparsers(dest='target', required=True, metavar='{tpu-vm,gke}')
  tpu = targets.add_parser('tpu-vm', help='a Cloud TPU VM slice through gcloud queued resources')
  actions = tpu.add_subparsers(dest='action', required=True, metavar='ACTION')
  for action, help_text in TPU_ACTIONS.items():
    p = actions.add_parser(action, help=help_text, description=help_text)
    p.add_argument('name', metavar='NAME', help='queued resource (and TPU VM) name, e.g. '
                   'podium-v4-64')
    if action in NEEDS_RECIPE:
      _recipe_args(p)
    p.add_argument('--zone', required=True, help='e.g. us-central2-b')
    p.add_argument('--project', default=None, help="default: gcloud's configured project")
    _common(p)
    p.add_argument('--remote-dir', default='podium',
                   help='the code on every worker, relative to the home folder (default: podium)')
    p.add_argument('--remote-output', default='podium_runs',
                   help='results on worker 0, relative to the home folder (default: podium_runs)')
    p.add_argument('--python', default='python3', help='the workers\' Python (default: python3)')
    if action in ('create', 'up-run-down'):
      p.add_argument('--accelerator-type', default=None, required=action == 'create',
                     help='e.g. v4-64, v5p-128, v5litepod-16, v6e-64' +
                     (" (default: the recipe's topology)" if action == 'up-run-down' else ''))
      p.add_argument('--runtime-version', default=None,
                     help='TPU software version (default per generation: v4 '
                     'tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e '
                     'v2-alpha-tpuv6e)')
      capacity = p.add_mutually_exclusive_group()
      for kind in CAPACITY[1:]:
        capacity.add_argument(f'--{kind}', dest='capacity', action='store_const', const=kind,
                              help=f'{kind} capacity' + (' (gcloud alpha)' if kind ==
                                                         'best-effort' else ''))
      p.set_defaults(capacity='on-demand')
      p.add_argument('--timeout', type=float, default=360.0, metavar='MINUTES',
                     help='how long to wait for the slice to become ACTIVE (default 360)')
    if action in ('setup', 'up-run-down'):
      p.add_argument('--allow-dirty', action='store_true',
                     help='ship HEAD even though tracked files have uncommitted changes')
    if action in ('run', 'up-run-down'):
      p.add_argument('--skip-preflight', action='store_true',
                     help='start without checking the workers (the batch is still checked)')
      p.add_argument('--grace', type=float, default=60.0, metavar='SECONDS',
                     help='after one worker ends, how long the others may take (default 60)')
      p.add_argument('--sync-minutes', type=float, default=0.0,
                     help="copy worker 0's results folder here every N minutes during the "
                     'run, so a preempted run can resume on a new slice (default: off; 10 '
                     'with --retry-preempted)')
    if action == 'run':
      p.add_argument('--resume-from', type=Path, default=None, metavar='DIR',
                     help='put this fetched results folder back on worker 0 first (resume a '
                     'run whose slice was preempted)')
    if action in ('fetch', 'up-run-down'):
      p.add_argument('--dest', type=Path, default=None,
                     help='where the results go (default: <logs>/NAME/results)')
    if action == 'up-run-down':
      p.add_argument('--keep', action='store_true', help='do not delete the slice at the end')
      p.add_argument('--retry-preempted', type=int, default=0, metavar='N',
                     help='after a preemption, recreate the slice and resume up to N times '
                     '(needs checkpoint.dir=gs://...)')

  gke = targets.add_parser('gke', help='a GKE cluster\'s TPU slices (one or several) through xpk')
  _recipe_args(gke)
  gke.add_argument('--cluster', required=True)
  gke.add_argument('--workload', required=True, help='the xpk workload (JobSet) name')
  gke.add_argument('--results', required=True, metavar='GS_URI',
                   help='gs:// folder the hosts upload their results to (<results>/<workload>)')
  gke.add_argument('--project', default=None)
  gke.add_argument('--zone', default=None)
  gke.add_argument('--topology', default=None,
                   help="slices, e.g. v5p-256 or 2xv5p-256 (default: the recipe's topology)")
  gke.add_argument('--base-docker-image', default='python:3.11',
                   help='image the checkout is layered onto; one with podium\'s dependencies '
                   'installed starts faster (default: python:3.11)')
  gke.add_argument('--max-restarts', type=int, default=0,
                   help='JobSet restarts on exit 42/127-255 (143: preempted; with checkpoints '
                   'the run resumes)')
  gke.add_argument('--priority', default='medium',
                   choices=['very-low', 'low', 'medium', 'high', 'very-high'])
  gke.add_argument('--no-wait', action='store_true', help='submit and return')
  gke.add_argument('--timeout', type=float, default=7 * 24 * 60.0, metavar='MINUTES',
                   help='how long to wait for the workload to end (default: a week)')
  gke.add_argument('--allow-dirty', action='store_true')
  gke.add_argument('--dest', type=Path, default=None)
  _common(gke)


def _recipe_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('benchmark', metavar='BENCHMARK')
  p.add_argument('--recipe', required=True)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='override a recipe field; passed to podium run on every worker')


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument('--dry-run', action='store_true', help='print the exact commands, run none')
  p.add_argument('-v', '--verbose', action='store_true', help='print every command it runs')
  p.add_argument('--logs', type=Path, default=Path('runs/launch'),
                 help='local folder for logs and fetched results (default: runs/launch)')


def main(args: argparse.Namespace) -> int:
  try:
    return _dispatch(args)
  except LaunchError as error:
    print(f'podium launch: error: {error}', file=sys.stderr, flush=True)
    return error.exit_code


def _dispatch(args: argparse.Namespace) -> int:
  from launch import recipe_info
  runner = Runner(dry_run=args.dry_run, verbose=args.verbose)
  if args.dry_run:
    print('dry run: the commands podium would run, in order; none is run')
  info = None
  if getattr(args, 'benchmark', None):
    info = recipe_info.resolve(args.benchmark, args.recipe, args.set)
  if args.target == 'gke':
    from launch import gke
    session = gke.Gke(gke.Xpk(args.cluster, args.workload, args.project, args.zone), runner,
                      logs_root=args.logs)
    return gke.launch(session, info, results=args.results, topology=args.topology or '',
                      base_image=args.base_docker_image, max_restarts=args.max_restarts,
                      priority=args.priority, wait=not args.no_wait,
                      timeout_s=int(args.timeout * 60), allow_dirty=args.allow_dirty,
                      dest=args.dest)

  from launch import tpu_vm
  pod = tpu_vm.Pod(TpuVm(args.name, args.zone, args.project), runner,
                   remote_dir=args.remote_dir, remote_output=args.remote_output,
                   python=args.python, logs_root=args.logs)
  if hasattr(args, 'grace'):
    pod.grace_s = args.grace
  if getattr(args, 'dest', None) is not None:
    pod.results_path = args.dest
  action = args.action
  if action == 'create':
    tpu_vm.create(pod, args.accelerator_type, args.runtime_version, args.capacity,
                  args.timeout * 60)
    return 0
  if action == 'setup':
    tpu_vm.setup(pod, allow_dirty=args.allow_dirty)
    return 0
  if action == 'preflight':
    workers, accelerator = tpu_vm.node_workers(pod, info.topology)
    problems = tpu_vm.run_preflight(pod, info, workers, accelerator or info.topology)
    for line in problems:
      print(f'preflight: {line}')
    return 2 if problems else 0
  if action == 'run':
    outcome = tpu_vm.run(pod, info, skip_preflight=args.skip_preflight,
                         sync_s=args.sync_minutes * 60, resume_from=args.resume_from)
    return outcome.exit_code
  if action == 'fetch':
    tpu_vm.fetch(pod, args.dest)
    return 0
  if action == 'stop':
    return 0 if tpu_vm.stop(pod) else 1
  if action == 'status':
    return tpu_vm.show_status(pod)
  if action == 'delete':
    tpu_vm.delete(pod)
    return 0
  if action == 'up-run-down':
    return tpu_vm.up_run_down(
        pod, info, accelerator_type=args.accelerator_type or '',
        runtime_version=args.runtime_version, capacity=args.capacity,
        timeout_s=args.timeout * 60, allow_dirty=args.allow_dirty, keep=args.keep,
        retry_preempted=args.retry_preempted, sync_s=args.sync_minutes * 60,
        skip_preflight=args.skip_preflight)
  raise LaunchError(f'unknown action {action!r}', exit_code=2)
