"""ResNet v1.5 in Flax NNX: the MLPerf image-classification reference model.

v1.5 differs from the paper's v1 only in where a bottleneck block downsamples: the stride-2
is in the 3x3 convolution, not the first 1x1 (torchvision, MLPerf, NVIDIA's "ResNet-50 v1.5";
transformers' ``ResNetConfig(downsample_in_bottleneck=False)``). Padding is symmetric
``k // 2`` as in PyTorch, so published torchvision / Hugging Face weights reproduce their
logits (see ``models.importers.pytorch_resnet``).

Parameter tree::

  stem.conv, stem.bn
  stages[i][j].conv1, .bn1, .conv2, .bn2, (.conv3, .bn3 in bottlenecks),
               .shortcut.conv, .shortcut.bn (projection, first block of a stage only),
               (.se.reduce, .se.expand: squeeze-excitation, RegNetY's blocks only)
  head                                     (the classifier, kernel [features, classes])
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers

ACTIVATION_NAMES = ('batch', None, None, 'conv_out')


@dataclasses.dataclass(frozen=True)
class Options:
  """What every conv and BatchNorm of one model shares."""

  dtype: Any
  param_dtype: Any
  bn_momentum: float
  bn_epsilon: float
  precision: jax.lax.PrecisionLike

  def conv(self, cin, cout, kernel_size, strides=1, *, groups=1, rngs):
    return layers.conv(
        cin, cout, kernel_size, strides=strides, feature_group_count=groups, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, rngs=rngs)

  def bn(self, features, *, zero_scale=False, rngs):
    return layers.batch_norm(
        features, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
        param_dtype=self.param_dtype, rngs=rngs)

  def squeeze_excite(self, features, squeeze_features, *, rngs):
    return layers.SqueezeExcite(features, squeeze_features, param_dtype=self.param_dtype,
                                precision=self.precision, rngs=rngs)


def _norm(bn: nnx.BatchNorm, x: jax.Array, train: bool, dtype) -> jax.Array:
  """BatchNorm in float32, result back in the compute dtype."""
  return bn(x, use_running_average=not train).astype(dtype)


class Shortcut(nnx.Module):
  """1x1 projection + BatchNorm, where a block changes width or resolution."""

  def __init__(self, cin: int, cout: int, strides: int, opts: Options, *, rngs: nnx.Rngs):
    self.dtype = opts.dtype
    self.conv = opts.conv(cin, cout, 1, strides, rngs=rngs)
    self.bn = opts.bn(cout, rngs=rngs)

  def __call__(self, x, *, train: bool):
    return _norm(self.bn, self.conv(x), train, self.dtype)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  expansion = 1

  def __init__(self, cin: int, width: int, strides: int, opts: Options, *,
               zero_init_residual: bool, rngs: nnx.Rngs):
    cout = width * self.expansion
    self.dtype = opts.dtype
    self.conv1 = opts.conv(cin, width, 3, strides, rngs=rngs)
    self.bn1 = opts.bn(width, rngs=rngs)
    self.conv2 = opts.conv(width, cout, 3, rngs=rngs)
    self.bn2 = opts.bn(cout, zero_scale=zero_init_residual, rngs=rngs)
    self.shortcut = (Shortcut(cin, cout, strides, opts, rngs=rngs)
                     if strides != 1 or cin != cout else None)

  def __call__(self, x, *, train: bool):
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    y = jax.nn.relu(_norm(self.bn1, self.conv1(x), train, self.dtype))
    y = _norm(self.bn2, self.conv2(y), train, self.dtype)
    return jax.nn.relu(y + residual)


class BottleneckBlock(nnx.Module):
  """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50/101/152).

  It is also the residual bottleneck block of ResNeXt and RegNet (pycls's
  ``ResBottleneckBlock``): ``cout`` sets the output width (default ``4 * width``), ``groups``
  splits the 3x3 convolution into groups, and ``se_width > 0`` adds a squeeze-and-excitation
  of that many channels after it (RegNetY).
  """

  expansion = 4

  def __init__(self, cin: int, width: int, strides: int, opts: Options, *,
               zero_init_residual: bool, cout: int | None = None, groups: int = 1,
               se_width: int = 0, rngs: nnx.Rngs):
    cout = width * self.expansion if cout is None else cout
    self.dtype = opts.dtype
    self.conv1 = opts.conv(cin, width, 1, rngs=rngs)
    self.bn1 = opts.bn(width, rngs=rngs)
    self.conv2 = opts.conv(width, width, 3, strides, groups=groups, rngs=rngs)
    self.bn2 = opts.bn(width, rngs=rngs)
    self.se = opts.squeeze_excite(width, se_width, rngs=rngs) if se_width else None
    self.conv3 = opts.conv(width, cout, 1, rngs=rngs)
    self.bn3 = opts.bn(cout, zero_scale=zero_init_residual, rngs=rngs)
    self.shortcut = (Shortcut(cin, cout, strides, opts, rngs=rngs)
                     if strides != 1 or cin != cout else None)

  def __call__(self, x, *, train: bool):
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    y = jax.nn.relu(_norm(self.bn1, self.conv1(x), train, self.dtype))
    y = jax.nn.relu(_norm(self.bn2, self.conv2(y), train, self.dtype))
    if self.se is not None:
      y = self.se(y)
    y = _norm(self.bn3, self.conv3(y), train, self.dtype)
    return jax.nn.relu(y + residual)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}
# Stem kind -> (kernel size, stride, 3x3/2 max-pool after it).
STEMS = {'imagenet': (7, 2, True), 'small': (3, 1, False), 'simple': (3, 2, False)}


class Stem(nnx.Module):
  """A conv + BatchNorm + ReLU on the image, of one of three kinds.

  'imagenet': 7x7/2 conv + 3x3/2 max-pool (224px input, /4).
  'small': one 3x3/1 conv and no pooling, for 8-32px images where /4 would leave nothing.
  'simple': one 3x3/2 conv (pycls's ``SimpleStemIN``, RegNet's stem).
  """

  def __init__(self, kind: str, width: int, opts: Options, *, rngs: nnx.Rngs):
    kernel_size, strides, self.max_pool = STEMS[kind]
    self.dtype = opts.dtype
    self.conv = opts.conv(3, width, kernel_size, strides, rngs=rngs)
    self.bn = opts.bn(width, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = jax.nn.relu(_norm(self.bn, self.conv(x), train, self.dtype))
    if self.max_pool:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class AnyNet(nnx.Module):
  """A stem, stages of residual blocks, global average pooling and a linear classifier.

  pycls's AnyNet: ResNet (below) and RegNet (``models.regnet``) differ only in how they
  build ``stem`` and ``stages``; the forward pass and the classifier are these.
  """

  def _init_head(self, features: int, num_classes: int, *, param_dtype: Any,
                 precision: jax.lax.PrecisionLike, rngs: nnx.Rngs):
    """The classifier; weights N(0, 0.01) and zero bias (MLPerf reference and pycls)."""
    self.num_features = features
    self.num_classes = num_classes
    self.head = layers.dense(
        features, num_classes, axes=('embed', 'classes'),
        kernel_init=nnx.initializers.normal(0.01), dtype=jnp.float32,
        param_dtype=param_dtype, precision=precision, rngs=rngs)

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """``train=True`` normalises with batch statistics and updates the running ones."""
    features = self.embed(images, train=train)
    return layers.with_logical_constraint(self.head(features), ('batch', 'classes'))

  def embed(self, images: jax.Array, *, train: bool) -> jax.Array:
    """The pooled float32 features ``[N, num_features]`` the classifier reads: the
    backbone's output, e.g. the feature vector of an exported model."""
    x = layers.with_logical_constraint(images.astype(self.dtype), ACTIVATION_NAMES)
    x = layers.with_logical_constraint(self.stem(x, train=train), ACTIVATION_NAMES)
    for stage in self.stages:
      for block in stage:
        x = layers.with_logical_constraint(block(x, train=train), ACTIVATION_NAMES)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return layers.with_logical_constraint(features, ('batch', 'embed'))


class ResNet(AnyNet):
  """ResNet v1.5 classifier: images ``[N, H, W, 3]`` -> float32 logits ``[N, classes]``.

  Args:
    stage_sizes: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
    block: ``'basic'`` (two 3x3) or ``'bottleneck'`` (1x1-3x3-1x1, 4x expansion).
    num_classes: classifier outputs.
    width: channels of the stem and of the first stage's blocks; doubles per stage.
    stem: ``'imagenet'`` (7x7/2 conv + max-pool) or ``'small'`` (3x3/1 conv, no pool).
    dtype: compute dtype of convolutions and activations (``jnp.bfloat16`` on TPU).
      BatchNorm and the classifier always compute in float32.
    param_dtype: dtype of the stored parameters.
    bn_momentum, bn_epsilon: BatchNorm running-average decay and epsilon (PyTorch's
      ``momentum=0.1`` is 0.9 here).
    zero_init_residual: start the last BatchNorm scale of each block at zero, so each
      residual block begins as the identity (Goyal et al. 2017; MLPerf reference).
    precision: ``jax.lax.Precision`` of convolutions and the classifier; ``None`` is the
      backend default.
    rngs: parameter initialisation keys.
  """

  def __init__(
      self,
      *,
      stage_sizes: Sequence[int],
      block: str,
      num_classes: int,
      width: int = 64,
      stem: str = 'imagenet',
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
      bn_momentum: float = 0.9,
      bn_epsilon: float = 1e-5,
      zero_init_residual: bool = True,
      precision: jax.lax.PrecisionLike = None,
      rngs: nnx.Rngs,
  ):
    if block not in BLOCKS:
      raise ValueError(f'ResNet block={block!r}; valid: {sorted(BLOCKS)}')
    if stem not in STEMS:
      raise ValueError(f'ResNet stem={stem!r}; valid: {list(STEMS)}')
    if not stage_sizes or any(n < 1 for n in stage_sizes):
      raise ValueError(f'ResNet stage_sizes={tuple(stage_sizes)}: need at least one stage '
                       'and at least one block per stage')
    self.dtype = dtype
    opts = Options(dtype, param_dtype, bn_momentum, bn_epsilon, precision)
    block_cls = BLOCKS[block]

    self.stem = Stem(stem, width, opts, rngs=rngs)
    stages = []
    cin = width
    for i, num_blocks in enumerate(stage_sizes):
      stage_width = width * 2**i
      blocks = []
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(block_cls(cin, stage_width, strides, opts,
                                zero_init_residual=zero_init_residual, rngs=rngs))
        cin = stage_width * block_cls.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self._init_head(cin, num_classes, param_dtype=param_dtype, precision=precision, rngs=rngs)


RESNET_CONFIGS: dict[str, dict[str, Any]] = {
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), block='basic'),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), block='basic'),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), block='bottleneck'),
    'resnet101': dict(stage_sizes=(3, 4, 23, 3), block='bottleneck'),
    'resnet152': dict(stage_sizes=(3, 8, 36, 3), block='bottleneck'),
    # CPU recipes on 8-32px images (digits, CIFAR-sized): seconds per epoch on a laptop.
    'resnet_tiny': dict(stage_sizes=(1, 1, 1, 1), block='basic', width=16, stem='small'),
}


def resnet(name_or_depth: str | int, *, num_classes: int, dtype: Any = jnp.float32,
           rngs: nnx.Rngs, **overrides: Any) -> ResNet:
  """Builds a registered ResNet: ``resnet('resnet50', ...)`` or ``resnet(50, ...)``.

  ``overrides`` replace fields of the registered config or set other ``ResNet`` arguments.
  """
  name = f'resnet{name_or_depth}' if isinstance(name_or_depth, int) else name_or_depth
  if name not in RESNET_CONFIGS:
    raise ValueError(f'Unknown ResNet {name_or_depth!r}; registered: {sorted(RESNET_CONFIGS)}')
  config = {**RESNET_CONFIGS[name], **overrides}
  return ResNet(num_classes=num_classes, dtype=dtype, rngs=rngs, **config)
