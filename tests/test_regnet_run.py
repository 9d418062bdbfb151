"""A real RegNet run through the `podium` command, and podium's rule file for `regnet`.

`podium run regnet --recipe digits_cpu` must reach its stated target; its MLPerf log must pass
the real mlperf-logging compliance checker with results/rules/regnet.yaml (`--ruleset 5.0.0
--config <abs path>`, what `podium check` runs), and logs broken in each way the rules guard
against must fail it, each with its own message.
"""

import json
import os

import pytest
import yaml

from benchmarks import registry
from benchmarks import regnet as regnet_benchmark
from models.regnet import PYCLS_ZOO
from results import compliance
from test_run_digits import ROOT, mllog_lines, podium

RULES = os.path.join(ROOT, 'results', 'rules', 'regnet.yaml')


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  work = tmp_path_factory.mktemp('regnet_digits')
  out = str(work / 'out')
  run = podium('run', 'regnet', '--recipe', 'digits_cpu', '--output', out,
               '--set', f'data.dir={work / "data"}', cwd=ROOT)
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'regnet', 'result_0.txt')
  return out, run, log_path


def test_digits_recipe_reaches_its_stated_target(digits_run):
  out, run, log_path = digits_run
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'reached the target top1 >= 0.95' in run.stdout
  log = mllog_lines(log_path)
  accuracies = [line['value'] for line in log if line['key'] == 'eval_accuracy']
  assert accuracies[-1] >= 0.95
  assert log[-1]['key'] == 'run_stop' and log[-1]['metadata']['status'] == 'success'
  keys = {line['key']: line['value'] for line in log}
  assert keys['submission_benchmark'] == 'regnet' and keys['regnet_model'] == 'regnety_tiny'
  assert keys['sgd_opt_base_learning_rate'] == 0.1 * 64 / 128
  record = json.load(open(os.path.join(out, 'podium', 'podium_records', 'cpu-x1', 'regnet',
                                       'result_0.json')))
  assert record['status'] == 'success' and record['benchmark'] == 'regnet'
  print(f"top-1 {accuracies[-1]:.4f} after {record['epochs_or_samples_to_converge']} epochs, "
        f"time to train {record['time_to_train_s']:.1f} s")


def test_the_log_passes_the_checker_with_the_regnet_rule_file(digits_run):
  out, run, log_path = digits_run
  assert run.returncode == 0
  assert compliance.ruleset_for('regnet') == ('5.0.0', RULES)
  result = compliance.check_log(log_path)
  assert result.passed, result.output
  assert result.ruleset == '5.0.0' and f'Compliance checks: {RULES}' in result.output
  check = podium('check', out, cwd=ROOT)
  assert any(line.startswith('PASS') and line.rstrip().endswith('[ruleset 5.0.0]')
             and line.split()[1].endswith('regnet/result_0.txt')
             for line in check.stdout.splitlines()), check.stdout


def _rewrite(log_path, tmp_path, key, change):
  """A copy of the log with each `key` line's entry passed through `change` (None: drop)."""
  lines = []
  for line in open(log_path):
    entry = json.loads(line.split(':::MLLOG ', 1)[1])
    if entry['key'] == key:
      entry = change(entry)
      if entry is None:
        continue
    lines.append(':::MLLOG ' + json.dumps(entry) + '\n')
  broken = tmp_path / key / 'result_0.txt'
  broken.parent.mkdir(parents=True)
  broken.write_text(''.join(lines))
  return broken


def _value(value):
  return lambda entry: dict(entry, value=value)


BROKEN = {
    'below the target': ('eval_accuracy', lambda e: dict(e, value=min(e['value'], 0.9)),
                         "Failed checks for eval_accuracy : v['value'] >= s['target']"),
    'not the scaling rule': ('sgd_opt_base_learning_rate', _value(0.1),
                             "abs(s['base_learning_rate'] - 0.1 * s['global_batch_size'] / 128)"),
    'another weight decay': ('sgd_opt_weight_decay', _value(1e-4),
                             "CHECK for 'sgd_opt_weight_decay' failed"),
    'an imagenet model on digits': ('regnet_model', _value('regnety_4_0gf'),
                                    "(s['train_samples'], s['eval_samples']) == "
                                    "s['models'][s['model']][1:]"),
    'an unknown model': ('regnet_model', _value('resnet50'),
                         "CHECK for 'regnet_model' failed"),
    'no model': ('regnet_model', lambda e: None,
                 "Required EXACTLY_ONE occurrence of 'regnet_model' but found 0"),
    'no run_stop': ('run_stop', lambda e: None,
                    "Required EXACTLY_ONE occurrence of 'run_stop' but found 0"),
    'step schedule': ('opt_learning_rate_decay_schedule', _value('steps'),
                      "CHECK for 'opt_learning_rate_decay_schedule' failed"),
}


@pytest.mark.parametrize('case', sorted(BROKEN))
def test_a_broken_log_fails_the_rule_file(digits_run, tmp_path, case):
  _, run, log_path = digits_run
  assert run.returncode == 0
  key, change, message = BROKEN[case]
  result = compliance.check_log(_rewrite(log_path, tmp_path, key, change), benchmark='regnet')
  assert not result.passed
  assert any(message in error for error in result.errors), result.errors


def test_the_rule_files_targets_are_the_recipes():
  """The rule file's table (its BEGIN block, run as the checker runs it) must hold every
  recipe's model with the recipe's target and data set sizes."""
  begin = next(item['BEGIN'] for item in yaml.safe_load(open(RULES)) if 'BEGIN' in item)
  state = {'s': {}}
  exec(begin['CODE'], state)  # pylint: disable=exec-used
  models = state['s']['models']
  assert set(models) == set(PYCLS_ZOO) | {'regnety_tiny'}
  for name in registry.recipes('regnet'):
    config = registry.resolve('regnet', name)
    if config.data.prepare == 'image_folder':
      continue  # fine-tuning on the user's own images: no benchmark target to check
    assert models[config.model.name] == (config.train.target_accuracy,
                                         config.data.train_examples, config.data.eval_examples)
  assert models['regnety_4_0gf'][0] == regnet_benchmark.target_accuracy('regnety_4_0gf')
