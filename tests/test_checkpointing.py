"""Checkpoint pieces in one process: failed saves, finding the run to resume, the
checkpoint interval, gradient accumulation and starting from given parameters."""

import errno
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks import checkpointing, registry
from benchmarks.config import ConfigError
from benchmarks.task import Block, Task
from benchmarks.train import checkpoint_interval, compile_steps, jit_steps
from launch.runtime import Runtime, logical_axis_rules, make_mesh
from models import layers


def sharded_state(size=64):
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  values = np.random.default_rng(0).normal(size=size).astype(np.float32)  # incompressible
  return {'step': jnp.asarray(3, jnp.int32), 'params': {'w': jax.device_put(values, sharding)}}


def abstract(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch, capsys):
  saver = checkpointing.Checkpointer(tmp_path / 'ckpt', keep=3)
  state = sharded_state()
  assert saver.save(10, state, {'step': 10}, wait=True)

  from orbax.checkpoint import JsonCheckpointHandler
  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(JsonCheckpointHandler, 'save', disk_full)
  monkeypatch.setattr(JsonCheckpointHandler, 'async_save', disk_full, raising=False)
  saver.save(20, state, {'step': 20}, wait=True)
  saver.wait()
  monkeypatch.undo()

  assert saver.failures and 'No space left on device' in saver.failures[0]
  assert 'the checkpoint of step 10 is still usable' in saver.failures[0]
  assert 'warning' in capsys.readouterr().out
  assert saver.latest_step() == 10
  assert checkpointing.latest_step(tmp_path / 'ckpt') == 10
  restored, progress = saver.restore(10, abstract(state))
  assert progress == {'step': 10}
  np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
  assert restored['params']['w'].sharding == state['params']['w'].sharding
  saver.close()


def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
  """On a 1 MiB tmpfs: the second 600 KB save runs out of space for real."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(disk)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip('cannot mount a tmpfs here (needs root); the simulated test covers it')
  try:
    saver = checkpointing.Checkpointer(disk / 'ckpt', keep=3)
    state = sharded_state(size=160_000)  # 640 KB of float32
    assert saver.save(1, state, {'step': 1}, wait=True)
    saver.save(2, state, {'step': 2}, wait=True)
    saver.wait()
    assert saver.failures, 'the second save should not fit in 1 MiB'
    assert saver.latest_step() == 1
    restored, _ = saver.restore(1, abstract(state))
    np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
    saver.close()
  finally:
    subprocess.run(['umount', str(disk)], check=False)


def write_state(root, index, **fields):
  run_dir = root / f'result_{index}'
  (run_dir / 'checkpoints' / '5').mkdir(parents=True)
  (run_dir / 'checkpoints' / '5' / '_CHECKPOINT_METADATA').write_text('{}')
  data = dict(result_index=index, config_hash='abc', status='running', pid=1, host='elsewhere',
              checkpoint_dir=str(run_dir / 'checkpoints'))
  data.update(fields)
  (run_dir / checkpointing.RUN_STATE_FILE).write_text(json.dumps(data))
  return run_dir


def test_find_resumable_takes_the_newest_unfinished_run_of_the_same_config(tmp_path):
  write_state(tmp_path, 0)
  write_state(tmp_path, 1, status='finished')
  write_state(tmp_path, 2, config_hash='other')
  write_state(tmp_path, 3, host=os.uname().nodename, pid=os.getppid())  # still running here
  found, notes = checkpointing.find_resumable(tmp_path, 'abc')
  assert found.result_index == 0
  assert any('result_2' in note and 'another config' in note for note in notes)
  assert any('result_3' in note and 'still running' in note for note in notes)
  assert checkpointing.find_resumable(tmp_path, 'nothing')[0] is None


def test_unfinished_run_without_a_complete_checkpoint_is_not_resumed(tmp_path):
  run_dir = write_state(tmp_path, 0)
  (run_dir / 'checkpoints' / '5' / '_CHECKPOINT_METADATA').unlink()  # save never finished
  assert checkpointing.find_resumable(tmp_path, 'abc')[0] is None


def digits_task(overrides=()):
  config = registry.resolve('resnet50', 'digits_cpu',
                            ['data.synthetic=True', 'data.prepare=""', *overrides])
  runtime = Runtime(make_mesh({'data': 1}, jax.devices()[:1]),
                    logical_axis_rules(config.sharding_rules))
  return config, registry.load_benchmark('resnet50').build_task(config, runtime)


def test_checkpoint_interval_from_steps_or_epochs():
  config, task = digits_task(['checkpoint.every_steps=7'])
  assert checkpoint_interval(config, task) == 7
  config, task = digits_task(['checkpoint.every_epochs=2.0'])  # 1500 examples, batch 64
  assert checkpoint_interval(config, task) == round(2 * 1500 / 64)
  config, task = digits_task()
  assert checkpoint_interval(config, task) == 0
  for bad, message in [(['checkpoint.every_steps=5', 'checkpoint.every_epochs=1.0'], 'not both'),
                       (['checkpoint.resume=sometimes'], "valid: 'auto', 'never'"),
                       (['checkpoint.keep=0'], 'keep >= 1')]:
    config, task = digits_task(bad)
    with pytest.raises(ConfigError, match=message):
      checkpoint_interval(config, task)


class Regression(Task):
  """Least squares with a two-layer MLP: no batch statistics, so micro-batches average exactly."""
  mlperf_benchmark, ruleset, quality_name, target, progress_unit = 'x', '4.0.0', 'mse', 0.0, 'epoch'
  global_batch_size, train_samples, eval_samples = 32, 320, 32

  def __init__(self, accum=1, initial=None):
    self.gradient_accumulation_steps = accum
    self._initial = initial

  def create_model(self, rngs):
    return nnx.Sequential(layers.dense(6, 16, axes=('embed', 'mlp'), rngs=rngs), nnx.relu,
                          layers.dense(16, 1, axes=('mlp', 'embed'), rngs=rngs))

  def optimizer(self):
    return optax.sgd(0.1, momentum=0.9)

  def learning_rate(self, step):
    return jnp.asarray(0.1)

  def loss(self, model, batch, rng):
    error = model(batch['x'])[:, 0] - batch['y']
    return jnp.mean(error ** 2), {}

  def eval_sums(self, model, batch):
    return {'sse': jnp.sum((model(batch['x'])[:, 0] - batch['y']) ** 2 * batch['mask'])}

  def quality(self, sums):
    return float(sums['sse'])

  def blocks(self):
    return [Block(10, {}, {}, 1.0)]

  def input_spec(self, *, eval):
    spec = {'x': jax.ShapeDtypeStruct((32, 6), jnp.float32), 'y': jax.ShapeDtypeStruct((32,), jnp.float32)}
    if eval:
      spec['mask'] = jax.ShapeDtypeStruct((32,), jnp.float32)
    return spec

  def train_batches(self, start_step=0):
    raise NotImplementedError('not read in these tests')

  def eval_batches(self):
    raise NotImplementedError('not read in these tests')

  def hyperparameters(self):
    return {}

  def initial_params(self):
    return self._initial


def eight_devices():
  return Runtime(make_mesh({'data': 8}, jax.devices()[:8]), logical_axis_rules('data_parallel'))


def train_regression(accum, batches):
  runtime = eight_devices()
  steps = jit_steps(Regression(accum), runtime, seed=0)
  state = steps.init()
  with runtime.activate():
    for batch in batches:
      state, metrics = steps.train(state, runtime.global_batch(batch))
  return jax.device_get(state['params']), float(metrics['loss'])


def test_gradient_accumulation_equals_the_whole_batch_step():
  rng = np.random.default_rng(0)
  batches = [{'x': rng.normal(size=(32, 6)).astype(np.float32),
              'y': rng.normal(size=(32,)).astype(np.float32)} for _ in range(3)]
  whole, whole_loss = train_regression(1, batches)
  accumulated, accumulated_loss = train_regression(4, batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               whole, accumulated)
  assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)
  with pytest.raises(ConfigError, match='divisor of 4'):
    jit_steps(Regression(3), eight_devices(), seed=0)  # 4 rows per shard


def test_training_starts_from_the_task_initial_params():
  reference = jax.device_get(jit_steps(Regression(), eight_devices(), seed=0).init()['params'])
  initial = jax.tree.map(lambda a: np.full(a.shape, 0.25, np.float32), reference)
  steps = compile_steps(Regression(initial=initial), eight_devices(), seed=0)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(steps.state['params']), initial)
  assert int(steps.state['step']) == 0

  broken = jax.tree.map(lambda a: a, initial)
  del broken['layers'][0]['bias']
  broken['layers'][2]['kernel'] = np.zeros((3, 3), np.float32)
  with pytest.raises(ConfigError, match=r"missing \['layers'\]\[0\]\['bias'\].*has shape \(3, 3\), "
                                        r"the model \(16, 1\)"):
    compile_steps(Regression(initial=broken), eight_devices(), seed=0)


@pytest.mark.parametrize('loss', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_loss_stops_the_run_naming_the_step(loss):
  from benchmarks.train import RunAborted, _check_finite
  with pytest.raises(RunAborted, match=f'the training loss is {loss} at step 7'):
    _check_finite({'loss': np.float32(loss)}, 7)
  _check_finite({'loss': np.float32(1.5)}, 7)
