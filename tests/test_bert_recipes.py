"""BERT recipes and task: the TPU recipes are MLPerf's reference convergence points, the eval
cadence is MLPerf's rule, the log keys come from the config, and bad configurations get one
clear message."""

import json
import os
import statistics

import jax
import mlperf_logging
import pytest

from benchmarks import bert, registry
from benchmarks.config import ConfigError
from benchmarks.train import build_state_fns
from launch.runtime import Runtime, logical_axis_rules, make_mesh

RCP_JSON = os.path.join(os.path.dirname(mlperf_logging.__file__), 'rcp_checker',
                        'training_5.0.0', 'rcps_bert.json')


def runtime():
  return Runtime(make_mesh({'data': 1}, jax.devices()[:1]), logical_axis_rules('data_parallel'))


def task(name='tiny_cpu', *overrides):
  config = registry.resolve('bert', name, ['data.synthetic=True', 'data.prepare=""', *overrides])
  return bert.build_task(config, runtime())


def test_tpu_recipes_carry_the_reference_convergence_points():
  references = {record['BS']: record for record in json.load(open(RCP_JSON)).values()}
  assert set(bert.RCP_BERT) == set(references)
  tpu = {name: r for name, r in registry.recipes('bert').items() if name.startswith('tpu_')}
  assert {r.build().train.global_batch_size for r in tpu.values()} == set(references)
  for name, entry in tpu.items():
    config = entry.build()
    batch = config.train.global_batch_size
    ref = references[batch]
    hp = ref['Hyperparams']
    opt = config.optimizer
    assert (opt.base_learning_rate, opt.train_steps, opt.warmup_steps, opt.start_warmup_step,
            opt.beta_1, opt.beta_2, opt.epsilon, opt.weight_decay) == (
        hp['opt_base_learning_rate'], hp['opt_learning_rate_training_steps'],
        hp['num_warmup_steps'], hp['start_warmup_step'], hp['opt_lamb_beta_1'],
        hp['opt_lamb_beta_2'], hp['opt_epsilon'], hp['opt_lamb_weight_decay_rate']), name
    runs = sorted(ref['Epochs to converge'])
    olympic = statistics.mean(runs[1:-1])
    assert round(olympic) == bert.RCP_BERT[batch][-1]
    assert f'bert_ref_{batch}' in entry.doc and 'rcps_bert.json' in entry.doc
    assert f'{bert.RCP_BERT[batch][-1]:,} samples' in entry.doc
    assert config.topology and config.data.max_seq_length == 512
    assert config.data.max_predictions_per_seq == 76 and config.train.target_accuracy == 0.72
    chips = __import__('launch.chips', fromlist=['x']).parse_topology(config.topology).num_chips
    micro_per_chip = batch / config.train.gradient_accumulation_steps / chips
    assert micro_per_chip == int(micro_per_chip) and 8 <= micro_per_chip <= 64, name


@pytest.mark.parametrize('batch,interval', [(256, 150_000), (1024, 150_000), (2048, 150_000),
                                            (3072, 175_000), (4096, 175_000), (8192, 225_000),
                                            (16384, 325_000)])
def test_eval_interval_is_mlperfs_rule(batch, interval):
  assert bert.mlperf_eval_interval(batch) == interval


def test_blocks_count_samples_and_end_at_the_last_step():
  t = task('tiny_cpu', 'train.eval_every_samples=1000', 'train.max_steps=40')
  blocks = t.blocks()
  # Batch 64: 1,000 samples end in step 16 (1,024 samples), 2,000 in step 32, then the end.
  assert [b.end_step for b in blocks] == [16, 32, 40]
  assert [b.eval_metadata['epoch_num'] for b in blocks] == [1024, 2048, 2560]
  assert [(b.start_metadata['first_epoch_num'], b.start_metadata['epoch_count'])
          for b in blocks] == [(0, 1024), (1024, 1024), (2048, 512)]
  default = task('tpu_v4_128_bs8192')
  assert default.eval_interval == 225_000 and default.blocks()[0].end_step == 28  # 229,376


def test_hyperparameters_are_the_ruleset_keys_from_the_config():
  t = task('tpu_v4_128_bs8192')
  hp = t.hyperparameters()
  required = ['opt_base_learning_rate', 'opt_lamb_epsilon', 'opt_learning_rate_training_steps',
              'opt_learning_rate_warmup_steps', 'num_warmup_steps', 'start_warmup_step',
              'opt_lamb_beta_1', 'opt_lamb_beta_2', 'opt_lamb_weight_decay_rate',
              'max_sequence_length', 'gradient_accumulation_steps']
  assert all(key in hp for key in required)
  assert (hp['opt_base_learning_rate'], hp['num_warmup_steps'], hp['start_warmup_step'],
          hp['max_sequence_length'], hp['gradient_accumulation_steps']) == (0.00288293, 287, -76, 512, 4)
  assert t.gradient_accumulation_steps == 4 and t.train_samples == 600 * 8192
  assert t.eval_samples == 10_000 and t.progress_unit == 'samples'


# BERT-large's trace takes ~90 s on 2 cores and test_recipes.py traces a pod recipe already.
@pytest.mark.parametrize('name', ['tiny_cpu', 'docs_cpu',
                                  pytest.param('tpu_v4_128_bs8192', marks=pytest.mark.slow)])
def test_recipes_trace_a_train_step_abstractly(name):
  """BERT-large included (every recipe is traced by tests/test_recipes.py)."""
  for name in [name]:
    t = task(name)
    fns = build_state_fns(t, t.runtime, seed=0)
    state = jax.eval_shape(fns.init)
    _, metrics = jax.eval_shape(fns.train_step, state, t.input_spec(eval=False))
    assert metrics['loss'].shape == () and 'train_mlm_accuracy' in metrics


def test_bad_configurations_are_named():
  with pytest.raises(ConfigError, match='must be >= 1 and divide train.global_batch_size=64'):
    task('tiny_cpu', 'train.gradient_accumulation_steps=3')
  with pytest.raises(ConfigError, match='data.max_seq_length=128 exceeds model.max_position_embeddings=64'):
    task('tiny_cpu', 'data.max_seq_length=128')
  with pytest.raises(ConfigError, match='optimizer.name=.adam.; valid: lamb'):
    task('tiny_cpu', 'optimizer.name=adam').optimizer()
  with pytest.raises(ConfigError, match="data.prepare='wiki'; valid: counting, stdlib_docs"):
    task('tiny_cpu', 'data.synthetic=False', 'data.prepare=wiki')
  with pytest.raises(ConfigError, match='reads no data'):
    task('tiny_cpu', 'data.synthetic=False', 'data.dir=""')
