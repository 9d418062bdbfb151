"""ResNet v1.5 (models/resnet.py) and the shared layer helpers (models/layers.py)."""

import functools
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from models import layers
from models.resnet import RESNET_CONFIGS, ResNet, resnet

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGICAL_NAMES = {None, 'conv_in', 'conv_out', 'embed', 'classes'}
MESH_AXES = ('data', 'fsdp', 'tensor')
RULES = (('batch', 'data'), ('conv_out', 'tensor'), ('conv_in', None), ('embed', None),
         ('classes', None))

# torchvision's published counts (torchvision.models.resnetNN().parameters()).
PARAM_COUNTS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
}


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(name: str | int, num_classes: int = 1000, dtype=jnp.float32, **kw) -> ResNet:
  """Shapes only, no initialisation; cached because deep models take seconds to trace.

  Callers must not mutate the result.
  """
  return _abstract(name, num_classes, jnp.dtype(dtype), tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _abstract(name, num_classes, dtype, kw) -> ResNet:
  return nnx.eval_shape(
      lambda: resnet(name, num_classes=num_classes, dtype=dtype, rngs=nnx.Rngs(0), **dict(kw)))


def build_tiny(**kw) -> ResNet:
  """A concrete resnet_tiny. Eager initialisation compiles one random-number program per
  kernel shape; XLA:CPU compiles 'rbg' keys several times faster than threefry ones."""
  return resnet('resnet_tiny', num_classes=10, rngs=nnx.Rngs(jax.random.key(0, impl='rbg')),
                **kw)


@pytest.fixture(scope='module')
def tiny() -> ResNet:
  return build_tiny()


def images(n=4, size=16, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_count_matches_torchvision(name):
  assert count_params(abstract(name)) == PARAM_COUNTS[name]


@pytest.mark.parametrize('depth,layer_type,hidden_sizes', [
    (18, 'basic', [64, 128, 256, 512]),
    (50, 'bottleneck', [256, 512, 1024, 2048]),
])
def test_param_count_matches_transformers(depth, layer_type, hidden_sizes):
  """The numbers above, checked against a real PyTorch reference rather than trusted."""
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  config = transformers.ResNetConfig(
      layer_type=layer_type, depths=list(RESNET_CONFIGS[f'resnet{depth}']['stage_sizes']),
      hidden_sizes=hidden_sizes, embedding_size=64, num_labels=1000)
  reference = transformers.ResNetForImageClassification(config)
  expected = sum(p.numel() for p in reference.parameters())
  assert expected == PARAM_COUNTS[f'resnet{depth}']
  assert count_params(abstract(f'resnet{depth}')) == expected


@pytest.mark.parametrize('name', sorted(RESNET_CONFIGS))
def test_every_config_builds_and_shape_checks_abstractly(name):
  """Eval mode for every config; train mode and bf16 where tracing is quick."""
  size = 32 if RESNET_CONFIGS[name].get('stem') == 'small' else 64
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  modes = [(jnp.float32, False)]
  if name in ('resnet_tiny', 'resnet18', 'resnet50'):
    modes += [(jnp.float32, True), (jnp.bfloat16, True), (jnp.bfloat16, False)]
  for dtype, train in modes:
    model = abstract(name, dtype=dtype)
    out = nnx.eval_shape(lambda m, x, train=train: m(x, train=train), model, x)
    assert (out.shape, out.dtype) == ((2, 1000), jnp.float32), (dtype, train)


def test_factory():
  assert count_params(abstract(50)) == PARAM_COUNTS['resnet50']
  assert abstract('resnet18', width=32).stem.conv.kernel.shape == (7, 7, 3, 32)
  with pytest.raises(ValueError, match=r"Unknown ResNet 7; registered: \['resnet101'"):
    resnet(7, num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="block='dense'.*basic"):
    ResNet(stage_sizes=(1,), block='dense', num_classes=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stem='cifar'.*imagenet"):
    ResNet(stage_sizes=(1,), block='basic', stem='cifar', num_classes=2, rngs=nnx.Rngs(0))


def test_parameter_tree_names():
  model = abstract('resnet50')
  paths = {'.'.join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model))}
  for expected in ('stem.conv.kernel', 'stem.bn.scale', 'stem.bn.mean',
                   'stages.0.0.conv3.kernel', 'stages.0.0.shortcut.conv.kernel',
                   'stages.3.2.bn3.var', 'head.kernel', 'head.bias'):
    assert expected in paths
  assert 'stages.0.1.shortcut.conv.kernel' not in paths  # identity shortcut


def test_v1_5_downsamples_in_the_3x3_conv():
  block = abstract('resnet50').stages[1][0]
  assert (block.conv1.strides, block.conv2.strides, block.shortcut.conv.strides) == (1, 2, 2)
  assert block.conv2.padding == [(1, 1), (1, 1)]  # PyTorch's symmetric padding, not 'SAME'


def test_stems():
  imagenet, small = abstract('resnet18'), abstract('resnet_tiny')
  assert imagenet.stem.conv.kernel.shape == (7, 7, 3, 64) and imagenet.stem.max_pool
  assert small.stem.conv.kernel.shape == (3, 3, 3, 16) and not small.stem.max_pool
  assert small.stem.conv.strides == 1


def test_zero_init_residual(tiny):
  assert all(np.all(block.bn2.scale[...] == 0) for stage in tiny.stages for block in stage)
  plain = build_tiny(zero_init_residual=False)
  assert all(np.all(block.bn2.scale[...] == 1) for stage in plain.stages for block in stage)


def test_every_variable_has_logical_partition_names_only():
  model = abstract('resnet50')
  for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
    names = var.get_metadata().get('out_sharding')
    where = '.'.join(map(str, path))
    assert names is not None, f'{where} has no partition metadata'
    assert len(names) == len(var.shape), where
    assert set(names) <= LOGICAL_NAMES, f'{where}: {names}'
  assert model.stem.conv.kernel.get_metadata()['out_sharding'] == (
      None, None, 'conv_in', 'conv_out')
  assert model.stem.bn.scale.get_metadata()['out_sharding'] == ('conv_out',)
  assert model.head.kernel.get_metadata()['out_sharding'] == ('embed', 'classes')
  assert model.head.bias.get_metadata()['out_sharding'] == ('classes',)


def test_model_code_never_names_mesh_axes():
  pattern = re.compile(r"""['"](%s)['"]""" % '|'.join(MESH_AXES))
  for path in (ROOT / 'models').rglob('*.py'):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      assert not pattern.search(line), f'{path.relative_to(ROOT)}:{number}: {line.strip()}'


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_forward_shapes_and_dtypes(tiny, dtype):
  model = nnx.clone(tiny)
  if dtype != jnp.float32:
    model = build_tiny(dtype=dtype)
  for train in (True, False):
    logits = model(images(), train=train)
    assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
    assert np.all(np.isfinite(logits))
  for _, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
    assert var.dtype == jnp.float32  # params and running statistics stay float32


def test_bf16_convs_compute_in_bf16_and_batchnorm_in_f32():
  model = abstract('resnet_tiny', num_classes=10, dtype=jnp.bfloat16)
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(
      lambda s, x: nnx.merge(graphdef, s)(x, train=True))(state, images())

  def equations(jaxpr):  # with those inside custom_vjp calls (layers.batch_norm_train)
    for e in jaxpr.eqns:
      yield e
      for value in e.params.values():
        inner = getattr(value, 'jaxpr', None)
        if inner is not None and hasattr(inner, 'eqns'):
          yield from equations(inner)

  eqns = list(equations(jaxpr.jaxpr))
  convs = [e for e in eqns if e.primitive.name == 'conv_general_dilated']
  assert convs and all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
  rsqrts = [e for e in eqns if e.primitive.name == 'rsqrt']
  assert rsqrts and all(e.outvars[0].aval.dtype == jnp.float32 for e in rsqrts)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(tiny):
  model = nnx.clone(tiny)
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  model(images(), train=False)
  after_eval = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)

  x = images()
  model(x, train=True)
  # The stem BN's running mean moved 10% (momentum 0.9) towards the batch mean.
  stem_out = model.stem.conv(x)
  np.testing.assert_allclose(model.stem.bn.mean[...], 0.1 * stem_out.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                         before, nnx.state(model, nnx.BatchStat))
  assert all(jax.tree.leaves(changed))


def test_train_mode_normalises_with_batch_statistics(tiny):
  """Train-mode output ignores running statistics; eval-mode output depends on them."""
  model, x = nnx.clone(tiny), images()
  train_before, eval_before = model(x, train=True), model(x, train=False)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    var[...] = var[...] * 3.0 + 1.0
  np.testing.assert_allclose(model(x, train=True), train_before, rtol=1e-5, atol=1e-5)
  assert not np.allclose(model(x, train=False), eval_before, atol=1e-3)


def test_with_logical_constraint_is_a_no_op_without_rules_and_mesh():
  x = jnp.ones((8, 4, 4, 16))
  names = ('batch', None, None, 'conv_out')
  assert layers.with_logical_constraint(x, names) is x
  with linen.logical_axis_rules(RULES):  # rules but no mesh
    assert layers.with_logical_constraint(x, names) is x
  jaxpr = jax.make_jaxpr(lambda x: layers.with_logical_constraint(x * 2, names))(x)
  assert 'sharding_constraint' not in str(jaxpr)
  with pytest.raises(ValueError, match=r'2 axis names .* rank 4'):
    layers.with_logical_constraint(x, ('batch', None))


def _rerun_with_8_devices(test_name: str) -> None:
  """Runs one test of this file in a fresh process that has 8 CPU devices."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=' '.join(flags + ['--xla_force_host_platform_device_count=8']))
  result = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
       f'{__file__}::{test_name}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def _mesh():
  return jax.make_mesh((4, 2), ('data', 'tensor'), axis_types=(AxisType.Auto,) * 2)


def test_with_logical_constraint_inside_jit_with_mesh_and_rules():
  if jax.device_count() < 8:
    return _rerun_with_8_devices('test_with_logical_constraint_inside_jit_with_mesh_and_rules')
  names = ('batch', None, None, 'conv_out')
  x = jnp.ones((8, 4, 4, 16))
  with linen.logical_axis_rules(RULES), jax.set_mesh(_mesh()):
    fn = jax.jit(lambda x: layers.with_logical_constraint(x * 2, names))
    assert "spec=P('data', None, None, 'tensor')" in str(fn.trace(x).jaxpr)
    assert fn(x).sharding.spec == P('data', None, None, 'tensor')


def test_sharded_training_forward_matches_one_device():
  """Under GSPMD the model's BatchNorm statistics are global-batch statistics."""
  if jax.device_count() < 8:
    return _rerun_with_8_devices('test_sharded_training_forward_matches_one_device')
  model = build_tiny(zero_init_residual=False)
  graphdef, state = nnx.split(model)
  x = images(n=8)

  def forward(state, x):
    model = nnx.merge(graphdef, state)
    return model(x, train=True), nnx.state(model, nnx.BatchStat)

  one_device = jax.jit(forward)(state, x)
  mesh = _mesh()
  with linen.logical_axis_rules(RULES):
    specs = nnx.get_partition_spec(state)
  assert specs['stages'][1][0]['conv1']['kernel'].get_value() == P(None, None, None, 'tensor')
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)
  with linen.logical_axis_rules(RULES), jax.set_mesh(mesh):
    sharded_state = jax.device_put(state, shardings)
    sharded_x = jax.device_put(x, NamedSharding(mesh, P('data')))
    step = jax.jit(forward)
    sharded = step(sharded_state, sharded_x)
    hlo = step.lower(sharded_state, sharded_x).compile().as_text()
  assert 'all-reduce' in hlo  # batch statistics are reduced across the data axis
  assert sharded[0].sharding.spec[0] == 'data'  # logits stay batch-sharded
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               sharded, one_device)
