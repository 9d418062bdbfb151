"""The recipe registry, `--set` overrides, and an abstract build of every registered recipe."""

import jax
import pytest

from benchmarks import registry
from benchmarks.config import ConfigError
from benchmarks.train import build_state_fns
from launch.runtime import Runtime, make_mesh, logical_axis_rules

ALL_RECIPES = [(b, r) for b in registry.benchmark_names() for r in registry.recipes(b)]


def test_every_recipe_documents_source_hardware_and_expected_result():
  for benchmark, name in ALL_RECIPES:
    doc = registry.get_recipe(benchmark, name).doc.lower()
    assert 'source' in doc and 'expected' in doc, f'{benchmark}/{name} docstring'
    assert any(word in doc for word in ('tpu', 'cpu', 'gpu')), f'{benchmark}/{name} hardware'


def _traced_by_default(recipes):
  """The recipes whose train step `make test` traces: per benchmark, its first CPU recipe and
  its first pod recipe. Tracing all ~50 (BERT-large, RegNet-32GF, ...) takes most of an hour
  on 2 cores, so the rest are traced by `make test-all`."""
  chosen = {}
  for benchmark, name in recipes:
    kind = 'pod' if registry.resolve(benchmark, name).topology else 'cpu'
    chosen.setdefault((benchmark, kind), (benchmark, name))
  return set(chosen.values())


TRACED = _traced_by_default(ALL_RECIPES)


def build(benchmark, name):
  overrides = ['data.synthetic=True', 'data.prepare=""']
  if registry.resolve(benchmark, name).data.get('prepare') == 'image_folder':
    # Sizes and classes come from the user's folder: stand-ins for a 5-class folder.
    overrides += ['data.train_examples=500', 'data.eval_examples=100', 'model.num_classes=5']
  config = registry.resolve(benchmark, name, overrides)
  runtime = Runtime(make_mesh({'data': 1}, jax.devices()[:1]), logical_axis_rules(config.sharding_rules))
  return config, runtime, registry.load_benchmark(benchmark).build_task(config, runtime)


@pytest.mark.parametrize('benchmark,name', ALL_RECIPES)
def test_recipe_builds_its_task_schedule_and_log_keys(benchmark, name):
  """Every recipe: the task builds on one CPU device with synthetic input."""
  config, _, task = build(benchmark, name)
  batch = task.input_spec(eval=False)
  assert next(iter(batch.values())).shape[0] == config.train.global_batch_size
  blocks = task.blocks()
  assert blocks[-1].end_step >= blocks[0].end_step > 0
  assert all(isinstance(v, (int, float, str)) for v in task.hyperparameters().values())
  if config.topology:  # every pod recipe names a slice that exists
    from launch import chips
    assert chips.parse_topology(config.topology).num_chips > 0


@pytest.mark.parametrize('benchmark,name', [
    pytest.param(b, r, marks=() if (b, r) in TRACED else pytest.mark.slow) for b, r in ALL_RECIPES])
def test_recipe_train_step_shape_checks_abstractly(benchmark, name):
  """Traces the train step (jax.eval_shape): shapes and dtypes of the state are kept."""
  _, runtime, task = build(benchmark, name)
  fns = build_state_fns(task, runtime, seed=0)
  state = jax.eval_shape(fns.init)
  new_state, metrics = jax.eval_shape(fns.train_step, state, task.input_spec(eval=False))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state)
  assert metrics['loss'].shape == ()


def test_unknown_recipe_and_benchmark_name_the_valid_ones():
  with pytest.raises(ConfigError, match='valid recipes: .*digits_cpu'):
    registry.resolve('resnet50', 'nope')
  with pytest.raises(ConfigError, match='valid benchmarks: .*resnet50'):
    registry.resolve('resnet5', 'digits_cpu')


def test_overrides_parse_types_and_reject_unknown_keys():
  config = registry.resolve('resnet50', 'digits_cpu', [
      'train.global_batch_size=32', 'optimizer.base_learning_rate=3', 'model.name=resnet18',
      'data.random_flip=True', 'submission.system=my-box'])
  assert config.train.global_batch_size == 32
  assert config.optimizer.base_learning_rate == 3.0 and isinstance(config.optimizer.base_learning_rate, float)
  assert config.model.name == 'resnet18' and config.data.random_flip is True
  with pytest.raises(ConfigError, match='Did you mean train.global_batch_size'):
    registry.resolve('resnet50', 'digits_cpu', ['train.global_batch=32'])
  with pytest.raises(ConfigError, match='expected a int'):
    registry.resolve('resnet50', 'digits_cpu', ['train.global_batch_size=big'])
  with pytest.raises(ConfigError, match='expected key=value'):
    registry.resolve('resnet50', 'digits_cpu', ['train.global_batch_size'])


def test_resolved_config_is_locked():
  config = registry.resolve('resnet50', 'digits_cpu')
  with pytest.raises(AttributeError):
    config.train.not_a_field = 1


def test_digits_blocks_follow_the_eval_cadence():
  config = registry.resolve('resnet50', 'digits_cpu', ['data.synthetic=True', 'data.prepare=""',
                                                        'train.eval_every_epochs=4',
                                                        'train.eval_offset_epochs=1',
                                                        'train.max_epochs=10'])
  runtime = Runtime(make_mesh({'data': 1}, jax.devices()[:1]), logical_axis_rules('data_parallel'))
  task = registry.load_benchmark('resnet50').build_task(config, runtime)
  blocks = task.blocks()
  assert [(b.start_metadata['first_epoch_num'], b.start_metadata['epoch_count']) for b in blocks] == [
      (1, 3), (4, 4), (8, 3)]
  assert [b.eval_metadata['epoch_num'] for b in blocks] == [3, 7, 10]
  # 1,500 digits at batch 64: epoch 3 ends in step 71 (70.3 steps).
  assert [b.end_step for b in blocks] == [71, 165, 235]


def test_podium_recipes_lists_every_recipe_with_its_summary(capsys):
  from launch import cli
  assert cli.main(['recipes']) == 0
  out = capsys.readouterr().out
  for benchmark, name in ALL_RECIPES:
    assert f'  {name} ' in out
  assert cli.main(['recipes', 'resnet50', '-v']) == 0
  assert 'rcps_resnet.json' in capsys.readouterr().out
