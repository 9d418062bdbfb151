"""BERT under tensor parallelism on 8 simulated CPU devices: heads, MLP units and vocabulary
split over `tensor` (Megatron style), and the train step, with gradient accumulation, still
trains like one device."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import registry
from benchmarks.train import jit_steps
from launch.runtime import Runtime, logical_axis_rules, make_mesh

LAYOUTS = {
    'one_device': ({'data': 1}, 'data_parallel', 1),
    'data2_tensor4': ({'data': 2, 'tensor': 4}, 'tensor_parallel', 8),
    'fsdp2_tensor4': ({'fsdp': 2, 'tensor': 4}, 'fsdp_tensor_parallel', 8),
}
OVERRIDES = ['data.synthetic=True', 'data.prepare=""', 'train.global_batch_size=8',
             'train.eval_batch_size=8', 'train.gradient_accumulation_steps=2',
             'model.vocab_size=96', 'model.hidden_size=32', 'model.num_heads=4',
             'model.intermediate_size=64', 'model.max_position_embeddings=16',
             'data.max_seq_length=16', 'data.max_predictions_per_seq=4']


@functools.lru_cache(maxsize=None)
def jitted(layout):
  axes, rules, devices = LAYOUTS[layout]
  config = registry.resolve('bert', 'tiny_cpu', [*OVERRIDES, f'sharding_rules={rules}'])
  runtime = Runtime(make_mesh(axes, jax.devices()[:devices]), logical_axis_rules(rules))
  task = registry.load_benchmark('bert').build_task(config, runtime)
  return task, runtime, jit_steps(task, runtime, seed=0)


@functools.lru_cache(maxsize=None)
def compiled(layout):
  task, runtime, steps = jitted(layout)
  with runtime.activate():
    step = steps.train.lower(steps.abstract_state(), steps.global_batch_spec(task)).compile()
  return task, runtime, steps, step


def run(layout, batches):
  task, runtime, steps, step = compiled(layout)
  state = steps.init()
  losses = []
  for batch in batches:
    state, metrics = step(state, runtime.global_batch(batch))
    losses.append(float(metrics['loss']))
  return state, np.array(losses), step.as_text()


@pytest.fixture(scope='module')
def batches():
  task, _, _ = jitted('one_device')
  rng = np.random.default_rng(0)
  out = []
  for i in range(3):
    batch = task._synthetic(8)
    batch['input_ids'] = rng.integers(0, 96, batch['input_ids'].shape).astype(np.int32)
    out.append(batch)
  return out


def test_parameters_split_by_head_mlp_and_vocab():
  _, _, steps = jitted('data2_tensor4')
  params = steps.state_shardings['params']
  attention = params['layers'][0]['attention']
  assert attention['query']['kernel'].spec == P(None, 'tensor', None)
  assert attention['output']['kernel'].spec == P('tensor', None, None)
  assert params['layers'][0]['intermediate']['kernel'].spec == P(None, 'tensor')
  assert params['layers'][0]['output']['kernel'].spec == P('tensor', None)
  assert params['embeddings']['word']['embedding'].spec == P('tensor', None)
  assert params['mlm_bias'].spec == P('tensor')
  _, _, both = jitted('fsdp2_tensor4')
  assert both.state_shardings['params']['layers'][0]['intermediate']['kernel'].spec == P('fsdp', 'tensor')


@pytest.mark.slow  # three compiles on 8 simulated devices: minutes on 2 busy cores
@pytest.mark.parametrize('layout', ['data2_tensor4', 'fsdp2_tensor4'])
def test_tensor_parallel_trains_like_one_device(layout, batches):
  state0, losses0, _ = run('one_device', batches)
  state, losses, hlo = run(layout, batches)
  np.testing.assert_allclose(losses, losses0, rtol=1e-5, atol=1e-5)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       jax.device_get(state['params']), jax.device_get(state0['params']))
  assert max(jax.tree.leaves(diffs)) < 1e-4, diffs
  assert 'all-reduce' in hlo
