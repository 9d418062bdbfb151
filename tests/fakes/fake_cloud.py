"""Stand-ins for the `gcloud` and `xpk` CLIs in podium's launch tests (stdlib only).

Google Cloud cannot be reached from the tests, so tests/fakes/harness.py puts
`gcloud` and `xpk` wrappers first on PATH that run this file. Every call appends its
argv to <state>/calls.jsonl; the answer comes from the first matching rule of the JSON
rules file, else from a default:

  rules file: {"workers": 4, "accelerator_type": "v4-32",
               "rules": [{"program": "gcloud", "when": ["queued-resources", "describe"],
                          "worker": "2",
                          "responses": [{"stdout": "...", "stderr": "...", "rc": 0,
                                         "sleep": 0, "exec": true, "env": {...}}, ...]}]}
  `when` tokens must all be argv elements; `worker` compares with --worker=...;
  `command_has` is a substring of the --command value; responses
  are used in order, the last one repeating (state sequences: WAITING -> ACTIVE).

Defaults: `tpu-vm ssh --command=C` runs C with bash in each addressed worker's sandbox
(<state>/workers/<i>, its HOME), PATH starting with the fake worker tools (python3, pkill,
pgrep stubs); `tpu-vm scp` copies files between here and the sandboxes; `tpu-vm describe`
and `queued-resources describe` answer READY / ACTIVE; everything else exits 0 silently.
`xpk workload create` copies --script-dir to <state>/xpk_script_dir; with {"exec": "record"}
it runs --command with bash in a copy of it, every python3 call recorded and not run.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

STATE = os.environ['PODIUM_FAKE_DIR']
TOOLS = os.path.dirname(os.path.abspath(__file__))


def _locked(fn):
  with open(os.path.join(STATE, 'lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      return fn()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _rules():
  path = os.environ.get('PODIUM_FAKE_RULES')
  if not path or not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _flag(argv, name):
  for arg in argv:
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def _respond(program, argv, config):
  """The matching rule's next response (advancing its counter), or None."""
  for index, rule in enumerate(config.get('rules', [])):
    if rule.get('program', 'gcloud') != program:
      continue
    if not all(token in argv for token in rule.get('when', [])):
      continue
    if 'worker' in rule and _flag(argv, 'worker') != str(rule['worker']):
      continue
    if rule.get('command_has') and rule['command_has'] not in (_flag(argv, 'command') or ''):
      continue

    def advance():
      path = os.path.join(STATE, 'counters.json')
      counters = json.load(open(path)) if os.path.exists(path) else {}
      n = counters.get(str(index), 0)
      counters[str(index)] = n + 1
      with open(path, 'w') as f:
        json.dump(counters, f)
      return n

    n = _locked(advance)
    responses = rule['responses']
    return responses[min(n, len(responses) - 1)]
  return None


def _workers(argv, config):
  worker = _flag(argv, 'worker') or '0'
  if worker == 'all':
    return list(range(int(config.get('workers', 1))))
  return [int(worker)]


def _sandbox(worker):
  path = os.path.join(STATE, 'workers', str(worker))
  os.makedirs(path, exist_ok=True)
  return path


def _remote_env(worker, extra):
  env = {
      'HOME': _sandbox(worker), 'PATH': os.path.join(TOOLS, 'worker_bin') + ':/usr/bin:/bin',
      'PODIUM_FAKE_DIR': STATE, 'PODIUM_FAKE_SANDBOX': STATE,
      'PODIUM_FAKE_WORKER': str(worker), 'PODIUM_FAKE_TOOLS': TOOLS,
      'PODIUM_FAKE_PYTHON': os.environ['PODIUM_FAKE_PYTHON'], 'LANG': 'C.UTF-8',
  }
  for key in ('PODIUM_TPU_DEVICES',):
    if key in os.environ:
      env[key] = os.environ[key]
  env.update(extra or {})
  return env


def _ssh(argv, config, response):
  command = _flag(argv, 'command')
  rc = 0
  for worker in _workers(argv, config):
    sys.stdout.flush()
    # Its own session, as on a real worker: ending this (local) process leaves it running.
    done = subprocess.run(['bash', '-c', command], cwd=_sandbox(worker),
                          env=_remote_env(worker, (response or {}).get('env')),
                          start_new_session=True)
    rc = rc or done.returncode
  return rc


def _scp(argv, config):
  paths = [a for a in argv[argv.index('scp') + 1:] if not a.startswith('--')]
  *sources, dest = paths
  for worker in _workers(argv, config):
    for src in sources:
      if ':' in src:   # remote -> local
        shutil.copy(os.path.join(_sandbox(worker), src.split(':', 1)[1]), dest)
      else:
        shutil.copy(src, os.path.join(_sandbox(worker), dest.split(':', 1)[1]))
  return 0


def _gcloud_default(argv, config):
  if 'ssh' in argv and _flag(argv, 'command') is not None:
    return _ssh(argv, config, None)
  if 'scp' in argv:
    return _scp(argv, config)
  if 'tpu-vm' in argv and 'describe' in argv:
    workers = int(config.get('workers', 1))
    print(json.dumps({'state': 'READY', 'acceleratorType': config.get('accelerator_type', ''),
                      'networkEndpoints': [{'ipAddress': f'10.0.0.{i + 2}'}
                                           for i in range(workers)]}))
    return 0
  if 'queued-resources' in argv and 'describe' in argv:
    print(json.dumps({'name': argv[argv.index('describe') + 1],
                      'state': {'state': 'ACTIVE'}}))
    return 0
  return 0


def _xpk(argv, config, response):
  script_dir = _flag(argv, 'script-dir')
  if 'create' in argv and script_dir:
    copy = os.path.join(STATE, 'xpk_script_dir')
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(script_dir, copy)
    if response and response.get('exec') == 'record':
      pod = os.path.join(STATE, 'pod')
      shutil.rmtree(pod, ignore_errors=True)
      shutil.copytree(script_dir, pod)
      env = _remote_env(0, dict(response.get('env', {}), PODIUM_FAKE_PY_RECORD='1'))
      return subprocess.run(['bash', '-c', _flag(argv, 'command')], cwd=pod, env=env).returncode
  return None


def main():
  program = os.path.basename(sys.argv[1])
  argv = sys.argv[2:]
  config = _rules()

  def log():
    with open(os.path.join(STATE, 'calls.jsonl'), 'a') as f:
      f.write(json.dumps({'program': program, 'argv': argv}) + '\n')

  _locked(log)
  response = _respond(program, argv, config)
  if program == 'xpk':
    rc = _xpk(argv, config, response)
    if rc is not None:
      return rc
  if response is None:
    return _gcloud_default(argv, config) if program == 'gcloud' else 0
  if response.get('exec') is True:
    return _ssh(argv, config, response)
  sys.stdout.write(response.get('stdout', ''))
  sys.stderr.write(response.get('stderr', ''))
  if 'json' in response:
    sys.stdout.write(json.dumps(response['json']) + '\n')
  sys.stdout.flush()
  if response.get('sleep'):   # after the output: a command that prints, then takes its time
    time.sleep(float(response['sleep']))
  return int(response.get('rc', 0))


if __name__ == '__main__':
  sys.exit(main())
