"""Layer constructors shared by every podium model.

Each constructor attaches *logical* axis names (``'embed'``, ``'mlp'``, ``'conv_out'``, ...)
to the parameters it creates, so all models look alike to the runtime: it reads the names
with ``nnx.get_partition_spec`` under a recipe's logical-axis rules and shards the state
through ``jax.jit``. Model code never names mesh axes: which mesh axis holds ``'batch'``
or ``'conv_out'`` is the recipe's choice.
"""

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


def symmetric_padding(kernel_size: Sequence[int]) -> list[tuple[int, int]]:
  """Pads ``k // 2`` on both sides of each spatial axis.

  This is PyTorch's ``padding=k // 2`` and the MLPerf TF reference's fixed padding. XLA's
  'SAME' pads strided convolutions asymmetrically instead, which changes the numbers and
  breaks parity with published weights.
  """
  return [(k // 2, k // 2) for k in kernel_size]


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] | None = None,
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
  because a BatchNorm follows them.
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
      use_bias=use_bias,
      kernel_init=nnx.with_partitioning(kernel_init, spatial + tuple(axes)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
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


def batch_norm(
    num_features: int,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    scale_init: nnx.Initializer = nnx.initializers.ones_init(),
    param_dtype: jnp.dtype = jnp.float32,
    axis: str | None = 'conv_out',
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
  """BatchNorm over the last axis, computing in float32 whatever the input dtype.

  Scale, bias and the running mean/variance are all named ``(axis,)`` so statistics shard
  like the features they describe. Statistics are plain means over every non-feature axis:
  under ``jax.jit`` with a batch sharded across devices GSPMD makes them global-batch
  statistics, so no ``axis_name`` is needed. ``momentum=0.9`` is PyTorch's 0.1.
  """
  bn = nnx.BatchNorm(
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
