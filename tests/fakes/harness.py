"""Puts the fake `gcloud` and `xpk` (fake_cloud.py) first on PATH for a test, and reads back
what they were asked. Also: a git checkout to ship, and a clock tests can run fast."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

FAKES = Path(__file__).resolve().parent
ROOT = FAKES.parent.parent
# The modules a worker needs to run the preflight probe and the GKE copy helper.
SHIPPED = ('__init__.py', 'preflight.py', 'gcloud.py', 'source.py', 'recipe_info.py', 'gke.py')


class FakeCloud:
  def __init__(self, tmp_path: Path, monkeypatch):
    self.dir = tmp_path / 'fake'
    self.dir.mkdir()
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for program in ('gcloud', 'xpk'):
      wrapper = bin_dir / program
      wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -S {FAKES / "fake_cloud.py"} '
                         f'{program} "$@"\n')
      wrapper.chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}:{os.environ["PATH"]}')
    monkeypatch.setenv('PODIUM_FAKE_DIR', str(self.dir))
    monkeypatch.setenv('PODIUM_FAKE_RULES', str(self.dir / 'rules.json'))
    monkeypatch.setenv('PODIUM_FAKE_PYTHON', sys.executable)
    self.configure()

  def configure(self, workers: int = 1, accelerator_type: str = 'v4-8', rules=()) -> None:
    (self.dir / 'rules.json').write_text(json.dumps(
        {'workers': workers, 'accelerator_type': accelerator_type, 'rules': list(rules)}))

  def calls(self, program: str | None = 'gcloud') -> list[list[str]]:
    path = self.dir / 'calls.jsonl'
    if not path.exists():
      return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e['argv'] for e in entries if program is None or e['program'] == program]

  def remote_calls(self, name: str | None = None) -> list[dict]:
    path = self.dir / 'remote_calls.jsonl'
    if not path.exists():
      return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if name is None or e['name'] == name]

  def remote_env(self, worker: int, **extra: str) -> dict:
    """The environment fake_cloud.py gives a command on a fake worker."""
    env = {'HOME': str(self.worker(worker)), 'PATH': f'{FAKES / "worker_bin"}:/usr/bin:/bin',
           'PODIUM_FAKE_DIR': str(self.dir), 'PODIUM_FAKE_SANDBOX': str(self.dir),
           'PODIUM_FAKE_WORKER': str(worker), 'PODIUM_FAKE_TOOLS': str(FAKES),
           'PODIUM_FAKE_PYTHON': sys.executable, 'LANG': 'C.UTF-8'}
    self.worker(worker).mkdir(parents=True, exist_ok=True)
    return dict(env, **extra)

  def worker(self, index: int) -> Path:
    return self.dir / 'workers' / str(index)

  def processes(self) -> list[int]:
    """Processes the fake workers started (and that still run)."""
    mark = f'PODIUM_FAKE_SANDBOX={self.dir}'.encode()
    found = []
    for entry in os.listdir('/proc'):
      if not entry.isdigit():
        continue
      try:
        with open(f'/proc/{entry}/environ', 'rb') as f:
          if mark in f.read().split(b'\0'):
            with open(f'/proc/{entry}/stat') as stat:
              if stat.read().split()[2] != 'Z':
                found.append(int(entry))
      except OSError:
        continue
    return found

  def cleanup(self) -> None:
    for pid in self.processes():
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def ssh_command(argv: list[str]) -> str | None:
  for arg in argv:
    if arg.startswith('--command='):
      return arg[len('--command='):]
  return None


def make_repo(path: Path) -> str:
  """A git checkout holding podium's launch modules, committed; returns its HEAD."""
  (path / 'launch').mkdir(parents=True)
  for name in SHIPPED:
    shutil.copy(ROOT / 'launch' / name, path / 'launch' / name)
  (path / 'README.md').write_text('podium test checkout\n')
  git = ['git', '-C', str(path), '-c', 'user.name=podium-test', '-c', 'user.email=t@example.com',
         '-c', 'commit.gpgsign=false', '-c', 'init.defaultBranch=main']
  env = dict(os.environ, GIT_CONFIG_GLOBAL='/dev/null', GIT_CONFIG_SYSTEM='/dev/null')
  for args in (['init', '-q'], ['add', '-A'], ['commit', '-q', '-m', 'podium']):
    subprocess.run(git + args, check=True, env=env, capture_output=True)
  return subprocess.run(git + ['rev-parse', 'HEAD'], check=True, env=env, capture_output=True,
                        text=True).stdout.strip()


class FakeClock:
  """Time that moves by what is slept; each sleep also yields a little real time so the
  fake gcloud processes get to run."""

  def __init__(self):
    self.t = 1000.0

  def now(self) -> float:
    return self.t

  def sleep(self, seconds: float) -> None:
    self.t += seconds
    time.sleep(min(seconds, 0.05))
