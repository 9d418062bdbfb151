"""RegNet (models/regnet.py): generation from its parameters, counts, and `podium models`.

The reference is pycls 0.1.1, the code of the paper and of the model zoo: every named model
must have pycls's stage widths, depths and group widths, and its multiply-adds, parameters
and activations by pycls's own complexity functions; the counts must agree with the zoo's
published table (MODEL_ZOO.md) within 2%, and the parameters of the NNX model with the
count formulas.
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from launch import cli
from models import regnet
from models.regnet import PYCLS_ZOO, REGNET_CONFIGS, RegNetParams

pycls_config = pytest.importorskip('pycls.core.config')
pycls_net = pytest.importorskip('pycls.core.net')
pycls_regnet = pytest.importorskip('pycls.models.regnet')


def set_pycls_cfg(params: RegNetParams, image_size=224, num_classes=1000):
  """pycls builds from one global config: reset it, then describe `params` in it."""
  pycls_config.reset_cfg()
  cfg = pycls_config.cfg
  cfg.REGNET.DEPTH, cfg.REGNET.W0, cfg.REGNET.WA, cfg.REGNET.WM = (
      params.depth, params.w0, params.wa, params.wm)
  cfg.REGNET.GROUP_W, cfg.REGNET.BOT_MUL = params.group_width, params.bottleneck_multiplier
  cfg.REGNET.SE_ON, cfg.REGNET.SE_R = params.se_ratio > 0, params.se_ratio or 0.25
  cfg.REGNET.STEM_W = params.stem_width
  cfg.MODEL.NUM_CLASSES, cfg.TRAIN.IM_SIZE = num_classes, image_size


def pycls_model_args(params: RegNetParams, image_size=224, num_classes=1000):
  """pycls's RegNet.get_args() and complexity() for `params`."""
  set_pycls_cfg(params, image_size, num_classes)
  return pycls_regnet.RegNet.get_args(), pycls_net.complexity(pycls_regnet.RegNet)


@functools.lru_cache(maxsize=None)
def abstract(name: str, num_classes: int = 1000) -> regnet.RegNet:
  return nnx.eval_shape(lambda: regnet.regnet(name, num_classes=num_classes, rngs=nnx.Rngs(0)))


# -- generation ---------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(REGNET_CONFIGS))
def test_named_models_are_pyclss_stage_for_stage(name):
  params = REGNET_CONFIGS[name]
  args, cx = pycls_model_args(params)
  stages = regnet.stages(params)
  assert [s.width for s in stages] == args['ws']
  assert [s.depth for s in stages] == args['ds']
  assert [s.group_width for s in stages] == args['gws']
  assert regnet.complexity(params) == regnet.Complexity(cx['flops'], cx['params'], cx['acts'])


@settings(max_examples=300, deadline=None)
@given(depth=st.integers(1, 40), w0=st.integers(1, 60).map(lambda k: 8 * k),
       wa=st.floats(0, 150), wm=st.floats(1.05, 3.5), group_width=st.integers(1, 256),
       bottleneck_multiplier=st.sampled_from([1.0, 0.5, 0.25]))
def test_quantisation_matches_pycls_for_any_parameters(depth, w0, wa, wm, group_width,
                                                       bottleneck_multiplier):
  params = RegNetParams(depth, w0, wa, wm, group_width, bottleneck_multiplier, se_ratio=0.25)
  args, cx = pycls_model_args(params, image_size=64, num_classes=10)
  stages = regnet.stages(params)
  assert [(s.width, s.depth, s.group_width) for s in stages] == list(
      zip(args['ws'], args['ds'], args['gws']))
  assert sum(s.depth for s in stages) == depth
  assert all(s.bottleneck_width % s.group_width == 0 for s in stages)
  assert regnet.complexity(params, image_size=64, num_classes=10).flops == cx['flops']


def test_widths_snap_to_the_quantised_linear_rule():
  """RegNetX-200MF by hand: u_j = 24 + 36.44 j, k_j = round(log(u_j / 24) / log 2.49)."""
  widths = regnet.block_widths(REGNET_CONFIGS['regnetx_200mf'])
  assert widths == [24, 56, 152, 152, 152, 152, 368, 368, 368, 368, 368, 368, 368]
  assert [(s.width, s.depth, s.groups) for s in regnet.stages(REGNET_CONFIGS['regnetx_200mf'])] == [
      (24, 1, 3), (56, 1, 7), (152, 4, 19), (368, 7, 46)]
  # RegNetX-8.0GF: group width 120 exceeds the first stage's 80 channels, so it becomes 80.
  first = regnet.stages(REGNET_CONFIGS['regnetx_8_0gf'])[0]
  assert (first.width, first.group_width, first.groups) == (80, 80, 1)


def test_invalid_parameters_say_what_is_valid():
  with pytest.raises(ValueError, match='wm > 1'):
    RegNetParams(depth=10, w0=24, wa=10.0, wm=1.0, group_width=8)
  with pytest.raises(ValueError, match='multiple of 8'):
    RegNetParams(depth=10, w0=20, wa=10.0, wm=2.0, group_width=8)
  with pytest.raises(ValueError, match="Unknown RegNet 'regnetz_1gf'; registered: regnetx_200mf"):
    regnet.regnet('regnetz_1gf', num_classes=10, rngs=nnx.Rngs(0))


# -- counts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(PYCLS_ZOO))
def test_counts_agree_with_the_pycls_model_zoo_within_2_percent(name):
  zoo, cx = PYCLS_ZOO[name], regnet.complexity(name)
  assert cx.flops / 1e9 == pytest.approx(zoo.gflops, rel=0.02)
  assert cx.params / 1e6 == pytest.approx(zoo.mparams, rel=0.02)


@pytest.mark.parametrize('name', ['regnetx_200mf', 'regnety_400mf', 'regnetx_8_0gf',
                                  'regnety_4_0gf', 'regnety_tiny'])
def test_the_nnx_model_has_the_counted_parameters(name):
  assert regnet.parameter_count(abstract(name)) == regnet.complexity(name).params


def test_regnety_4gf_is_4_gmacs_and_20_6m_parameters():
  """The paper's running example (and the issue's): ~4.0 GMAC, 20.6M parameters."""
  assert regnet.parameter_count(abstract('regnety_4_0gf')) == 20_646_656
  assert regnet.complexity('regnety_4_0gf').flops == 3_973_301_344


@pytest.mark.parametrize('name', ['regnetx_200mf', 'regnety_400mf'])
def test_xla_counts_the_same_work_in_the_forward_pass(name):
  """An independent check that the model computes what the formulas count: XLA's cost
  analysis of the forward pass is 2 FLOPs per multiply-add plus ~1% of BatchNorm, ReLU and
  additions (and it skips the taps in the padding)."""
  graphdef, state = nnx.split(abstract(name))
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False))
  lowered = forward.lower(state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  analysis = lowered.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  ratio = analysis['flops'] / (2 * regnet.complexity(name).flops)
  assert 1.0 <= ratio <= 1.03, ratio


def test_podium_models_prints_counts_beside_the_zoo(capsys):
  assert cli.main(['models', 'regnet', 'regnety_4_0gf', 'regnetx_200mf']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].split()[:5] == ['model', 'params', 'GMACs', 'zoo', 'params']
  rows = {line.split()[0]: line.split() for line in out[1:]}
  assert rows['regnety_4_0gf'][1:5] == ['20.65M', '3.973', '20.6M', '4.0']
  assert rows['regnetx_200mf'][1:5] == ['2.68M', '0.199', '2.7M', '0.2']
  assert rows['regnety_4_0gf'][5:] == ['128x2(2)', '192x6(3)', '512x12(8)', '1088x2(17)',
                                       'SE', '0.25']
  assert cli.main(['models', 'regnet', 'regnety_4gf']) == 2
  assert re.search(r"Unknown RegNet regnety_4gf; registered: .*regnety_4_0gf",
                   capsys.readouterr().err)


# -- the network ---------------------------------------------------------------------------------

def test_structure_of_a_regnety():
  model = abstract('regnety_4_0gf')
  assert model.stem.conv.kernel.shape == (3, 3, 3, 32) and model.stem.conv.strides == 2
  assert not model.stem.max_pool
  first, second = model.stages[0][0], model.stages[0][1]
  assert first.conv2.strides == 2 and second.conv2.strides == 1
  # Grouped 3x3: 128 channels in groups of 64 -> kernel (3, 3, 64, 128).
  assert first.conv2.feature_group_count == 2 and first.conv2.kernel.shape == (3, 3, 64, 128)
  # The squeeze width is a quarter of the block's input width (32 for the first block).
  assert first.se.reduce.kernel.shape == (1, 1, 128, 8)
  assert second.se.reduce.kernel.shape == (1, 1, 128, 32)
  assert first.shortcut is not None and second.shortcut is None
  assert model.head.kernel.shape == (1088, 1000)
  assert abstract('regnetx_400mf').stages[0][0].se is None
  assert first.conv2.kernel.get_metadata()['out_sharding'] == (None, None, 'conv_in', 'conv_out')


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_logits_are_float32_whatever_the_compute_dtype(dtype):
  model = nnx.eval_shape(lambda: regnet.regnet('regnety_tiny', num_classes=10, dtype=dtype,
                                               rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  for train in (False, True):
    logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=train), state,
                            jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32))
    assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
