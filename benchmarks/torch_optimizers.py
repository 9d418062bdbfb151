"""podium's LARS and LAMB written for PyTorch, so that `podium bench` compares train steps that
do the same work on both sides (PyTorch has neither in core).

Each is the update of the optax chain in `benchmarks.optimizers`, step for step, on
multi-tensor `torch._foreach_*` kernels as PyTorch's own optimizers run by default;
tests/test_bench.py checks both against optax. The learning rate is a constant: the bench
times steps, it does not train.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch


def _trust_ratios(params: list[torch.Tensor], updates: list[torch.Tensor], *,
                  coefficient: float = 1.0, eps: float = 0.0) -> list[torch.Tensor]:
  """optax.scale_by_trust_ratio's per-tensor factor: coefficient ||p|| / (||u|| + eps), or 1
  where either norm is 0."""
  p_norms = torch.stack(torch._foreach_norm(params))
  u_norms = torch.stack(torch._foreach_norm(updates))
  ratios = torch.where((p_norms == 0) | (u_norms == 0), torch.ones_like(p_norms),
                       coefficient * p_norms / (u_norms + eps))
  return list(ratios.unbind())


class Lars(torch.optim.Optimizer):
  """optax.lars as `benchmarks.optimizers.lars` configures it (MLPerf ResNet): for kernels
  (ndim > 1), `u = g + wd p` scaled by `trust_coefficient ||p|| / (||u|| + eps)`; biases and
  BatchNorm parameters get the gradient alone; then `u *= -lr` and heavy-ball momentum
  `t = u + momentum t` (Nesterov: `u + momentum t`) is the update."""

  def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float,
               weight_decay: float, trust_coefficient: float = 0.001, eps: float = 0.0,
               nesterov: bool = False):
    super().__init__(list(params), dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                        trust_coefficient=trust_coefficient, eps=eps,
                                        nesterov=nesterov))

  @torch.no_grad()
  def step(self, closure=None):
    assert closure is None
    for group in self.param_groups:
      params = [p for p in group['params'] if p.grad is not None]
      if not params:
        continue
      updates = [p.grad.clone() for p in params]
      adapted = [i for i, p in enumerate(params) if p.ndim > 1]
      if adapted:
        kernels = [params[i] for i in adapted]
        scaled = [updates[i] for i in adapted]
        torch._foreach_add_(scaled, kernels, alpha=group['weight_decay'])
        torch._foreach_mul_(scaled, _trust_ratios(kernels, scaled,
                                                  coefficient=group['trust_coefficient'],
                                                  eps=group['eps']))
      torch._foreach_mul_(updates, -group['lr'])
      traces = [self.state[p].setdefault('trace', torch.zeros_like(p)) for p in params]
      torch._foreach_mul_(traces, group['momentum'])
      torch._foreach_add_(traces, updates)
      if group['nesterov']:
        torch._foreach_add_(updates, traces, alpha=group['momentum'])
        torch._foreach_add_(params, updates)
      else:
        torch._foreach_add_(params, traces)


class Lamb(torch.optim.Optimizer):
  """`benchmarks.optimizers.lamb` (MLPerf BERT's LAMB): the gradient clipped to global norm
  `clip_norm`; Adam's bias-corrected direction `m_hat / (sqrt(v_hat) + eps)`; for parameters
  whose names match none of `exclude`, plus `wd p` and times the trust ratio `||p|| / ||u||`;
  then times `-lr`. Takes `named_parameters()`."""

  def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], *, lr: float,
               betas: tuple[float, float], eps: float, weight_decay: float,
               exclude: Sequence[str], clip_norm: float | None = 1.0):
    patterns = [re.compile(p) for p in exclude]
    decayed, plain = [], []
    for name, param in named_params:
      (plain if any(p.search(name) for p in patterns) else decayed).append(param)
    groups = [{'params': decayed, 'adapt': True}, {'params': plain, 'adapt': False}]
    super().__init__([g for g in groups if g['params']],
                     dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
    self.clip_norm = clip_norm
    self.steps = 0

  @torch.no_grad()
  def step(self, closure=None):
    assert closure is None
    everything = [p for g in self.param_groups for p in g['params'] if p.grad is not None]
    if not everything:
      return
    grads = [p.grad for p in everything]
    if self.clip_norm:
      norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
      torch._foreach_mul_(grads, torch.where(norm < self.clip_norm, torch.ones_like(norm),
                                             self.clip_norm / norm))
    self.steps += 1
    for group in self.param_groups:
      params = [p for p in group['params'] if p.grad is not None]
      beta_1, beta_2 = group['betas']
      grads = [p.grad for p in params]
      mus = [self.state[p].setdefault('mu', torch.zeros_like(p)) for p in params]
      nus = [self.state[p].setdefault('nu', torch.zeros_like(p)) for p in params]
      torch._foreach_lerp_(mus, grads, 1 - beta_1)
      torch._foreach_mul_(nus, beta_2)
      torch._foreach_addcmul_(nus, grads, grads, value=1 - beta_2)
      denominators = torch._foreach_sqrt(nus)
      torch._foreach_div_(denominators, (1 - beta_2 ** self.steps) ** 0.5)
      torch._foreach_add_(denominators, group['eps'])
      updates = torch._foreach_div(mus, denominators)
      torch._foreach_div_(updates, 1 - beta_1 ** self.steps)
      if group['adapt']:
        torch._foreach_add_(updates, params, alpha=group['weight_decay'])
        torch._foreach_mul_(updates, _trust_ratios(params, updates))
      torch._foreach_add_(params, updates, alpha=-group['lr'])
