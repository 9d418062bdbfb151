"""Optimizers and learning-rate schedules with MLPerf's names and semantics, on optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_polynomial_decay(*, base_lr: float, end_lr: float, warmup_steps: int,
                            decay_steps: int, power: float = 2.0) -> optax.Schedule:
  """Linear warmup from 0 to `base_lr`, then `(base-end) * (1 - t/decay)^power + end`.

  The MLPerf ResNet LARS schedule (`lars_opt_*` keys): `decay_steps` counts the steps after
  warmup, and the rate holds at `end_lr` past them.
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / max(decay_steps, 1), 0.0, 1.0)
    decayed = (base_lr - end_lr) * (1.0 - progress) ** power + end_lr
    return jnp.where(step < warmup_steps, warm, decayed)
  return schedule


def is_matrix_like(params):
  """Mask: True for kernels, False for biases and BatchNorm scales (excluded by MLPerf)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def lars(schedule: optax.Schedule, *, momentum: float, weight_decay: float,
         epsilon: float = 0.0, trust_coefficient: float = 0.001, nesterov: bool = False):
  """LARS as in MLPerf ResNet: BatchNorm parameters and biases get neither weight decay nor
  layer-wise adaptation."""
  return optax.lars(learning_rate=schedule, weight_decay=weight_decay,
                    weight_decay_mask=is_matrix_like, trust_coefficient=trust_coefficient,
                    eps=epsilon, trust_ratio_mask=is_matrix_like, momentum=momentum,
                    nesterov=nesterov)


def sgd_momentum(schedule: optax.Schedule, *, momentum: float, weight_decay: float,
                 nesterov: bool = False):
  """SGD with momentum and L2 weight decay on kernels only (MLPerf `sgd_opt_*`)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=is_matrix_like),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov))
