"""`python3 -m launch.cli run ...` on a fake worker (tests/fakes): records its argv, prints a
few lines, writes a results tree on worker 0, runs PODIUM_FAKE_RUN_SLEEP seconds and exits
PODIUM_FAKE_RUN_RC; SIGTERM makes it exit 143 as podium run does."""

import fcntl
import json
import os
import signal
import sys
import time

state = os.environ['PODIUM_FAKE_DIR']
worker = os.environ.get('PODIUM_FAKE_WORKER', '0')
argv = sys.argv[1:]
with open(os.path.join(state, 'remote_calls.jsonl'), 'a') as f:
  fcntl.flock(f, fcntl.LOCK_EX)
  f.write(json.dumps({'name': 'podium-run', 'argv': argv, 'cwd': os.getcwd(),
                      'worker': worker}) + '\n')


def on_sigterm(signum, frame):
  with open(os.path.join(os.environ['HOME'], 'sigterm'), 'w') as f:
    f.write('stopped by SIGTERM\n')
  print('podium: stopped by SIGTERM', flush=True)
  sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
print(f'podium: fake run on worker {worker}', flush=True)
output = argv[argv.index('--output') + 1]
if worker == '0':
  results = os.path.join(output, 'podium', 'results', 'tpu-v4-32', 'resnet')
  os.makedirs(results, exist_ok=True)
  with open(os.path.join(results, 'result_0.txt'), 'w') as f:
    f.write(':::MLLOG {"key": "run_stop", "value": null, "metadata": {"status": "success"}}\n')
  checkpoints = os.path.join(output, 'runs', 'resnet50', 'tpu-v4-32', 'result_0', 'checkpoints')
  os.makedirs(checkpoints, exist_ok=True)
  with open(os.path.join(checkpoints, 'big'), 'w') as f:
    f.write('state\n')
time.sleep(float(os.environ.get('PODIUM_FAKE_RUN_SLEEP', '0')))
print(f'podium: worker {worker} done', flush=True)
sys.exit(int(os.environ.get('PODIUM_FAKE_RUN_RC', '0')))
