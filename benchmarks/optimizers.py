"""Optimizers and learning-rate schedules with MLPerf's names and semantics, on optax."""

from __future__ import annotations

from collections.abc import Sequence
import re

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
                 nesterov: bool = False, decay_all_parameters: bool = False):
  """SGD with momentum and L2 weight decay on kernels only (MLPerf `sgd_opt_*`).

  `decay_all_parameters=True` decays BatchNorm parameters and biases too, as PyTorch's
  `SGD(weight_decay=...)` does in pycls's recipes. The update is PyTorch's: `v = m v + g`,
  then `p -= lr (g + m v)` with Nesterov, else `p -= lr v`.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay,
                                mask=None if decay_all_parameters else is_matrix_like),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


def warmup_cosine_by_epoch(*, base_lr: float, total_epochs: int, warmup_epochs: float,
                           warmup_factor: float, epoch_starts: Sequence[int]) -> optax.Schedule:
  """pycls's half-period cosine with linear warmup, set once per epoch (its 'cos' policy).

  At epoch `e` (0-based) the rate is `0.5 * base_lr * (1 + cos(pi * e / total_epochs))`,
  times `warmup_factor * (1 - e / warmup_epochs) + e / warmup_epochs` while
  `e < warmup_epochs`: RegNet's recipes start at 0.1x the base rate and reach it after 5
  epochs. `epoch_starts[i]` is the step that begins epoch `i + 1`; counting the starts a step
  has passed gives its epoch exactly, with no float rounding at the boundaries.
  """
  starts = tuple(int(s) for s in epoch_starts)

  def schedule(step):
    passed = jnp.asarray(step, jnp.int32) >= jnp.asarray(starts, jnp.int32)
    epoch = jnp.sum(passed).astype(jnp.float32)
    rate = 0.5 * base_lr * (1.0 + jnp.cos(jnp.pi * epoch / total_epochs))
    alpha = epoch / max(warmup_epochs, 1e-9)
    warm = warmup_factor * (1.0 - alpha) + alpha
    return jnp.where(epoch < warmup_epochs, rate * warm, rate)
  return schedule


def bert_warmup_polynomial_decay(*, base_lr: float, train_steps: int, warmup_steps: int,
                                 start_warmup_step: int = 0, power: float = 1.0,
                                 end_lr: float = 0.0) -> optax.Schedule:
  """MLPerf BERT's schedule (the TF reference's optimization.py), by optimizer step.

  Polynomial decay from `base_lr` to `end_lr` over `train_steps` steps counted from step 0
  (`opt_learning_rate_training_steps`), held at `end_lr` after; while
  `step - start_warmup_step < warmup_steps` the rate is instead the linear warmup
  `base_lr * (step - start_warmup_step) / warmup_steps`. A negative `start_warmup_step`
  (the RCPs use -76, -100, -700) starts the warmup part-way; `warmup_steps=0` means none.
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.minimum(step, train_steps) / max(train_steps, 1)
    decayed = (base_lr - end_lr) * (1.0 - progress) ** power + end_lr
    if not warmup_steps:
      return decayed
    local = step - start_warmup_step
    return jnp.where(local < warmup_steps, base_lr * local / warmup_steps, decayed)
  return schedule


# MLPerf BERT (google-research/bert's LAMB): no weight decay or layer-wise adaptation for
# LayerNorm parameters and biases, matched by name.
BERT_EXCLUDE_FROM_WEIGHT_DECAY = ('LayerNorm', 'layer_norm', 'norm', 'bias')


def name_mask(patterns, exclude: bool = True):
  """A mask function: True for parameters whose path ('a/b/kernel') matches none of the
  regular expressions `patterns` (or, with `exclude=False`, matches one)."""
  compiled = [re.compile(p) for p in patterns]

  def mask(params):
    def leaf(path, _):
      name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
      hit = any(p.search(name) for p in compiled)
      return not hit if exclude else hit
    return jax.tree_util.tree_map_with_path(leaf, params)
  return mask


def lamb(schedule: optax.Schedule, *, beta_1: float, beta_2: float, epsilon: float,
         weight_decay: float, exclude_from_weight_decay=BERT_EXCLUDE_FROM_WEIGHT_DECAY,
         clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """LAMB as MLPerf's BERT runs it (`opt_lamb_*` keys).

  The gradient is clipped to global norm `clip_norm` (1.0 in the reference); then the
  bias-corrected Adam direction `m_hat / (sqrt(v_hat) + epsilon)`, plus `weight_decay *
  param`, is scaled by the trust ratio `||param|| / ||direction||` (1 where either is 0) and
  by the learning rate. Parameters whose names match `exclude_from_weight_decay` get
  neither the decay nor the trust ratio (the reference excludes the same set from both).
  """
  decay = name_mask(exclude_from_weight_decay)
  return optax.chain(
      optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
      optax.scale_by_adam(b1=beta_1, b2=beta_2, eps=epsilon),
      optax.add_decayed_weights(weight_decay, mask=decay),
      optax.masked(optax.scale_by_trust_ratio(), decay),
      optax.scale_by_learning_rate(schedule))


def tri_stage(*, base_lr: float, warmup_steps: int, hold_steps: int, decay_steps: int,
              init_lr_scale: float = 0.01, final_lr_scale: float = 0.01) -> optax.Schedule:
  """fairseq's tri-stage schedule (wav2vec 2.0 fine-tuning; Park et al. 2019's SpecAugment).

  Linear warmup from `init_lr_scale * base_lr` to `base_lr` over `warmup_steps`, `base_lr`
  for `hold_steps`, exponential decay to `final_lr_scale * base_lr` over `decay_steps`, then
  constant. fairseq's recipes give the stages as fractions of the run (`phase_ratio`
  [0.1, 0.4, 0.5]) with `final_lr_scale` 0.05.
  """
  init_lr, final_lr = init_lr_scale * base_lr, final_lr_scale * base_lr
  rate = (base_lr - init_lr) / warmup_steps if warmup_steps else 0.0
  factor = -jnp.log(final_lr_scale) / max(decay_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay_start = warmup_steps + hold_steps
    warm = init_lr + rate * step
    decayed = base_lr * jnp.exp(-factor * (step - decay_start))
    return jnp.where(step < warmup_steps, warm,
                     jnp.where(step < decay_start, base_lr,
                               jnp.where(step <= decay_start + decay_steps, decayed, final_lr)))
  return schedule
