"""Records a call made on a fake worker to <state>/remote_calls.jsonl and succeeds."""

import fcntl
import json
import os
import sys

state = os.environ['PODIUM_FAKE_DIR']
entry = {'name': sys.argv[1], 'argv': sys.argv[2:], 'cwd': os.getcwd(),
         'worker': os.environ.get('PODIUM_FAKE_WORKER')}
with open(os.path.join(state, 'remote_calls.jsonl'), 'a') as f:
  fcntl.flock(f, fcntl.LOCK_EX)
  f.write(json.dumps(entry) + '\n')
if sys.argv[1] == 'pip':
  print('Successfully installed podium-0.1.0')
