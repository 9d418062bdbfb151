"""The preflight doctor's worker-side probe (run for real here) and its one-line findings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launch import preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_probe_finds_the_process_that_holds_a_tpu_device(tmp_path, monkeypatch):
  devices = tmp_path / 'dev'
  devices.mkdir()
  (devices / 'accel0').write_bytes(b'')
  (devices / 'accel1').write_bytes(b'')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; f = open(sys.argv[1]); print("open", flush=True); '
       'time.sleep(60)', str(devices / 'accel1'), 'launch.cli', 'run'],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'open\n'
    monkeypatch.setenv(preflight.DEVICE_ENV, f'{devices}/accel*')
    holders = preflight.tpu_holders()
    assert [(h['pid'], h['devices']) for h in holders] == [(holder.pid, [str(devices / 'accel1')])]
    assert holders[0]['command'].startswith(f'{sys.executable} -c import sys, time; f = open(')
  finally:
    holder.kill()
    holder.wait()
  assert preflight.tpu_holders() == []


def test_no_device_files_means_no_holders(monkeypatch, tmp_path):
  monkeypatch.setenv(preflight.DEVICE_ENV, f'{tmp_path}/nothing*')
  assert preflight.tpu_holders() == []


def test_data_files_counts_the_first_pattern_that_matches(tmp_path):
  for i in range(3):
    (tmp_path / f'imagenet2012-train.tfrecord-0000{i}-of-00003').write_bytes(b'x')
  (tmp_path / 'dataset_info.json').write_text('{}')
  (tmp_path / '.train-00000-of-00001').write_bytes(b'x')   # hidden: never counted
  found = preflight.data_files(str(tmp_path), ['train-*-of-*', '*-train.tfrecord-*-of-*'])
  assert found == {'dir': str(tmp_path), 'pattern': '*-train.tfrecord-*-of-*', 'files': 3,
                   'error': None}
  empty = preflight.data_files(str(tmp_path), ['part-*'])
  assert empty['files'] == 0 and empty['error'] is None
  missing = preflight.data_files(str(tmp_path / 'nope'), ['part-*'])
  assert missing['error'].startswith('FileNotFoundError: [Errno 2] No such file or directory')


def test_unreadable_training_file_is_reported(tmp_path):
  if os.geteuid() == 0:
    (tmp_path / 'part-00000').mkdir()   # root reads any file; a folder cannot be read as one
  else:
    (tmp_path / 'part-00000').write_bytes(b'x')
    (tmp_path / 'part-00000').chmod(0)
  found = preflight.data_files(str(tmp_path), ['part-*'])
  assert found['files'] == 1 and found['error'].startswith(
      ('IsADirectoryError', 'PermissionError'))


def report(worker, **fields):
  base = {'host': f'w{worker}', 'python': '3.10.12', 'commit': 'a' * 40,
          'versions': {'jax': '0.6.2', 'jaxlib': '0.6.2', 'libtpu': '0.0.17'}, 'tpu_holders': []}
  base.update(fields)
  return preflight.WorkerOutput(worker, 0, preflight.MARKER + json.dumps(base) + '\n')


def test_analyze_groups_workers_and_says_what_to_do():
  expect = preflight.Expect(commit='a' * 40, hosts=6, min_files=6, setup_hint='SETUP',
                            stop_hint='STOP')
  outputs = [report(0), report(1), report(2),
             report(3, versions={'jax': '0.6.2', 'jaxlib': '0.6.2', 'libtpu': None}),
             report(4, commit=None),
             preflight.WorkerOutput(5, 1, '', 'bash: line 1: cd: podium: No such file or '
                                    'directory\n')]
  assert preflight.analyze(outputs, expect) == [
      'worker 5: has no podium checkout to check (bash: line 1: cd: podium: No such file or '
      'directory): run `SETUP`',
      "worker 3: libtpu not installed: run `SETUP` (it installs podium with its '[tpu]' extra)",
      'worker 4: has no podium commit recorded (not installed by podium launch): run `SETUP`']
  assert preflight.analyze(outputs[:3], expect) == []
  assert preflight.summary(outputs[:3]) == ('3 workers: podium aaaaaaaaaaaa, jax 0.6.2, jaxlib '
                                            '0.6.2, libtpu 0.0.17')


def test_without_a_local_commit_the_workers_must_agree():
  expect = preflight.Expect(commit=None, hosts=3, setup_hint='SETUP')
  outputs = [report(0), report(1), report(2, commit='b' * 40)]
  assert preflight.analyze(outputs, expect) == [
      'worker 2: runs podium bbbbbbbbbbbb but most workers have aaaaaaaaaaaa: run `SETUP` so '
      'every worker runs the same code']


def test_batch_must_split_over_the_batch_devices():
  mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
  dcn = {'data': 1, 'fsdp': 1, 'tensor': 1}
  assert preflight.batch_problems(4096, 4096, 32, mesh, dcn, 'v4-64') == []
  assert preflight.batch_problems(4096, 1000, 32, mesh, dcn, 'v4-64') == [
      'recipe: train.eval_batch_size=1000 is not divisible by the 32 chips of v4-64 that split '
      'the batch: use a multiple of 32 (--set train.eval_batch_size=1024)']
  # a tensor axis of 4 leaves 8 batch shards on 32 devices
  assert preflight.batch_problems(8 * 3, 0, 32, dict(mesh, tensor=4), dcn, 'x') == []


def test_gate_exits_3_with_one_line_per_problem(tmp_path):
  (tmp_path / preflight.COMMIT_FILE).write_text('c' * 40 + '\n')
  data = tmp_path / 'data'
  data.mkdir()
  (data / 'part-00000').write_bytes(b'x')
  env = dict(os.environ, PYTHONPATH=ROOT, TPU_WORKER_ID='0',
             **{preflight.DEVICE_ENV: f'{tmp_path}/none*'})
  done = subprocess.run(
      [sys.executable, '-m', 'launch.preflight', 'gate', '--expect-commit', 'd' * 40,
       '--hosts', '4', '--min-files', '4', '--data-dir', str(data), '--pattern', 'part-*'],
      cwd=tmp_path, env=env, capture_output=True, text=True)
  assert done.returncode == preflight.GATE_EXIT
  lines = done.stderr.strip().splitlines()
  assert lines[0] == ('podium preflight: worker 0: runs podium cccccccccccc but the local '
                      'checkout is at dddddddddddd: run `rebuild the image / resubmit` so every '
                      'worker runs the same code')
  assert lines[-1] == (f"podium preflight: worker 0: finds 1 training files ('part-*') in {data} "
                       f'but the run needs at least 4, one per host (data.input_shards): write '
                       f'the data in more files')
  assert done.stdout.startswith(preflight.MARKER)


def test_probe_imports_nothing_heavy():
  code = ('import sys; from launch import preflight; preflight.probe(); '
          'print(sorted(m for m in ("jax", "tensorflow", "numpy") if m in sys.modules))')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert done.stdout.strip() == '[]', done.stderr
