"""Model FLOPs and MFU, measured rather than assumed.

Model FLOPs come from XLA's cost analysis of the train step as lowered, before GSPMD
partitions it: the whole step's math, once. (The compiled per-device program is kept for
reference but is no measure of the model: it adds the partitioner's redundant work, and on
TPU counts the body of a while loop once, which undercounts FSDP's looped convolutions.)
The peak is the chip's dense bf16 rate from `launch.chips`; on a CPU, where no table holds,
a matmul rate measured at start-up, split evenly over the (simulated) devices.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp


def lowered_flops(lowered) -> float:
  """FLOPs of a lowered, not yet partitioned program: the global step (0 if XLA does not say).

  Backends behind a PJRT plugin (CUDA, TPU) cannot cost a lowered program, and their compiled
  counts are no substitute (XLA:GPU leaves out the convolutions it hands to cuDNN: ResNet-50
  came out at 2% of its FLOPs). Their programs are costed by XLA:CPU's analysis instead, the
  one used on a CPU, so that MFU means the same on every device."""
  return compiled_flops(lowered) or _cpu_analysis_flops(lowered)


def _cpu_analysis_flops(lowered) -> float:
  try:  # jax internals (0.10-0.11): the call Lowered.cost_analysis makes, on the CPU client
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    module = lowered.compiler_ir('hlo').as_hlo_module()
    analysis = _jax.hlo_module_cost_analysis(xla_bridge.get_backend('cpu'), module)
  except Exception:  # noqa: BLE001 -- no CPU client, or the internals moved: unknown
    return 0.0
  return float((analysis or {}).get('flops', 0.0))


def compiled_flops(compiled) -> float:
  """FLOPs of one execution of a compiled per-device program (0 if XLA does not say)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


@functools.lru_cache(maxsize=None)
def measure_cpu_matmul_rate(size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a float32 matmul on this host, best of `repeats` (all cores XLA uses)."""
  matmul = jax.jit(lambda a, b: a @ b, backend='cpu')
  a = jnp.ones((size, size), jnp.float32, device=jax.local_devices(backend='cpu')[0])
  jax.block_until_ready(matmul(a, a))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


@dataclasses.dataclass(frozen=True)
class Peak:
  flops_per_device: float
  source: str          # where the number comes from, for the record


def peak_per_device(devices) -> Peak | None:
  """The peak FLOP/s of one device, or None for an accelerator missing from the table."""
  device = devices[0]
  if device.platform == 'cpu':
    per_host = measure_cpu_matmul_rate()
    local = max(sum(1 for d in devices if d.process_index == device.process_index), 1)
    return Peak(per_host / local, f'measured float32 matmul rate of this CPU / {local} devices')
  from launch import chips
  chip = chips.chip_for_device_kind(device.device_kind)
  if chip is None:
    return None
  return Peak(chip.peak_bf16_flops / chip.devices_per_chip, f'{chip.name} bf16 peak (launch/chips.py)')


@dataclasses.dataclass(frozen=True)
class StepFlops:
  model_flops: float            # one train step, all devices
  num_devices: int
  peak: Peak | None
  compiled_per_device: float | None = None

  @property
  def per_device(self) -> float:
    return self.model_flops / self.num_devices

  def achieved_per_device(self, step_time_s: float) -> float:
    return self.per_device / step_time_s

  def mfu(self, step_time_s: float) -> float | None:
    if not self.peak or not self.per_device:
      return None
    return self.achieved_per_device(step_time_s) / self.peak.flops_per_device
