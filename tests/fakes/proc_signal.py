"""pkill / pgrep -f PATTERN for the fake workers: only processes whose environment carries
this fake's PODIUM_FAKE_SANDBOX are seen, so a test never touches anything else."""

import os
import re
import signal
import sys

mode, args = sys.argv[1], sys.argv[2:]
sig = signal.SIGTERM
if args and args[0] in ('-TERM', '-KILL'):
  sig = signal.SIGKILL if args[0] == '-KILL' else signal.SIGTERM
  args = args[1:]
assert args[0] == '-f', args
pattern = re.compile(args[-1])
mark = ('PODIUM_FAKE_SANDBOX=' + os.environ['PODIUM_FAKE_SANDBOX']).encode()
found = []
for entry in os.listdir('/proc'):
  if not entry.isdigit() or int(entry) in (os.getpid(), os.getppid()):
    continue
  try:
    with open(f'/proc/{entry}/environ', 'rb') as f:
      if mark not in f.read().split(b'\0'):
        continue
    with open(f'/proc/{entry}/cmdline', 'rb') as f:
      cmdline = f.read().replace(b'\0', b' ').decode(errors='replace').strip()
  except OSError:
    continue
  if pattern.search(cmdline):
    found.append(int(entry))
if mode == 'pkill':
  for pid in found:
    try:
      os.kill(pid, sig)
    except ProcessLookupError:
      pass
sys.exit(0 if found else 1)
