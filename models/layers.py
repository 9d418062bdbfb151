"""Layer constructors shared by every podium model.

Each constructor attaches *logical* axis names (``'embed'``, ``'mlp'``, ``'conv_out'``, ...)
to the parameters it creates, so all models look alike to the runtime: it reads the names
with ``nnx.get_partition_spec`` under a recipe's logical-axis rules and shards the state
through ``jax.jit``. Model code never names mesh axes: which mesh axis holds ``'batch'``
or ``'conv_out'`` is the recipe's choice.
"""

import functools
import itertools
import math
import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen
from flax import nnx

LogicalNames = Sequence[str | None]

# He initialisation for convolutions followed by ReLU (torchvision's kaiming_normal_,
# mode='fan_out'): keeps activation variance constant through deep ReLU stacks.
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def with_logical_constraint(x: jax.Array, names: LogicalNames) -> jax.Array:
  """Asks GSPMD to lay out activation ``x`` by logical axis names.

  Active only when logical-axis rules (``flax.linen.logical_axis_rules``) and a mesh
  (``jax.set_mesh``) are both in effect; otherwise it returns ``x`` unchanged, so models
  run as they are on one device, in tests and under ``eval_shape``.
  """
  names = tuple(names)
  if len(names) != x.ndim:
    raise ValueError(
        f'with_logical_constraint: {len(names)} axis names {names} for an array of '
        f'rank {x.ndim} and shape {x.shape}; give one name (or None) per axis.')
  return linen.with_logical_constraint(x, names)


def dropout(x: jax.Array, rate: float, *, train: bool, rngs: nnx.Rngs | None,
            model: str = 'this model') -> jax.Array:
  """Inverted dropout: each element zeroed with probability ``rate``, the rest scaled by
  ``1 / (1 - rate)``; the identity when not ``train``. Each call takes the next key of the
  ``rngs.dropout`` stream, so every dropout site gets its own mask.

  The mask's bits come from XLA's RngBitGenerator ('unsafe_rbg'), seeded from that key: on
  TPU the hardware generator, many times faster than threefry's hash. On XLA:CPU, with 16
  bits an element (:func:`keep_mask`), wav2vec2 BASE's train step at batch 4 took 7.00 s
  against 7.18 s with ``jax.random.bernoulli`` (6.82 s without dropout; side by side).
  """
  if not train or rate == 0.0:
    return x
  if rngs is None:
    raise ValueError(f'{model} in train mode needs rngs with a dropout stream '
                     '(nnx.Rngs(dropout=key))')
  data = jax.random.key_data(rngs.dropout()).reshape(-1)[:2]
  key = jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                 impl='unsafe_rbg')
  keep = keep_mask(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def keep_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
  """True with probability ``keep_prob`` (to within 2^-17), from 16 random bits per element:
  each 32-bit word decides two elements. Generating the bits is the mask's whole cost on
  XLA:CPU, where this halves it (BERT-base's masks were ~5% of its step there)."""
  size = math.prod(shape)
  words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:size].reshape(shape)
  return halves.astype(jnp.uint32) < jnp.uint32(round(keep_prob * 65536))


def symmetric_padding(kernel_size: Sequence[int]) -> list[tuple[int, int]]:
  """Pads ``k // 2`` on both sides of each spatial axis.

  This is PyTorch's ``padding=k // 2`` and the MLPerf TF reference's fixed padding. XLA's
  'SAME' pads strided convolutions asymmetrically instead, which changes the numbers and
  breaks parity with published weights.
  """
  return [(k // 2, k // 2) for k in kernel_size]


def _channels_last(dimension_numbers, ndim: int) -> bool:
  """Whether `dimension_numbers` are N...C / ...IO / N...C (nnx.Conv's and podium's)."""
  spatial = tuple(range(1, ndim - 1))
  return (tuple(dimension_numbers.lhs_spec) == (0, ndim - 1, *spatial)
          and tuple(dimension_numbers.out_spec) == (0, ndim - 1, *spatial)
          and tuple(dimension_numbers.rhs_spec) == (ndim - 1, ndim - 2, *range(ndim - 2)))


def _window_views(x, window, strides, padding):
  """The input under each window position (``[N, *out_spatial, C]`` each), as strided slices
  of the padded input. (``lax.conv_general_dilated_patches`` extracts them with a depthwise
  convolution, which XLA:CPU runs slowly: 45% of RegNet's step.)"""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:-1], window, strides, padding)
  x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
  sizes = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window, strides)]
  for offsets in itertools.product(*(range(w) for w in window)):
    index = tuple(slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offsets, sizes, strides))
    yield x[(slice(None), *index, slice(None))]


# Windows up to this many positions take one matmul per position; longer ones (wav2vec2's
# 128-tap positional convolution) one matmul of the stacked patches.
_MAX_POSITIONS_FOR_PER_POSITION_GRAD = 9


def _grouped_kernel_grad(x, dy, kernel_shape, strides, padding, groups, dtype):
  """The kernel gradient of a grouped, channels-last convolution from matmuls (batched over
  groups) of the input under each window position and the output gradient.

  Small windows take one matmul per position over its strided view, so no patch array is
  built: RegNetY-1.6GF's step (3x3 windows, batch 8) 3.14 -> 2.76 s against one matmul of
  the stacked patches, whose stack and slices were a quarter of the step's named ops (timed
  side by side). Long windows stack the patches: one matmul instead of hundreds.
  """
  spatial = x.ndim - 2
  window = tuple(kernel_shape[:spatial])
  dy = dy.reshape(*dy.shape[:-1], groups, dy.shape[-1] // groups)
  s = string.ascii_lowercase[:spatial]
  views = _window_views(x, window, strides, padding)
  split = lambda v: v.reshape(*v.shape[:-1], groups, x.shape[-1] // groups)
  if math.prod(window) <= _MAX_POSITIONS_FOR_PER_POSITION_GRAD:
    grad = jnp.stack([jnp.einsum(f'z{s}GC,z{s}GO->CGO', split(v), dy,
                                 preferred_element_type=jnp.float32) for v in views])
  else:
    patches = jnp.stack([split(v) for v in views], axis=-1)  # [..., G, C, positions]
    grad = jnp.einsum(f'z{s}GCK,z{s}GO->KCGO', patches, dy, preferred_element_type=jnp.float32)
  return grad.reshape(kernel_shape).astype(dtype)


def _xla_conv(x, kernel, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              groups, precision):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=groups, precision=precision)


_grouped_conv = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3, 4, 5, 6, 7, 8))


def _grouped_conv_fwd(x, kernel, *static):
  return _xla_conv(x, kernel, *static), (x, kernel)


def _grouped_conv_bwd(strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups,
                      precision, residuals, dy):
  x, kernel = residuals
  static = (strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups, precision)
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, *static), x)

  def xla_kernel_grad(x, dy):
    return jax.vjp(lambda k: _xla_conv(x, k, *static), kernel)[1](dy)[0]

  def matmul_kernel_grad(x, dy):
    return _grouped_kernel_grad(x, dy, kernel.shape, strides, padding, groups, kernel.dtype)

  kernel_grad = jax.lax.platform_dependent(x, dy, cpu=matmul_kernel_grad,
                                           default=xla_kernel_grad)
  return input_vjp(dy)[0], kernel_grad


_grouped_conv.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)


def grouped_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None,
                                 feature_group_count=1, batch_group_count=1, precision=None,
                                 preferred_element_type=None, **kwargs):
  """``lax.conv_general_dilated`` whose kernel gradient, on XLA:CPU, is matmuls of the
  input's patches when the convolution is grouped.

  XLA:CPU computes a grouped convolution's kernel gradient (a ``batch_group_count``
  convolution) outside its Eigen/oneDNN kernels, 10-45x slower than the forward pass
  (RegNetY-1.6GF's 3x3 group convolutions at batch 8: 1.5-4.5 s each, PyTorch 0.04-0.2 s
  for forward and backward); matmuls of the patches take 0.1-0.2 s, the patches cut as
  strided slices (:func:`_window_views`; RegNet's step 1.5x faster than with XLA's depthwise
  patch convolution), one matmul per window position for small windows
  (:func:`_grouped_kernel_grad`). Other platforms, ungrouped and dilated convolutions take
  XLA's own gradient. Same signature and numbers as
  ``lax.conv_general_dilated``, so it drops into ``nnx.Conv(conv_general_dilated=...)``.
  """
  ndim = lhs.ndim
  numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (feature_group_count == 1 or batch_group_count != 1 or preferred_element_type
           or any(value is not None for value in kwargs.values())  # e.g. out_sharding
           or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
           or ndim > 5 or not _channels_last(numbers, ndim))
  if plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **kwargs)
  if not isinstance(padding, str):
    padding = tuple(tuple(pair) for pair in padding)
  return _grouped_conv(lhs, rhs, tuple(window_strides), padding, None, None, numbers,
                       feature_group_count, precision)


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] | None = None,
    feature_group_count: int = 1,
    use_bias: bool = False,
    kernel_init: nnx.Initializer = he_normal_fan_out,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    precision: jax.lax.PrecisionLike = None,
    axes: tuple[str | None, str | None] = ('conv_in', 'conv_out'),
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """An N-d convolution whose kernel is named ``(None, ..., axes[0], axes[1])``.

  ``padding=None`` means :func:`symmetric_padding`. Convolutions have no bias by default
  because a BatchNorm follows them. ``feature_group_count=g`` splits the channels into ``g``
  groups (ResNeXt, RegNet); the kernel is then ``(..., in_features // g, out_features)``, as
  PyTorch's ``(out, in // g, ...)`` transposed.
  """
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  kernel_size = tuple(kernel_size)
  spatial = (None,) * len(kernel_size)
  return nnx.Conv(
      in_features,
      out_features,
      kernel_size,
      strides=strides,
      padding=symmetric_padding(kernel_size) if padding is None else padding,
      feature_group_count=feature_group_count,
      use_bias=use_bias,
      kernel_init=nnx.with_partitioning(kernel_init, spatial + tuple(axes)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      conv_general_dilated=grouped_conv_general_dilated,
      rngs=rngs,
  )


def dense(
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None],
    use_bias: bool = True,
    kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
    bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    precision: jax.lax.PrecisionLike = None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
  """A linear layer whose kernel is named ``axes`` (in, out) and bias ``(axes[1],)``."""
  return nnx.Linear(
      in_features,
      out_features,
      use_bias=use_bias,
      kernel_init=nnx.with_partitioning(kernel_init, tuple(axes)),
      bias_init=nnx.with_partitioning(bias_init, (axes[1],)),
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      rngs=rngs,
  )


def _column_sums(*arrays):
  """Sums of ``[rows, channels]`` arrays over their rows. (With YNNPACK's reduce fusion off,
  XLA:CPU made these a slow tree of reduce-windows and they were ones-vector matmuls here;
  with podium's flags plain sums are as fast: ResNet-50's step 2.36 s vs 2.39 s.)"""
  return tuple(a.sum(axis=0) for a in arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
  """Batch-normalises ``x`` over every axis but the last: returns ``(y, mean, var)``.

  The same numbers as ``nnx.BatchNorm`` in training mode (``var = E[x^2] - E[x]^2``,
  clamped at 0), written with its backward pass by hand: four reductions (two forward, two
  backward, :func:`_column_sums`) and one elementwise pass for ``dx``. One 4x112x112x64
  BatchNorm forward and backward on XLA:CPU takes 12.7 ms against 27.0 ms through autodiff.
  Gradients flow into ``mean`` and ``var`` too.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  rows = x.reshape(-1, x.shape[-1])
  total, total_sq = _column_sums(rows, rows * rows)
  mean = total / rows.shape[0]
  var = jnp.maximum(0.0, total_sq / rows.shape[0] - mean * mean)
  inv_std = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv_std * scale) + bias
  return (y, mean, var), (x, mean, inv_std, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv_std, scale = residuals
  dy, dmean, dvar = cotangents
  n = x.size // x.shape[-1]
  centred = x - mean
  dbias, dscale = _column_sums(dy.reshape(-1, x.shape[-1]),
                               (dy * centred * inv_std).reshape(-1, x.shape[-1]))
  # dx = g (dy - dbias/n - xhat dscale/n) + dmean/n + 2 dvar (x - mean)/n, with g = scale /
  # std: per-channel coefficients, so dx is one elementwise pass.
  gain = scale * inv_std
  dx = (gain * dy + centred * ((2 * dvar - gain * inv_std * dscale) / n)
        + (dmean - gain * dbias) / n)
  return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` whose training step goes through :func:`batch_norm_train`.

  Same parameters, statistics, names and numbers; masks, ``axis_name`` and other axes
  than the last take nnx's own path.
  """

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    running = (use_running_average if use_running_average is not None
               else self.use_running_average)
    if (running is None or running or mask is not None or self.axis_name is not None
        or self.axis not in (-1, x.ndim - 1) or not self.use_fast_variance
        or self.scale is None or self.bias is None):
      return super().__call__(x, use_running_average, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...]
                                           + (1 - self.momentum) * mean)
    self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...]
                                          + (1 - self.momentum) * var)
    return y


def batch_norm(
    num_features: int,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    scale_init: nnx.Initializer = nnx.initializers.ones_init(),
    param_dtype: jnp.dtype = jnp.float32,
    axis: str | None = 'conv_out',
    rngs: nnx.Rngs,
) -> BatchNorm:
  """BatchNorm over the last axis, computing in float32 whatever the input dtype.

  Scale, bias and the running mean/variance are all named ``(axis,)`` so statistics shard
  like the features they describe. Statistics are plain means over every non-feature axis:
  under ``jax.jit`` with a batch sharded across devices GSPMD makes them global-batch
  statistics, so no ``axis_name`` is needed. ``momentum=0.9`` is PyTorch's 0.1.
  """
  bn = BatchNorm(
      num_features,
      momentum=momentum,
      epsilon=epsilon,
      dtype=jnp.float32,
      param_dtype=param_dtype,
      scale_init=nnx.with_partitioning(scale_init, (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)),
      rngs=rngs,
  )
  bn.mean.set_metadata(out_sharding=(axis,))
  bn.var.set_metadata(out_sharding=(axis,))
  return bn


def embedding(
    num_embeddings: int,
    features: int,
    *,
    axes: tuple[str | None, str | None],
    embedding_init: nnx.Initializer = nnx.initializers.normal(0.02),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Embed:
  """A lookup table ``(num_embeddings, features)`` named ``axes``.

  ``Embed.attend`` reuses the table as an output projection (tied input and output
  embeddings, as in BERT's masked-LM head).
  """
  return nnx.Embed(
      num_embeddings,
      features,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=nnx.with_partitioning(embedding_init, tuple(axes)),
      rngs=rngs,
  )


def layer_norm(
    num_features: int,
    *,
    epsilon: float = 1e-12,
    param_dtype: jnp.dtype = jnp.float32,
    axis: str | None = 'embed',
    rngs: nnx.Rngs,
) -> nnx.LayerNorm:
  """LayerNorm over the last axis, computing in float32; scale and bias named ``(axis,)``.

  The default epsilon is BERT's (TF1 ``layer_norm`` and Hugging Face both use 1e-12).
  """
  return nnx.LayerNorm(
      num_features,
      epsilon=epsilon,
      dtype=jnp.float32,
      param_dtype=param_dtype,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)),
      rngs=rngs,
  )


def einsum_dense(
    einsum: str,
    kernel_shape: Sequence[int],
    bias_shape: Sequence[int] | None,
    *,
    kernel_axes: LogicalNames,
    bias_axes: LogicalNames | None = None,
    kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    precision: jax.lax.PrecisionLike = None,
    rngs: nnx.Rngs,
) -> nnx.Einsum:
  """A dense layer over several axes at once, e.g. ``'bsd,dnh->bsnh'`` for attention heads.

  Keeping heads as their own kernel axis (``('embed', 'heads', 'kv')``) is what lets a
  tensor-parallel rule split attention by head without reshapes in the model.
  """
  if len(kernel_axes) != len(kernel_shape):
    raise ValueError(f'einsum_dense: {len(kernel_axes)} kernel axis names {tuple(kernel_axes)} '
                     f'for a kernel of shape {tuple(kernel_shape)}')
  if bias_shape is not None and (bias_axes is None or len(bias_axes) != len(bias_shape)):
    raise ValueError(f'einsum_dense: bias of shape {tuple(bias_shape)} needs one axis name per '
                     f'dimension, got {bias_axes}')
  return nnx.Einsum(
      einsum,
      tuple(kernel_shape),
      None if bias_shape is None else tuple(bias_shape),
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=nnx.with_partitioning(kernel_init, tuple(kernel_axes)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), tuple(bias_axes or ())),
      rngs=rngs,
  )


class SqueezeExcite(nnx.Module):
  """Squeeze-and-excitation (Hu et al. 2018): ``x * sigmoid(expand(relu(reduce(mean_hw(x)))))``.

  ``reduce`` and ``expand`` are 1x1 convolutions with biases, as in pycls, torchvision and
  transformers, so PyTorch weights load with the convolution layout. The channel gate is
  computed in float32 and applied in the compute dtype.
  """

  def __init__(self, features: int, squeeze_features: int, *,
               param_dtype: jnp.dtype = jnp.float32, precision: jax.lax.PrecisionLike = None,
               rngs: nnx.Rngs):
    if squeeze_features < 1:
      raise ValueError(f'SqueezeExcite: squeeze_features={squeeze_features} for {features} '
                       'features; it must be at least 1')
    options = dict(use_bias=True, dtype=jnp.float32, param_dtype=param_dtype,
                   precision=precision, rngs=rngs)
    self.reduce = conv(features, squeeze_features, 1, **options)
    self.expand = conv(squeeze_features, features, 1, **options)

  def __call__(self, x: jax.Array) -> jax.Array:
    squeezed = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    gate = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(squeezed))))
    return x * gate.astype(x.dtype)


def group_norm(
    num_features: int,
    num_groups: int,
    *,
    epsilon: float = 1e-5,
    param_dtype: jnp.dtype = jnp.float32,
    axis: str | None = 'conv_out',
    rngs: nnx.Rngs,
) -> nnx.GroupNorm:
  """GroupNorm over the last (feature) axis, computing in float32; scale and bias ``(axis,)``.

  Statistics are taken per example over every non-batch axis within a group: with
  ``num_groups == num_features`` on ``[batch, time, channels]`` each channel is normalised
  over time (wav2vec 2.0's first feature-encoder layer, PyTorch ``GroupNorm(C, C)``).
  """
  return nnx.GroupNorm(
      num_features,
      num_groups=num_groups,
      epsilon=epsilon,
      dtype=jnp.float32,
      param_dtype=param_dtype,
      # Two-pass variance, as PyTorch computes it: conv outputs over time can have a mean far
      # from zero, where E[x^2] - E[x]^2 loses digits.
      use_fast_variance=False,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)),
      rngs=rngs,
  )
