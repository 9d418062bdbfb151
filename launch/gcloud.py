"""gcloud command lines, built as argv lists, and the one place that runs local commands.

Nothing here goes through a local shell: every command is an argv list handed to
`subprocess` as it is. A command that runs on a TPU VM is one string, the value of
`gcloud ... tpu-vm ssh --command=...`, which the worker's login shell interprets (as with
plain ssh); `remote()` builds it from argv lists with `shlex.join`, so a recipe name or a
`--set` value is one literal word there whatever characters it holds.

Command lines follow the gcloud reference (checked against gcloud 528's parser):
  queued-resources create  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create
  tpu-vm ssh / scp         https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh
  queued-resources delete  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/delete
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
from typing import Callable, Sequence

# Cloud TPU resource names: lowercase letters, digits and hyphens, starting with a letter.
_RESOURCE_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')

# --best-effort exists only in the v2alpha1 API, hence only in `gcloud alpha` (the GA
# command rejects it: "--best-effort flag is available in one or more alternate release
# tracks"); --spot and --reserved are GA.
CAPACITY = ('on-demand', 'spot', 'reserved', 'best-effort')

# `gcloud compute tpus` runtime versions for JAX, per TPU generation
# (https://cloud.google.com/tpu/docs/runtimes, "PyTorch and JAX").
RUNTIME_VERSIONS = {
    'v4': 'tpu-ubuntu2204-base',
    'v5e': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}


class LaunchError(Exception):
  """A launch step failed; the message says what happened, what is left, what to do."""

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code


def check_name(name: str, what: str = 'TPU name') -> str:
  if not isinstance(name, str) or not _RESOURCE_NAME.fullmatch(name):
    raise LaunchError(f'{what} {name!r} is not valid: use lowercase letters, digits and '
                      f'hyphens, starting with a letter, at most 63 characters (e.g. '
                      f'podium-v4-64)', exit_code=2)
  return name


def remote(*commands: Sequence[str] | str) -> str:
  """One shell command line for a worker: each argv list quoted with shlex.join, joined by
  '&&'. A plain str is an operator-free fragment written by podium itself (never user data)."""
  parts = [c if isinstance(c, str) else shlex.join([str(a) for a in c]) for c in commands]
  return ' && '.join(parts)


@dataclasses.dataclass(frozen=True)
class TpuVm:
  """One queued resource holding one TPU VM slice (node id = queued-resource name)."""
  name: str
  zone: str
  project: str | None = None
  gcloud: str = 'gcloud'

  def __post_init__(self):
    check_name(self.name)
    if not self.zone:
      raise LaunchError('give the zone: --zone us-central2-b (TPU zones: '
                        'https://cloud.google.com/tpu/docs/regions-zones)', exit_code=2)

  def _where(self) -> list[str]:
    return [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])

  def create(self, accelerator_type: str, runtime_version: str,
             capacity: str = 'on-demand') -> list[str]:
    if capacity not in CAPACITY:
      raise LaunchError(f'capacity {capacity!r}; valid: {", ".join(CAPACITY)}', exit_code=2)
    track = ['alpha'] if capacity == 'best-effort' else []
    argv = [self.gcloud, *track, 'compute', 'tpus', 'queued-resources', 'create', self.name,
            f'--node-id={self.name}', f'--accelerator-type={accelerator_type}',
            f'--runtime-version={runtime_version}', *self._where()]
    if capacity != 'on-demand':
      argv.append(f'--{capacity}')
    return argv

  def describe_queued(self) -> list[str]:
    return [self.gcloud, 'compute', 'tpus', 'queued-resources', 'describe', self.name,
            *self._where(), '--format=json']

  def describe_node(self) -> list[str]:
    return [self.gcloud, 'compute', 'tpus', 'tpu-vm', 'describe', self.name, *self._where(),
            '--format=json']

  def ssh(self, command: str, worker: int | str) -> list[str]:
    # --quiet: no prompt (ssh key creation) can stall a non-interactive run.
    return [self.gcloud, 'compute', 'tpus', 'tpu-vm', 'ssh', self.name, *self._where(),
            f'--worker={worker}', '--quiet', f'--command={command}']

  def scp_to(self, local: str | os.PathLike, remote_path: str,
             worker: int | str = 'all') -> list[str]:
    return [self.gcloud, 'compute', 'tpus', 'tpu-vm', 'scp', os.fspath(local),
            f'{self.name}:{remote_path}', *self._where(), f'--worker={worker}', '--quiet']

  def scp_from(self, remote_path: str, local: str | os.PathLike,
               worker: int | str = 0) -> list[str]:
    return [self.gcloud, 'compute', 'tpus', 'tpu-vm', 'scp', f'{self.name}:{remote_path}',
            os.fspath(local), *self._where(), f'--worker={worker}', '--quiet']

  def delete(self) -> list[str]:
    # --force deletes the TPU VMs with the request; --quiet answers the confirmation prompt.
    return [self.gcloud, 'compute', 'tpus', 'queued-resources', 'delete', self.name,
            *self._where(), '--force', '--quiet']

  def podium(self, action: str, *extra: str) -> str:
    """The podium command a user types for `action` on this TPU (for messages)."""
    project = [f'--project={self.project}'] if self.project else []
    return shlex.join(['podium', 'launch', 'tpu-vm', action, self.name, f'--zone={self.zone}',
                       *project, *extra])


@dataclasses.dataclass
class Result:
  argv: list[str]
  returncode: int
  stdout: str = ''
  stderr: str = ''

  @property
  def ok(self) -> bool:
    return self.returncode == 0

  def error_line(self) -> str:
    """gcloud's own error sentence ("ERROR: (gcloud...) QUOTA: ..."), else the last line."""
    lines = [l.strip() for l in (self.stderr + '\n' + self.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith('ERROR:')]
    if errors:
      return re.sub(r'^ERROR: \([^)]*\)\s*', '', errors[-1])
    return lines[-1] if lines else f'exit status {self.returncode}'

  def json(self):
    try:
      return json.loads(self.stdout)
    except json.JSONDecodeError as error:
      raise LaunchError(f'{shlex.join(self.argv[:6])} ... printed no JSON ({error}): '
                        f'{self.stdout[:200]!r}') from None


class Runner:
  """Runs argv lists (never through a shell), or with dry_run only prints them."""

  def __init__(self, *, dry_run: bool = False, echo: Callable[[str], None] = print,
               verbose: bool = False):
    self.dry_run = dry_run
    self.echo = echo
    self.verbose = verbose

  def show(self, argv: Sequence[str]) -> None:
    self.echo('$ ' + shlex.join([str(a) for a in argv]))

  def run(self, argv: Sequence[str], *, timeout: float | None = None,
          quiet: bool = False) -> Result:
    argv = [str(a) for a in argv]
    if self.dry_run or (self.verbose and not quiet):
      self.show(argv)
    if self.dry_run:
      return Result(argv, 0)
    try:
      done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    except FileNotFoundError:
      raise _not_installed(argv[0]) from None
    except subprocess.TimeoutExpired as expired:
      return Result(argv, 124, _text(expired.stdout), _text(expired.stderr) +
                    f'\nERROR: timed out after {timeout:.0f} s')
    return Result(argv, done.returncode, done.stdout, done.stderr)

  def start(self, argv: Sequence[str]) -> subprocess.Popen | None:
    """Starts `argv` in its own process group, stdout and stderr merged into one pipe."""
    argv = [str(a) for a in argv]
    if self.dry_run or self.verbose:
      self.show(argv)
    if self.dry_run:
      return None
    try:
      return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors='replace',
                              start_new_session=True)
    except FileNotFoundError:
      raise _not_installed(argv[0]) from None


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
  """Ends a process started by Runner.start and its children (gcloud's ssh child too)."""
  if proc.poll() is not None:
    return
  for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def _text(value) -> str:
  if value is None:
    return ''
  return value.decode(errors='replace') if isinstance(value, bytes) else value


def _not_installed(program: str) -> LaunchError:
  hints = {
      'gcloud': 'install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and '
                'run `gcloud auth login`',
      'xpk': 'install xpk (`pip install xpk`, https://github.com/AI-Hypercomputer/xpk)',
      'git': 'install git',
  }
  hint = hints.get(os.path.basename(program), 'install it or put it on PATH')
  return LaunchError(f'{program} is not on PATH: {hint}', exit_code=2)
