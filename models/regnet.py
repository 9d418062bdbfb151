"""RegNet X and Y (Radosavovic et al. 2020, "Designing Network Design Spaces") in Flax NNX.

A RegNet is generated from six numbers: depth ``d``, initial width ``w0``, slope ``wa``,
width multiplier ``wm``, group width ``g`` and bottleneck multiplier ``b`` (plus the SE ratio
of RegNetY). Block ``j`` gets the continuous width ``w0 + wa * j``, which is snapped to
``w0 * wm**k`` (``k`` an integer, so consecutive blocks share widths and form stages) and
rounded to a multiple of 8; then each stage's width and group width are made compatible.
:func:`stages` does this exactly as pycls (``generate_regnet``, ``adjust_ws_gs_comp``), whose
model zoo the named configs below reproduce (tests/test_regnet.py checks every width,
depth and group width against pycls itself).

The network is pycls's AnyNet: a 3x3/2 stem of 32 channels, stages whose first block has
stride 2, and residual bottleneck blocks (1x1, grouped 3x3, [squeeze-excitation,] 1x1) with a
projection shortcut where the width or resolution changes. Those blocks are ResNet's
(``models.resnet.BottleneckBlock`` with ``cout``, ``groups`` and ``se_width``), so the
parameter tree is ResNet's::

  stem.conv, stem.bn
  stages[i][j].conv1, .bn1, .conv2 (grouped), .bn2, (.se.reduce, .se.expand), .conv3, .bn3,
               .shortcut.conv, .shortcut.bn (first block of a stage)
  head

``models.importers.pytorch_regnet`` loads pycls, torchvision and transformers weights.
:func:`complexity` counts multiply-adds and parameters as pycls does (its ``flops``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import resnet

# pycls: widths are multiples of 8; every stage halves the resolution.
WIDTH_QUANTUM = 8
STAGE_STRIDE = 2


@dataclasses.dataclass(frozen=True)
class RegNetParams:
  """The parameters that generate one RegNet (pycls's ``cfg.REGNET``).

  ``bottleneck_multiplier`` is pycls's ``BOT_MUL`` (the 3x3 convolution has
  ``width * bottleneck_multiplier`` channels); the paper's bottleneck ratio ``b`` is its
  inverse. Every model in the paper's tables has 1.0. ``se_ratio`` > 0 makes a RegNetY: the
  squeeze-excitation has ``round(se_ratio * block input width)`` channels.
  """

  depth: int
  w0: int
  wa: float
  wm: float
  group_width: int
  bottleneck_multiplier: float = 1.0
  se_ratio: float = 0.0
  stem_width: int = 32

  def __post_init__(self):
    if not (self.depth >= 1 and self.wa >= 0 and self.w0 > 0 and self.wm > 1
            and self.w0 % WIDTH_QUANTUM == 0 and self.group_width >= 1
            and self.bottleneck_multiplier > 0 and self.se_ratio >= 0 and self.stem_width >= 1):
      raise ValueError(
          f'{self}: a RegNet needs depth >= 1, wa >= 0, w0 > 0 and a multiple of '
          f'{WIDTH_QUANTUM}, wm > 1, group_width >= 1, bottleneck_multiplier > 0, '
          'se_ratio >= 0, stem_width >= 1')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage after quantisation: ``depth`` blocks of output ``width``."""

  width: int
  depth: int
  group_width: int
  bottleneck_multiplier: float = 1.0
  stride: int = STAGE_STRIDE

  @property
  def bottleneck_width(self) -> int:
    return int(round(self.width * self.bottleneck_multiplier))

  @property
  def groups(self) -> int:
    return self.bottleneck_width // self.group_width


def block_widths(params: RegNetParams) -> list[int]:
  """Per-block widths: linear ``w0 + wa * j``, snapped to ``w0 * wm**k``, multiples of 8.

  The numpy operations are pycls's, in its order, so the rounding is the same bit for bit.
  """
  continuous = np.arange(params.depth) * params.wa + params.w0
  exponents = np.round(np.log(continuous / params.w0) / np.log(params.wm))
  widths = params.w0 * np.power(params.wm, exponents)
  return (np.round(np.divide(widths, WIDTH_QUANTUM)) * WIDTH_QUANTUM).astype(int).tolist()


def stages(params: RegNetParams) -> list[Stage]:
  """The stages of a RegNet: runs of equal block widths, then widths made compatible
  with the group width (the 3x3 convolution's width is a multiple of it)."""
  widths, depths = [], []
  for width in block_widths(params):
    if widths and widths[-1] == width:
      depths[-1] += 1
    else:
      widths.append(width)
      depths.append(1)
  b = params.bottleneck_multiplier
  out = []
  for width, depth in zip(widths, depths):
    bottleneck = max(1, int(width * b))
    group_width = min(params.group_width, bottleneck)
    bottleneck = max(group_width, int(round(bottleneck / group_width) * group_width))
    out.append(Stage(int(bottleneck / b), depth, group_width, b))
  return out


class RegNet(resnet.AnyNet):
  """RegNet classifier: images ``[N, H, W, 3]`` -> float32 logits ``[N, classes]``.

  Args:
    params: the RegNet parameters (:class:`RegNetParams`); see :data:`REGNET_CONFIGS`.
    num_classes: classifier outputs.
    dtype: compute dtype of convolutions and activations (``jnp.bfloat16`` on TPU);
      BatchNorm, squeeze-excitation gates and the classifier compute in float32.
    param_dtype: dtype of the stored parameters.
    bn_momentum, bn_epsilon: BatchNorm running-average decay and epsilon (pycls: PyTorch's
      momentum 0.1, which is 0.9 here, and 1e-5).
    zero_init_residual: start each block's last BatchNorm scale at zero (pycls's
      ``ZERO_INIT_FINAL_GAMMA``, off for its RegNets).
    precision: ``jax.lax.Precision`` of convolutions and the classifier.
    rngs: parameter initialisation keys.
  """

  def __init__(
      self,
      params: RegNetParams,
      *,
      num_classes: int,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
      bn_momentum: float = 0.9,
      bn_epsilon: float = 1e-5,
      zero_init_residual: bool = False,
      precision: jax.lax.PrecisionLike = None,
      rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    self.config = params
    opts = resnet.Options(dtype, param_dtype, bn_momentum, bn_epsilon, precision)
    self.stem = resnet.Stem('simple', params.stem_width, opts, rngs=rngs)
    cin = params.stem_width
    built = []
    for stage in stages(params):
      blocks = []
      for j in range(stage.depth):
        blocks.append(resnet.BottleneckBlock(
            cin, stage.bottleneck_width, stage.stride if j == 0 else 1, opts,
            zero_init_residual=zero_init_residual, cout=stage.width, groups=stage.groups,
            se_width=_se_width(cin, params.se_ratio), rngs=rngs))
        cin = stage.width
      built.append(nnx.List(blocks))
    self.stages = nnx.List(built)
    self._init_head(cin, num_classes, param_dtype=param_dtype, precision=precision, rngs=rngs)


def _se_width(block_input_width: int, se_ratio: float) -> int:
  """pycls: the squeeze width is a fraction of the block's input width, not of the 3x3's."""
  return int(round(block_input_width * se_ratio)) if se_ratio else 0


# -- the paper's models ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """A row of pycls's MODEL_ZOO.md: the published model trained with its dds_baselines
  config on 8 V100 GPUs for 100 epochs (top-1 error averaged over 5 runs)."""

  title: str                # pycls's name, e.g. 'RegNetY-4.0GF'
  gflops: float             # multiply-adds at 224x224, billions, as printed (one decimal)
  mparams: float            # parameters, millions, as printed
  batch_size: int           # the 8-GPU training batch
  top1_error: float         # percent

  @property
  def top1(self) -> float:
    """Top-1 accuracy as a fraction."""
    return round(1.0 - self.top1_error / 100.0, 4)


def _name(title: str) -> str:
  """'RegNetY-4.0GF' -> 'regnety_4_0gf' (config and recipe names are identifiers)."""
  return title.lower().replace('-', '_').replace('.', '_')


# (title, depth, w0, wa, wm, group width, GF, M params, batch, top-1 error): the models of the
# paper's Tables (its appendix) with pycls's dds_baselines configs and MODEL_ZOO.md numbers.
_PAPER = (
    ('RegNetX-200MF', 13, 24, 36.44, 2.49, 8, 0.2, 2.7, 1024, 31.1),
    ('RegNetX-400MF', 22, 24, 24.48, 2.54, 16, 0.4, 5.2, 1024, 27.3),
    ('RegNetX-600MF', 16, 48, 36.97, 2.24, 24, 0.6, 6.2, 1024, 25.9),
    ('RegNetX-800MF', 16, 56, 35.73, 2.28, 16, 0.8, 7.3, 1024, 24.8),
    ('RegNetX-1.6GF', 18, 80, 34.01, 2.25, 24, 1.6, 9.2, 1024, 23.0),
    ('RegNetX-3.2GF', 25, 88, 26.31, 2.25, 48, 3.2, 15.3, 512, 21.7),
    ('RegNetX-4.0GF', 23, 96, 38.65, 2.43, 40, 4.0, 22.1, 512, 21.4),
    ('RegNetX-6.4GF', 17, 184, 60.83, 2.07, 56, 6.5, 26.2, 512, 20.8),
    ('RegNetX-8.0GF', 23, 80, 49.56, 2.88, 120, 8.0, 39.6, 512, 20.7),
    ('RegNetX-12GF', 19, 168, 73.36, 2.37, 112, 12.1, 46.1, 512, 20.3),
    ('RegNetX-16GF', 22, 216, 55.59, 2.1, 128, 15.9, 54.3, 512, 20.0),
    ('RegNetX-32GF', 23, 320, 69.86, 2.0, 168, 31.7, 107.8, 256, 19.5),
    ('RegNetY-200MF', 13, 24, 36.44, 2.49, 8, 0.2, 3.2, 1024, 29.6),
    ('RegNetY-400MF', 16, 48, 27.89, 2.09, 8, 0.4, 4.3, 1024, 25.9),
    ('RegNetY-600MF', 15, 48, 32.54, 2.32, 16, 0.6, 6.1, 1024, 24.5),
    ('RegNetY-800MF', 14, 56, 38.84, 2.4, 16, 0.8, 6.3, 1024, 23.7),
    ('RegNetY-1.6GF', 27, 48, 20.71, 2.65, 24, 1.6, 11.2, 1024, 22.0),
    ('RegNetY-3.2GF', 21, 80, 42.63, 2.66, 24, 3.2, 19.4, 512, 21.0),
    ('RegNetY-4.0GF', 22, 96, 31.41, 2.24, 64, 4.0, 20.6, 512, 20.6),
    ('RegNetY-6.4GF', 25, 112, 33.22, 2.27, 72, 6.4, 30.6, 512, 20.1),
    ('RegNetY-8.0GF', 17, 192, 76.82, 2.19, 56, 8.0, 39.2, 512, 20.1),
    ('RegNetY-12GF', 19, 168, 73.36, 2.37, 112, 12.1, 51.8, 512, 19.7),
    ('RegNetY-16GF', 18, 200, 106.23, 2.48, 112, 15.9, 83.6, 512, 19.6),
    ('RegNetY-32GF', 20, 232, 115.89, 2.53, 232, 32.3, 145.0, 256, 19.0),
)

REGNET_CONFIGS: dict[str, RegNetParams] = {
    _name(title): RegNetParams(d, w0, wa, wm, g, se_ratio=0.25 if title[6] == 'Y' else 0.0)
    for title, d, w0, wa, wm, g, *_ in _PAPER
}
PYCLS_ZOO: dict[str, ZooEntry] = {
    _name(title): ZooEntry(title, gflops, mparams, batch, error)
    for title, *_, gflops, mparams, batch, error in _PAPER
}
# A RegNetY small enough for 16x16 images on a CPU (the digits recipe): stages of 16 and 32.
REGNET_CONFIGS['regnety_tiny'] = RegNetParams(
    depth=4, w0=16, wa=8.0, wm=2.0, group_width=8, se_ratio=0.25, stem_width=16)


def regnet(name: str, *, num_classes: int, dtype: Any = jnp.float32, rngs: nnx.Rngs,
           **overrides: Any) -> RegNet:
  """Builds a registered RegNet, e.g. ``regnet('regnety_4_0gf', num_classes=1000, ...)``.

  ``overrides`` replace fields of its :class:`RegNetParams` (``se_ratio=0.0``) or set other
  ``RegNet`` arguments (``zero_init_residual=True``).
  """
  if name not in REGNET_CONFIGS:
    raise ValueError(f'Unknown RegNet {name!r}; registered: {", ".join(REGNET_CONFIGS)}')
  fields = {f.name for f in dataclasses.fields(RegNetParams)}
  params = dataclasses.replace(REGNET_CONFIGS[name],
                               **{k: v for k, v in overrides.items() if k in fields})
  others = {k: v for k, v in overrides.items() if k not in fields}
  return RegNet(params, num_classes=num_classes, dtype=dtype, rngs=rngs, **others)


# -- complexity -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Complexity:
  """pycls's ``complexity``: multiply-adds (what pycls and the paper call flops),
  parameters (BatchNorm scale and bias included, running statistics not) and activations
  (output elements of every convolution)."""

  flops: int
  params: int
  acts: int


class _Counter:
  """Accumulates pycls's per-layer complexity formulas over a forward pass."""

  def __init__(self, size: int):
    self.h = self.w = size
    self.flops = self.params = self.acts = 0

  def conv(self, cin, cout, k, stride=1, groups=1, bias=False):
    pad = k // 2
    self.h = (self.h + 2 * pad - k) // stride + 1
    self.w = (self.w + 2 * pad - k) // stride + 1
    self.flops += k * k * cin * cout * self.h * self.w // groups + (cout if bias else 0)
    self.params += k * k * cin * cout // groups + (cout if bias else 0)
    self.acts += cout * self.h * self.w

  def bn(self, features):
    self.params += 2 * features

  def branch(self, fn):
    """Counts ``fn`` (a parallel branch or a pooled path) without moving the resolution."""
    h, w = self.h, self.w
    fn()
    self.h, self.w = h, w


def complexity(params: RegNetParams | str, *, image_size: int = 224,
               num_classes: int = 1000) -> Complexity:
  """Multiply-adds, parameters and activations of one forward pass at ``image_size``."""
  if isinstance(params, str):
    if params not in REGNET_CONFIGS:
      raise ValueError(f'Unknown RegNet {params!r}; registered: {", ".join(REGNET_CONFIGS)}')
    params = REGNET_CONFIGS[params]
  c = _Counter(image_size)
  c.conv(3, params.stem_width, 3, stride=2)
  c.bn(params.stem_width)
  cin = params.stem_width
  for stage in stages(params):
    for j in range(stage.depth):
      stride, wb, cout = stage.stride if j == 0 else 1, stage.bottleneck_width, stage.width
      if stride != 1 or cin != cout:
        c.branch(lambda: (c.conv(cin, cout, 1, stride), c.bn(cout)))
      c.conv(cin, wb, 1)
      c.bn(wb)
      c.conv(wb, wb, 3, stride, groups=stage.groups)
      c.bn(wb)
      se = _se_width(cin, params.se_ratio)
      if se:
        c.branch(lambda: _pooled(c, lambda: (c.conv(wb, se, 1, bias=True),
                                             c.conv(se, wb, 1, bias=True))))
      c.conv(wb, cout, 1)
      c.bn(cout)
      cin = cout
  _pooled(c, lambda: c.conv(cin, num_classes, 1, bias=True))
  return Complexity(c.flops, c.params, c.acts)


def _pooled(c: _Counter, fn):
  """Global average pooling, then ``fn`` at 1x1."""
  c.h = c.w = 1
  fn()


def parameter_count(model: nnx.Module) -> int:
  """Elements of every ``nnx.Param`` (works on abstract models from ``nnx.eval_shape``)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def describe(names: Sequence[str] | None = None, *, image_size: int = 224,
             num_classes: int = 1000) -> Iterator[str]:
  """Lines of a table of each model's stages, parameters (counted in the abstract NNX model)
  and multiply-adds (pycls's formulas), beside pycls's MODEL_ZOO.md numbers where it has the
  model. Lines come as they are computed: tracing a large model takes seconds."""
  names = list(REGNET_CONFIGS) if names is None else list(names)
  unknown = [n for n in names if n not in REGNET_CONFIGS]
  if unknown:
    raise ValueError(f'Unknown RegNet {", ".join(unknown)}; registered: '
                     f'{", ".join(REGNET_CONFIGS)}')
  yield (f'{"model":<16}{"params":>9}{"GMACs":>8}{"zoo params":>12}{"zoo GF":>8}  '
         f'stage widths x depths (groups), at {image_size}x{image_size}, {num_classes} classes')
  for name in names:
    params = REGNET_CONFIGS[name]
    model = nnx.eval_shape(lambda p=params: RegNet(p, num_classes=num_classes,
                                                   rngs=nnx.Rngs(0)))
    cx = complexity(params, image_size=image_size, num_classes=num_classes)
    zoo = PYCLS_ZOO.get(name)
    zoo_cols = (f'{zoo.mparams:>11.1f}M{zoo.gflops:>8.1f}' if zoo and num_classes == 1000
                else f'{"-":>12}{"-":>8}')
    shape = ' '.join(f'{s.width}x{s.depth}({s.groups})' for s in stages(params))
    se = f' SE {params.se_ratio:g}' if params.se_ratio else ''
    yield (f'{name:<16}{parameter_count(model) / 1e6:>8.2f}M{cx.flops / 1e9:>8.4g}'
           f'{zoo_cols}  {shape}{se}')
