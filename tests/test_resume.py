"""Preemption-safe training with real processes: SIGKILL and SIGTERM, then resume.

Three runs of the same config (checkpoints every 15 steps, 4 epochs of the digits recipe):
one uninterrupted, one killed with SIGKILL between checkpoints and restarted, one stopped
with SIGTERM and restarted. The resumed runs must end with bitwise the same parameters and
the same eval curve as the uninterrupted one, and their logs and records must say plainly
that they were resumed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from results import compliance
from results.record import read_record
from tests.test_run_digits import ROOT, mllog_lines, podium

SETTINGS = ['--set', 'checkpoint.every_steps=15', '--set', 'train.max_epochs=4',
            '--set', 'train.target_accuracy=0.999']
RUNS = os.path.join('runs', 'resnet50', 'cpu-x1')


def start(out, data):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)
  return subprocess.Popen(
      [sys.executable, '-m', 'launch.cli', 'run', 'resnet50', '--recipe', 'digits_cpu',
       '--output', out, '--set', f'data.dir={data}', *SETTINGS],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(out, min_step, process, timeout=300):
  """Polls the run's heartbeat until it has trained `min_step` steps past a checkpoint."""
  path = os.path.join(out, RUNS, 'result_0', 'run_state.json')
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, process.stdout.read()
    try:
      state = json.loads(open(path).read())
    except (FileNotFoundError, json.JSONDecodeError):
      state = {}
    checkpoint = state.get('checkpoint_step') or 0
    if checkpoint and state.get('last_step', 0) >= checkpoint + min_step:
      return state
    time.sleep(0.05)
  raise AssertionError(f'the run did not reach a checkpoint + {min_step} steps in {timeout} s')


def final_params(out):
  """The parameters of the final checkpoint, as numpy arrays keyed by path."""
  import jax
  from benchmarks import checkpointing
  directory = os.path.join(out, RUNS, 'result_0', 'checkpoints')
  saved = checkpointing.read_state(directory)
  return checkpointing.latest_step(directory), {
      jax.tree_util.keystr(path): leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(saved['params'])}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  work = tmp_path_factory.mktemp('resume')
  data = str(work / 'data')
  reference = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(work / 'ref'),
                     '--set', f'data.dir={data}', *SETTINGS, cwd=ROOT)
  assert reference.returncode == 1, reference.stdout[-3000:] + reference.stderr[-3000:]

  killed_out = str(work / 'killed')
  process = start(killed_out, data)
  wait_for_step(killed_out, 5, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_again = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', killed_out,
                        '--set', f'data.dir={data}', *SETTINGS, cwd=ROOT)

  stopped_out = str(work / 'stopped')
  process = start(stopped_out, data)
  wait_for_step(stopped_out, 5, process)
  process.send_signal(signal.SIGTERM)
  stopped_output = process.communicate(timeout=300)[0]
  stopped_code = process.returncode
  stopped_again = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', stopped_out,
                         '--set', f'data.dir={data}', *SETTINGS, cwd=ROOT)
  return dict(work=work, reference=reference, killed_again=killed_again,
              stopped_output=stopped_output, stopped_code=stopped_code,
              stopped_again=stopped_again)


def record(out):
  return read_record(os.path.join(out, 'podium', 'podium_records', 'cpu-x1', 'resnet',
                                  'result_0.json'))


@pytest.mark.parametrize('name', ['killed', 'stopped'])
def test_resumed_run_matches_the_uninterrupted_run_bitwise(runs, name):
  work = runs['work']
  again = runs[f'{name}_again']
  assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]  # target 0.999
  assert 'resumed result_0 at step' in again.stdout
  ref_step, ref = final_params(str(work / 'ref'))
  step, params = final_params(str(work / name))
  assert step == ref_step
  assert ref.keys() == params.keys()
  for key in ref:
    np.testing.assert_array_equal(params[key], ref[key], err_msg=key)
  ref_curve = [point[:2] for point in record(str(work / 'ref')).eval_curve]
  curve = [point[:2] for point in record(str(work / name)).eval_curve]
  assert curve == ref_curve and len(curve) == 2


def test_sigterm_saves_at_once_and_exits_143(runs):
  assert runs['stopped_code'] == 128 + signal.SIGTERM, runs['stopped_output'][-3000:]
  assert 'stopped by SIGTERM at step' in runs['stopped_output']
  segments = record(str(runs['work'] / 'stopped')).segments
  first, second = segments
  assert first['ended'] == 'interrupted' and first['lost_steps'] == 0
  assert second['start_step'] == first['end_step']  # saved at the step it stopped: no loss


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(runs):
  rec = record(str(runs['work'] / 'killed'))
  first, second = rec.segments
  assert first['ended'] == 'killed'
  assert second['start_step'] % 15 == 0 and second['start_step'] < first['end_step']
  assert first['lost_steps'] == first['end_step'] - second['start_step'] > 0
  assert second['downtime_s'] >= 0 and first['lost_s'] >= 0


@pytest.mark.parametrize('name', ['killed', 'stopped'])
def test_resumed_run_says_so_in_its_log_and_record(runs, name):
  out = str(runs['work'] / name)
  rec = record(out)
  assert rec.resumed and len(rec.segments) == 2
  assert set(rec.phases) == {'init', 'compile', 'train', 'eval', 'data_wait', 'checkpoint'}
  assert rec.phases['checkpoint'] > 0
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt')
  log = mllog_lines(log_path)
  resumes = [line for line in log if line['key'] == 'podium_resume']
  assert len(resumes) == 1 and 'not a valid MLPerf time-to-train' in resumes[0]['value']['note']
  # One log, one run index: no second result was created for the same run.
  assert sorted(os.listdir(os.path.dirname(log_path))) == ['result_0.txt']
  # The MLPerf checker must not take it for one contiguous run.
  assert not compliance.check_log(log_path, ruleset='4.0.0').passed
  # The resumed segment logs its own init, which the checker rejects after run_start.
  keys = [line['key'] for line in log]
  assert keys.count('init_start') == 2 and keys.count('run_start') == 1


def test_uninterrupted_run_with_checkpoints_is_a_valid_log(runs):
  out = str(runs['work'] / 'ref')
  rec = record(out)
  assert not rec.resumed and len(rec.segments) == 1 and rec.segments[0]['ended'] == 'aborted'
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt')
  result = compliance.check_log(log_path, ruleset='4.0.0')
  assert result.passed, result.output[-3000:]
