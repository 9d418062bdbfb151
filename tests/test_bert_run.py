"""Real CPU runs of `podium run bert`, end to end, as a user runs them.

* (slow) The tiny_cpu recipe reaches masked-LM accuracy 0.720 on its held-out records and its
  MLPerf log passes the mlperf-logging checker with ruleset 5.0.0, BERT's last.
* A short run from an initial TF1 checkpoint, with gradient accumulation: the checkpoint's
  accuracy is evaluated and logged before the clock starts, the log's keys come from the
  config, epoch_num counts samples, and the run, stopped short of the target, ends aborted;
  the checker then reports exactly the one thing missing: an accuracy >= 0.720.
* Bad input through the command: one line naming what is wrong, no traceback.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from benchmarks import bert, registry
from models import bert as bert_lib
from models.importers import tf1_bert
from results import compliance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def podium(*args, cwd=ROOT, timeout=1500):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)  # one CPU device, as on a user's machine
  return subprocess.run([sys.executable, '-m', 'launch.cli', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def mllog(path):
  with open(path) as f:
    return [json.loads(line.split(':::MLLOG', 1)[1]) for line in f if ':::MLLOG' in line]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """tiny_cpu's records, written once here as `podium run` writes them on first use."""
  import jax
  from launch.runtime import Runtime, logical_axis_rules, make_mesh
  path = str(tmp_path_factory.mktemp('bert_counting'))
  config = registry.resolve('bert', 'tiny_cpu', [f'data.dir={path}'])
  bert.build_task(config, Runtime(make_mesh({'data': 1}, jax.devices()[:1]),
                                  logical_axis_rules('data_parallel')))
  return path


@pytest.mark.slow
def test_tiny_cpu_reaches_its_target_and_its_log_passes_ruleset_5(tmp_path, data_dir):
  out = str(tmp_path / 'out')
  run = podium('run', 'bert', '--recipe', 'tiny_cpu', '--output', out, '--set', f'data.dir={data_dir}')
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'reached the target masked_lm_accuracy >= 0.72' in run.stdout
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'bert', 'result_0.txt')
  result = compliance.check_log(log_path, ruleset='5.0.0')
  assert result.passed, result.output
  log = mllog(log_path)
  accuracies = [(l['value'], l['metadata']['epoch_num']) for l in log if l['key'] == 'eval_accuracy']
  assert accuracies[-1][0] >= 0.72 and all(n % 3200 == 0 for _, n in accuracies)
  assert log[-1]['key'] == 'run_stop' and log[-1]['metadata']['status'] == 'success'


def _tiny_checkpoint(directory):
  """A TF1 checkpoint of tiny_cpu's model shape, as MLPerf's is of BERT-large's."""
  config = registry.resolve('bert', 'tiny_cpu')
  model = bert_lib.BertForPreTraining(bert.model_config(config), rngs=nnx.Rngs(7))
  return tf1_bert.save_tf1_bert(model, os.path.join(directory, 'model.ckpt'), step=28252)


def test_short_run_from_a_checkpoint_logs_what_ruleset_5_asks(tmp_path, data_dir):
  prefix = _tiny_checkpoint(str(tmp_path))
  out = str(tmp_path / 'out')
  run = podium('run', 'bert', '--recipe', 'tiny_cpu', '--output', out,
               '--set', f'data.dir={data_dir}', '--set', f'model.init_checkpoint={prefix}',
               '--set', 'train.max_steps=24', '--set', 'train.eval_every_samples=640',
               '--set', 'train.gradient_accumulation_steps=2', '--set', 'seed=3')
  assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'initial masked_lm_accuracy' in run.stdout and 'did NOT reach' in run.stdout
  log_path = os.path.join(out, 'podium', 'results', 'cpu-x1', 'bert', 'result_0.txt')
  log = mllog(log_path)
  keys = [l['key'] for l in log]
  value = {l['key']: l['value'] for l in log}
  assert keys.index('initial_eval_accuracy') < keys.index('init_stop') < keys.index('run_start')
  assert 0.0 <= value['initial_eval_accuracy'] < 0.72
  assert value['submission_benchmark'] == 'bert' and value['global_batch_size'] == 64
  assert value['gradient_accumulation_steps'] == 2 and value['max_sequence_length'] == 64
  assert value['opt_lamb_beta_1'] == 0.9 and value['opt_base_learning_rate'] == 0.02
  assert value['num_warmup_steps'] == value['opt_learning_rate_warmup_steps'] == 30
  assert value['eval_samples'] == 1000 and value['train_samples'] == 24 * 64
  epochs = [l['metadata']['epoch_num'] for l in log if l['key'] == 'eval_accuracy']
  assert epochs == [640, 1280, 1536]  # samples trained: steps 10, 20 and the last, 24
  assert log[-1]['key'] == 'run_stop' and log[-1]['metadata']['status'] == 'aborted'
  result = compliance.check_log(log_path, ruleset='5.0.0')
  assert not result.passed
  assert len(result.errors) == 1 and 'eval_accuracy' in result.errors[0] and '0.720' in result.errors[0], (
      result.errors)


def cli(capsys, *args):
  from launch import cli as cli_lib
  code = cli_lib.main(list(args))
  captured = capsys.readouterr()
  return code, captured.err


def test_a_checkpoint_for_another_vocabulary_is_named(capsys, tmp_path, data_dir):
  config = registry.resolve('bert', 'tiny_cpu', ['model.vocab_size=90'])
  model = bert_lib.BertForPreTraining(bert.model_config(config), rngs=nnx.Rngs(0))
  prefix = tf1_bert.save_tf1_bert(model, str(tmp_path / 'model.ckpt'))
  code, err = cli(capsys, 'run', 'bert', '--recipe', 'tiny_cpu', '--output', str(tmp_path / 'o'),
                  '--set', f'data.dir={data_dir}', '--set', f'model.init_checkpoint={prefix}')
  assert code == 2 and 'Traceback' not in err
  assert 'vocab file' in err and 'has 72 tokens but checkpoint' in err and 'trained with 90' in err


def test_a_checkpoint_missing_variables_is_named(capsys, tmp_path, data_dir):
  prefix = _tiny_checkpoint(str(tmp_path))
  code, err = cli(capsys, 'run', 'bert', '--recipe', 'tiny_cpu', '--output', str(tmp_path / 'o'),
                  '--set', f'data.dir={data_dir}', '--set', f'model.init_checkpoint={prefix}',
                  '--set', 'model.num_layers=3')
  assert code == 2 and 'Traceback' not in err
  assert 'missing variables' in err and 'bert/encoder/layer_2/attention/self/query/kernel' in err
  assert 'set model.num_layers=2' in err


def test_records_for_another_model_are_named(capsys, tmp_path, data_dir):
  code, err = cli(capsys, 'run', 'bert', '--recipe', 'tiny_cpu', '--output', str(tmp_path / 'o'),
                  '--set', f'data.dir={data_dir}', '--set', 'data.prepare=""',
                  '--set', 'model.vocab_size=100')
  assert code == 2 and 'Traceback' not in err
  assert 'has 72 tokens but model.vocab_size is 100' in err
  code, err = cli(capsys, 'run', 'bert', '--recipe', 'tiny_cpu', '--output', str(tmp_path / 'o'),
                  '--set', f'data.dir={data_dir}', '--set', 'data.prepare=""',
                  '--set', 'data.max_seq_length=32')
  assert code == 2 and 'max_seq_length=64 but the recipe asks for 32' in err
