"""The code a pod runs: the checkout's committed HEAD, never the working tree.

Workers get `git archive HEAD` (tracked files at the commit, nothing untracked or ignored)
and a `.podium_commit` file naming the commit, which the preflight compares across workers.
Uncommitted changes to tracked files are refused unless allowed, because the workers would
run other code than the one in front of the user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from launch.gcloud import LaunchError

ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str:
  try:
    done = subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
  except FileNotFoundError:
    raise LaunchError('git is not on PATH: podium ships the checkout\'s commit to the '
                      'workers with `git archive`; install git', exit_code=2) from None
  if done.returncode:
    raise LaunchError(f'{repo} is not a git checkout podium can ship (git {" ".join(args)}: '
                      f'{done.stderr.strip() or done.returncode}); the workers run a commit '
                      f'of this checkout', exit_code=2)
  return done.stdout


def head(repo: Path = ROOT) -> str:
  return _git(repo, 'rev-parse', 'HEAD').strip()


def uncommitted(repo: Path = ROOT) -> list[str]:
  """Tracked files whose content differs from HEAD (untracked files are never shipped)."""
  out = _git(repo, 'status', '--porcelain', '--untracked-files=no')
  return [line[3:] for line in out.splitlines() if line.strip()]


def check_clean(repo: Path, allow_dirty: bool, warn) -> str:
  """HEAD, after refusing (or loudly warning about) uncommitted changes."""
  commit = head(repo)
  changed = uncommitted(repo)
  if changed:
    shown = ', '.join(changed[:6]) + (f' and {len(changed) - 6} more' if len(changed) > 6 else '')
    if not allow_dirty:
      raise LaunchError(f'{repo} has uncommitted changes ({shown}); the workers would run '
                        f'commit {commit[:12]} without them. Commit them, or pass '
                        f'--allow-dirty to run {commit[:12]} as it is', exit_code=2)
    warn(f'WARNING: uncommitted changes ({shown}) are NOT shipped: the workers run commit '
         f'{commit[:12]} as it is')
  return commit


def archive_argv(repo: Path, output: Path) -> list[str]:
  return ['git', '-C', str(repo), 'archive', '--format=tar.gz', f'--output={output}', 'HEAD']
