"""`podium bench`: the machinery that measures podium beside PyTorch and the input pipeline.

Numbers are not asserted (they belong to `make bench`, on a quiet machine); what is: every
measurement is taken and written, each PyTorch twin trains on inputs of the shapes podium's
step gets, the pipeline variants decode the same records, and the tables say what was
measured."""

import json
import re

import numpy as np
import pytest

from benchmarks import bench


# What podium's batch holds -> the twin's input of the same data (None: drawn inside the step).
_SAME_INPUT = {
    'resnet50': {'image': 'pixel_values', 'label': 'labels'},
    'regnet': {'image': 'pixel_values', 'label': 'labels'},
    'bert': {key: key for key in ('input_ids', 'input_mask', 'segment_ids', 'masked_lm_positions',
                                  'masked_lm_ids', 'masked_lm_weights', 'next_sentence_labels')},
    'wav2vec2': {'audio': 'input_values'},
}


@pytest.mark.parametrize('name', sorted(bench.CASES))
def test_pytorch_twin_trains_on_podiums_input_shapes(name):
  """The twin of every case builds from podium's (quick) config, takes inputs of the shapes
  of podium's batch (images are NCHW there, NHWC in podium), and one train step moves its
  parameters."""
  import torch
  from benchmarks import registry
  from launch import runtime as runtime_lib
  import jax
  case = bench.CASES[name]
  config = bench._config(case, quick=True, extra=('train.global_batch_size=2',
                                                    'train.eval_batch_size=2'))
  runtime = runtime_lib.Runtime.from_config(config, devices=jax.devices()[:1])
  task = registry.load_benchmark(case.benchmark).build_task(config, runtime)
  spec = task.input_spec(eval=False)
  task.close()
  twin = case.torch_step(config, 2, 'cpu')
  for ours, theirs in _SAME_INPUT[name].items():
    shape = tuple(spec[ours].shape)
    if ours == 'image':
      shape = (shape[0], shape[3], shape[1], shape[2])
    assert tuple(twin.inputs[theirs].shape) == shape, (ours, theirs)
  twin.model.train()
  before = [p.detach().clone() for p in twin.model.parameters()]
  loss = twin.loss_of(twin.model(**twin.inputs))
  assert torch.isfinite(loss)
  loss.backward()
  twin.optimizer.step()
  moved = sum(not torch.equal(a, b.detach()) for a, b in zip(before, twin.model.parameters()))
  assert moved > len(before) // 2


def test_bench_runs_podium_and_pytorch_side_by_side(tmp_path):
  """The whole command path on the cheapest case: podium's compiled step and PyTorch eager,
  interleaved; JSON, the table row and the plot are written."""
  results = bench.run(['bert'], dtype='float32', rounds=2, per_round=1, warmup=0,
                      out_dir=str(tmp_path), torch_modes=('eager',), pipelines=False, quick=True,
                      overrides=('model.attention_dropout=0.0',))
  row = results['models'][0]
  podium, eager = row['podium'], row['torch_eager']
  assert podium['examples_per_s'] > 0 and podium['model_flops_per_step'] > 0
  assert podium['step_memory_bytes'] > 0 and podium['compile_s'] > 0
  assert len(podium['step_times_s']) == len(eager['step_times_s']) == 2
  assert podium['threads'] == eager['threads']  # PyTorch gets XLA's intra-op thread count
  assert row['ratio_vs_torch_eager'] == pytest.approx(eager['step_s'] / podium['step_s'])
  assert len(row['round_ratios_vs_torch_eager']) == 2
  assert np.isfinite(podium['mfu']) and podium['mfu'] > 0
  saved = json.loads((tmp_path / 'bench.json').read_text())
  assert saved['models'][0]['model'] == 'bert' and saved['load_average']
  table = (tmp_path / 'bench.md').read_text()
  assert '| bert | float32 | 2 | 2 layers, seq 32 |' in table
  assert f'{row["ratio_vs_torch_eager"]:.2f}x' in table and "podium's LAMB written for PyTorch" in table
  assert row['overrides'] == ['model.attention_dropout=0.0']
  assert '- bert: measured with model.attention_dropout=0.0' in table
  assert (tmp_path / 'bench.png').stat().st_size > 0


def test_unknown_model_is_named():
  from benchmarks.config import ConfigError
  with pytest.raises(ConfigError, match=r"unknown model\(s\) \['vgg'\]; valid: resnet50"):
    bench.run(['vgg'], out_dir='/nonexistent', pipelines=False)


@pytest.mark.slow
def test_bench_quick_measures_every_model_and_both_pytorch_modes(tmp_path):
  results = bench.run(None, rounds=1, per_round=1, warmup=1, out_dir=str(tmp_path),
                      pipelines=False, quick=True)
  assert [row['model'] for row in results['models']] == list(bench.CASES)
  for row in results['models']:
    assert row['podium']['examples_per_s'] > 0
    for key in ('torch_eager', 'torch_compile'):
      assert row[key] is not None, row.get(f'{key}_error')
      assert row[key]['examples_per_s'] > 0
  table = (tmp_path / 'bench.md').read_text()
  assert all(f'| {name} |' in table for name in bench.CASES)


@pytest.mark.parametrize('shape, kernel, stride, groups, padding', [
    ((2, 9, 9, 12), (3, 3, 4, 6), 2, 3, ((1, 1), (1, 1))),   # RegNet's strided 3x3 group conv
    ((2, 17, 8), (6, 2, 8), 1, 4, ((3, 2),)),                 # wav2vec2's even-kernel pos conv
    ((2, 30, 8), (12, 2, 8), 1, 4, ((6, 5),)),                # a window of > 9 positions:
])                                                            # stacked patches, one matmul
def test_grouped_conv_gradients_equal_xlas(shape, kernel, stride, groups, padding):
  """The CPU fix behind RegNet's and wav2vec2's bench rows: layers' grouped convolution
  computes the kernel gradient from matmuls of input patches (one per window position for
  small windows, one of the stacked patches for long ones); both gradients equal XLA's."""
  import jax
  import jax.numpy as jnp
  from models import layers
  spatial = len(shape) - 2
  numbers = ('NHWC', 'HWIO', 'NHWC') if spatial == 2 else ('NWC', 'WIO', 'NWC')
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)

  def grads(conv):
    def loss(x, w):
      return jnp.sum(jnp.sin(conv(x, w, (stride,) * spatial, padding, dimension_numbers=numbers,
                                  feature_group_count=groups)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

  ours = grads(layers.grouped_conv_general_dilated)
  theirs = grads(jax.lax.conv_general_dilated)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  hlo = jax.jit(jax.grad(lambda w: jnp.sum(layers.grouped_conv_general_dilated(
      x, w, (stride,) * spatial, padding, dimension_numbers=numbers,
      feature_group_count=groups)))).lower(w).as_text()
  # No convolution is left in the kernel gradient: neither XLA:CPU's slow batch-group one nor
  # the depthwise one of lax.conv_general_dilated_patches (45% of RegNet's step): slices.
  assert 'convolution' not in hlo and 'dot_general' in hlo


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_batch_norm_training_equals_nnxs(dtype):
  """The CPU fix behind ResNet's and RegNet's bench rows: layers.BatchNorm's hand-written
  backward (reductions as matmuls on CPU) gives nnx.BatchNorm's outputs, running
  statistics and gradients; its evaluation path is nnx's own."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 6, 5, 8)) * 3 + 1, dtype)
  ours, theirs = (cls(8, momentum=0.8, rngs=nnx.Rngs(0)) for cls in (layers.BatchNorm, nnx.BatchNorm))
  for bn in (ours, theirs):
    bn.scale[...] = jnp.linspace(0.5, 2.0, 8)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, 8)

  def loss(bn, x):
    y = bn(x, use_running_average=False)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

  (_, y_ours), g_ours = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(ours, x)
  (_, y_theirs), g_theirs = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(theirs, x)
  tolerance = 1e-5 if dtype == 'float32' else 2e-2
  np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                             rtol=tolerance, atol=tolerance)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tolerance, atol=tolerance)
  for name in ('mean', 'var'):
    np.testing.assert_allclose(getattr(ours, name)[...], getattr(theirs, name)[...], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_allclose(ours(x, use_running_average=True),
                             theirs(x, use_running_average=True), rtol=1e-6, atol=1e-6)


def test_batch_norm_backward_with_statistics_cotangents_and_no_reduce_window_on_cpu():
  """batch_norm_train's gradient is right when its mean and variance are used too (checked
  against finite differences), and with podium's XLA flags (YNNPACK's reduce fusion on)
  XLA:CPU compiles its reductions without its slow reduce-window trees."""
  import jax
  import jax.numpy as jnp
  from jax.test_util import check_grads
  from models import layers
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 4, 5)) * 2 + 0.5, jnp.float64
                  if jax.config.jax_enable_x64 else jnp.float32)
  scale = jnp.linspace(0.5, 2.0, 5, dtype=x.dtype)
  bias = jnp.linspace(-1.0, 1.0, 5, dtype=x.dtype)
  check_grads(lambda x, s, b: layers.batch_norm_train(x, s, b, 1e-5), (x, scale, bias),
              order=1, modes=['rev'], atol=2e-2, rtol=2e-2)

  def step(x, s, b):
    y, mean, var = layers.batch_norm_train(x, s, b, 1e-5)
    return jnp.sum(y * y) + jnp.sum(mean) + jnp.sum(var)

  big = jnp.ones((4, 56, 56, 64), jnp.float32)
  hlo = jax.jit(jax.grad(step, argnums=(0, 1, 2))).lower(
      big, jnp.ones(64), jnp.zeros(64)).compile().as_text()
  assert 'reduce-window' not in hlo


def _optimizer_parity(podium_tx, make_torch, *, steps: int = 3):
  """Runs podium's optax chain and its PyTorch twin on the same parameters and gradients;
  returns the largest difference in the parameters after `steps` updates."""
  import jax
  import jax.numpy as jnp
  import optax
  import torch
  rng = np.random.default_rng(0)
  # Kernels, biases, norm scales and an all-zero kernel (the trust ratio's 0/0 case).
  shapes = {'dense/kernel': (6, 5), 'dense/bias': (5,), 'conv/kernel': (3, 3, 2, 4),
            'LayerNorm/scale': (4,), 'zero/kernel': (2, 3)}
  values = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  values['zero/kernel'][:] = 0
  grads = [{k: rng.standard_normal(s).astype(np.float32) * 3 for k, s in shapes.items()}
           for _ in range(steps)]

  def nested(flat):
    tree = {}
    for key, value in flat.items():
      outer, inner = key.split('/')
      tree.setdefault(outer, {})[inner] = jnp.asarray(value)
    return tree

  params = nested(values)
  state = podium_tx.init(params)
  for grad in grads:
    updates, state = podium_tx.update(nested(grad), state, params)
    params = optax.apply_updates(params, updates)

  torch_params = {k.replace('/', '.'): torch.nn.Parameter(torch.tensor(v))
                  for k, v in values.items()}
  optimizer = make_torch(torch_params)
  for grad in grads:
    for key, param in torch_params.items():
      param.grad = torch.tensor(grad[key.replace('.', '/')])
    optimizer.step()
  return max(float(np.max(np.abs(np.asarray(params[k.split('/')[0]][k.split('/')[1]])
                                 - torch_params[k.replace('/', '.')].detach().numpy())))
             for k in shapes)


@pytest.mark.parametrize('nesterov', [False, True])
def test_pytorch_lars_updates_as_podiums(nesterov):
  """The ResNet twin's LARS is podium's (optax.lars with MLPerf's masks), step for step."""
  from benchmarks import optimizers, torch_optimizers
  kw = dict(momentum=0.9, weight_decay=0.05, trust_coefficient=0.01, nesterov=nesterov)
  gap = _optimizer_parity(
      optimizers.lars(0.5, **kw),
      lambda named: torch_optimizers.Lars(named.values(), lr=0.5, **kw))
  assert gap < 5e-6  # float32 rounding: the two sides order their operations differently


@pytest.mark.parametrize('clip_norm', [1.0, None])
def test_pytorch_lamb_updates_as_podiums(clip_norm):
  """The BERT twin's LAMB is podium's (clipping, Adam, decay and trust ratio except for
  LayerNorm parameters and biases), step for step."""
  from benchmarks import optimizers, torch_optimizers
  kw = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=0.01)
  gap = _optimizer_parity(
      optimizers.lamb(0.05, clip_norm=clip_norm, **kw),
      lambda named: torch_optimizers.Lamb(
          named.items(), lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
          exclude=optimizers.BERT_EXCLUDE_FROM_WEIGHT_DECAY, clip_norm=clip_norm))
  assert gap < 5e-6  # float32 rounding: the two sides order their operations differently
