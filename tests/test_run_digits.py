"""A real CPU run, end to end, through the `podium` command as a user runs it.

The digits default must reach its target, its MLPerf log must pass the real mlperf-logging
compliance checker (ruleset 4.0.0), and the system JSON the system-description checker; a
second run must take the next result index and, stopped at its limit short of the target,
end its log with `run_stop` status aborted and exit non-zero.
"""

import json
import os
import subprocess
import sys

import pytest

from results import compliance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def podium(*args, cwd, env_extra=None, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)  # one CPU device, as on a user's machine
  env.update(env_extra or {})
  return subprocess.run([sys.executable, '-m', 'launch.cli', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def mllog_lines(path):
  lines = []
  with open(path) as f:
    for line in f:
      if ':::MLLOG' in line:
        lines.append(json.loads(line.split(':::MLLOG', 1)[1]))
  return lines


@pytest.fixture(scope='module')
def digits_runs(tmp_path_factory):
  work = tmp_path_factory.mktemp('digits')
  data = str(work / 'data')
  out = str(work / 'out')
  first = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', out,
                 '--set', f'data.dir={data}', cwd=ROOT)
  second = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', out,
                  '--set', f'data.dir={data}', '--set', 'train.max_epochs=1',
                  '--set', 'train.eval_every_epochs=1', '--set', 'train.eval_offset_epochs=0',
                  '--set', 'seed=1', cwd=ROOT)
  return work, out, first, second


def test_digits_run_reaches_its_target(digits_runs):
  _, out, first, _ = digits_runs
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert 'reached the target top1 >= 0.95' in first.stdout
  results_dir = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet')
  log = mllog_lines(os.path.join(results_dir, 'result_0.txt'))
  accuracies = [line['value'] for line in log if line['key'] == 'eval_accuracy']
  assert accuracies[-1] >= 0.95
  assert log[-1]['key'] == 'run_stop' and log[-1]['metadata']['status'] == 'success'
  record = json.load(open(os.path.join(out, 'podium', 'podium_records', 'cpu-x1', 'resnet', 'result_0.json')))
  assert record['status'] == 'success' and record['quality_value'] == accuracies[-1]
  assert record['config']['recipe'] == 'digits_cpu'


def test_digits_log_passes_the_mlperf_compliance_checker(digits_runs):
  _, out, first, _ = digits_runs
  assert first.returncode == 0
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt')
  result = compliance.check_log(log_path, ruleset='4.0.0')
  assert result.passed, result.output
  system = compliance.check_system_json(os.path.join(out, 'podium', 'systems', 'cpu-x1.json'), '4.0.0')
  assert system.passed, system.output


def test_log_is_derived_from_the_config(digits_runs):
  _, out, _, _ = digits_runs
  log = {line['key']: line for line in
         mllog_lines(os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt'))}
  assert log['global_batch_size']['value'] == 64
  assert log['train_samples']['value'] == 1500 and log['eval_samples']['value'] == 297
  assert log['opt_name']['value'] == 'lars'
  assert log['lars_opt_base_learning_rate']['value'] == 2.0
  assert log['seed']['value'] == 0
  # Compile and warm-up come before the clock starts.
  keys = [line['key'] for line in mllog_lines(
      os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt'))]
  assert keys.index('init_stop') < keys.index('run_start') < keys.index('block_start')


def test_second_run_takes_the_next_index_and_logs_aborted(digits_runs):
  _, out, first, second = digits_runs
  assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
  assert 'did NOT reach' in second.stdout
  results_dir = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet')
  assert os.path.exists(os.path.join(results_dir, 'result_0.txt'))
  log = mllog_lines(os.path.join(results_dir, 'result_1.txt'))
  assert log[-1]['key'] == 'run_stop' and log[-1]['metadata']['status'] == 'aborted'
  assert [line['value'] for line in log if line['key'] == 'seed'] == [1]
  # `podium check` over the tree: one line per file, the system JSON included.
  check = podium('check', out, cwd=ROOT)
  lines = check.stdout.splitlines()
  assert any(l.startswith('PASS') and l.rstrip().endswith('[ruleset 4.0.0]') and 'result_0.txt' in l
             for l in lines), check.stdout
  assert any('result_1.txt' in l for l in lines) and any('cpu-x1.json' in l for l in lines)


def test_sgd_run_logs_the_sgd_keys_and_passes_compliance(digits_runs):
  work, _, _, _ = digits_runs
  out = str(work / 'sgd')
  run = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', out,
               '--set', f'data.dir={work / "data"}', '--set', 'optimizer.name=sgd',
               '--set', 'optimizer.base_learning_rate=0.4', cwd=ROOT)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'resnet', 'result_0.txt')
  keys = {line['key']: line['value'] for line in mllog_lines(log_path)}
  assert keys['opt_name'] == 'sgd' and keys['sgd_opt_base_learning_rate'] == 0.4
  assert 'lars_opt_momentum' not in keys
  result = compliance.check_log(log_path, ruleset='4.0.0')
  assert result.passed, result.output
