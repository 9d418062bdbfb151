"""GSPMD on 8 simulated CPU devices: data, FSDP and mixed layouts train like one device,
compile to the collectives they need, and FSDP divides the per-device state."""

import functools

import jax
import numpy as np
import pytest

from benchmarks import registry
from benchmarks.train import build_state_fns, jit_steps
from launch.runtime import Runtime, logical_axis_rules, make_mesh

LAYOUTS = {
    'one_device': ({'data': 1}, 'data_parallel', 1),
    'data8': ({'data': 8}, 'data_parallel', 8),
    'fsdp8': ({'fsdp': 8}, 'fsdp', 8),
    'data2_fsdp4': ({'data': 2, 'fsdp': 4}, 'fsdp', 8),
}


def task_for(layout, overrides=()):
  axes, rules, devices = LAYOUTS[layout]
  config = registry.resolve('resnet50', 'digits_cpu', [
      'data.synthetic=True', 'data.prepare=""', 'train.global_batch_size=16',
      'train.eval_batch_size=16', f'sharding_rules={rules}', *overrides])
  runtime = Runtime(make_mesh(axes, jax.devices()[:devices]), logical_axis_rules(rules))
  return registry.load_benchmark('resnet50').build_task(config, runtime), runtime


@functools.lru_cache(maxsize=None)
def compiled_train_step(layout):
  """The loop's train step, jitted with the loop's shardings (eval is not needed here)."""
  task, runtime = task_for(layout)
  steps = jit_steps(task, runtime, seed=0)
  with runtime.activate():
    compiled = steps.train.lower(steps.abstract_state(), steps.global_batch_spec(task)).compile()
  return runtime, steps.init, compiled


def train_steps(layout, batches):
  runtime, init, step = compiled_train_step(layout)
  state = init()
  losses = []
  for batch in batches:
    state, metrics = step(state, runtime.global_batch(batch))
    losses.append(float(metrics['loss']))
  return jax.device_get(state['params']), np.array(losses), step.as_text()


@pytest.fixture(scope='module')
def reference_batches():
  rng = np.random.default_rng(0)
  # uint8 pixels: what the ImageNet pipeline sends (data.transfer_dtype); the step normalises.
  return [{'image': rng.integers(0, 256, size=(16, 16, 16, 3)).astype(np.uint8),
           'label': rng.integers(0, 10, size=(16,)).astype(np.int32)} for _ in range(4)]


@pytest.fixture(scope='module')
def one_device(reference_batches):
  return train_steps('one_device', reference_batches)


@pytest.mark.parametrize('layout,collective', [
    ('data8', 'all-reduce'), ('fsdp8', 'all-gather'), ('data2_fsdp4', 'all-gather')])
def test_layout_matches_one_device_and_has_its_collectives(layout, collective, one_device,
                                                             reference_batches):
  params0, losses0, _ = one_device
  params, losses, hlo = train_steps(layout, reference_batches)
  # Tolerance: float32 sums in another order over 4 LARS steps (trust ratios amplify a little).
  np.testing.assert_allclose(losses, losses0, rtol=2e-5, atol=2e-6)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, params0)
  assert max(jax.tree.leaves(diffs)) < 5e-5, diffs
  assert collective in hlo
  assert 'all-reduce' in hlo  # gradients and BatchNorm statistics over the global batch


def _argument_bytes(layout):
  _, _, compiled = compiled_train_step(layout)
  return compiled.memory_analysis().argument_size_in_bytes


def test_fsdp_divides_the_per_device_state():
  replicated, fsdp = _argument_bytes('data8'), _argument_bytes('fsdp8')
  assert fsdp <= replicated / 6, (fsdp, replicated)


def test_dimension_the_mesh_cannot_divide_is_replicated():
  task, runtime = task_for('fsdp8')
  shardings = build_state_fns(task, runtime, seed=0).state_shardings
  head_bias = shardings['params']['head']['bias']   # 10 classes, not a multiple of 8
  kernel = shardings['params']['stem']['conv']['kernel']
  assert head_bias.spec == jax.sharding.PartitionSpec(None)
  assert kernel.spec[-1] == 'fsdp'
