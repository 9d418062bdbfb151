"""Accelerator chips and TPU slice names: what MFU and the ahead-of-time compile check need.

`CHIPS` holds each chip's HBM and peak dense FLOP/s (MFU's denominator; `chip_for_device_kind`
finds the row for `jax.devices()[0].device_kind` at run time). `parse_topology` turns a Cloud
TPU accelerator type into what `jax.experimental.topologies.get_topology_desc` needs to
build the slice's devices on a machine without TPUs.

Accelerator-type names count different things per generation:

  v4-N, v5p-N, tpu7x-N   N counts TensorCores, two per chip: v4-64 is 32 chips (2x4x4),
                         v5p-256 is 128 chips (4x4x8), tpu7x-128 is 64 chips (4x4x4)
  v5litepod-N, v5e-N,    N counts chips: v5litepod-16 is 16 chips (4x4), v6e-64 is 64
  v6e-N                  chips (8x8)

`2xv5p-256` is two v5p-256 slices joined over the data-center network (multislice), and
`v5p:4x4x8` names a slice by its chip grid, for shapes other than the default one.

Pure Python: nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping

from benchmarks.config import ConfigError

GiB = 2**30
MiB = 2**20


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip. FLOP/s and HBM are per chip, not per JAX device."""
  name: str                        # podium's short name: 'v5p', 'h100'
  product: str                     # what the vendor calls it
  device_kinds: tuple[str, ...]    # `device.device_kind` strings JAX reports for it
  hbm_bytes: int
  peak_flops: Mapping[str, float]  # dense matmul peak per dtype ('bfloat16', 'float32', ...)
  devices_per_chip: int = 1        # JAX devices per chip (TPU7x shows each TensorCore)
  # TPU slices only:
  generation: str = ''             # the prefix get_topology_desc knows: 'v4', 'v5', 'tpu7x'
  accelerator_prefixes: tuple[str, ...] = ()  # accelerator-type names: 'v5p', 'v5litepod'
  name_counts_cores: bool = False  # v4-64 counts TensorCores (2 per chip), v6e-64 chips
  chip_config_name: str = 'default'  # 'megacore': one JAX device spans both TensorCores
  grid_dims: int = 0               # 3: 3D torus (v4, v5p, v7); 2: 2D (v5e, v6e)
  max_chips_single_host: int = 4   # largest slice one host drives (v5e/v6e: 8)

  @property
  def peak_bf16_flops(self) -> float:
    """Dense bf16 FLOP/s of the whole chip: what MFU is measured against."""
    return self.peak_flops['bfloat16']

  @property
  def hbm_bytes_per_device(self) -> int:
    return self.hbm_bytes // self.devices_per_chip

  def peak_flops_per_device(self, dtype: str = 'bfloat16') -> float | None:
    """Peak dense FLOP/s of one JAX device for `dtype`, or None where not published."""
    peak = self.peak_flops.get(str(dtype))
    return None if peak is None else peak / self.devices_per_chip

  @property
  def is_tpu(self) -> bool:
    return bool(self.generation)


# Sources: Cloud TPU system-architecture pages (v4, v5e, v5p, v6e, TPU7x), NVIDIA H100/H200
# datasheets (SXM, dense, i.e. without 2:4 sparsity). Google publishes no float32 matmul peak
# for TPUs (the MXUs multiply bf16; float32 matmuls take several bf16 passes), so MFU of a
# float32 TPU run is reported against the bf16 peak.
CHIPS: dict[str, Chip] = {chip.name: chip for chip in (
    Chip('v4', 'TPU v4', ('TPU v4',), 32 * GiB, {'bfloat16': 275e12, 'int8': 275e12},
         generation='v4', accelerator_prefixes=('v4',), name_counts_cores=True,
         chip_config_name='megacore', grid_dims=3),
    Chip('v5e', 'TPU v5e', ('TPU v5 lite', 'TPU v5e'), 16 * GiB,
         {'bfloat16': 197e12, 'int8': 394e12},
         generation='v5e', accelerator_prefixes=('v5litepod', 'v5e'), grid_dims=2,
         max_chips_single_host=8),
    # Google's tables say 95 GiB; XLA reports 95.74 GiB usable per chip, so 96 GiB are there.
    Chip('v5p', 'TPU v5p', ('TPU v5', 'TPU v5p'), 96 * GiB, {'bfloat16': 459e12, 'int8': 918e12},
         generation='v5', accelerator_prefixes=('v5p',), name_counts_cores=True,
         chip_config_name='megacore', grid_dims=3),
    Chip('v6e', 'TPU v6e (Trillium)', ('TPU v6 lite', 'TPU v6e'), 32 * GiB,
         {'bfloat16': 918e12, 'int8': 1836e12},
         generation='v6e', accelerator_prefixes=('v6e',), grid_dims=2, max_chips_single_host=8),
    # Ironwood: 2,307 TFLOP/s bf16 and 4,614 fp8 per chip (Cloud TPU's TPU7x page); each of
    # the two TensorCores is its own JAX device with half of the 192 GiB.
    Chip('v7', 'TPU7x (Ironwood)', ('TPU7x', 'TPU v7', 'TPU v7x'), 192 * GiB,
         {'bfloat16': 2307e12, 'float8_e4m3fn': 4614e12, 'float8_e5m2': 4614e12},
         devices_per_chip=2, generation='tpu7x', accelerator_prefixes=('tpu7x', 'v7x', 'v7'),
         name_counts_cores=True, grid_dims=3),
    # HBM as nvidia-smi reports it (81,559 MiB and 143,771 MiB), a little under the nominal
    # 80 GB and 141 GB. float32 is the CUDA-core rate; TF32 tensor cores give 494.7 TFLOP/s.
    Chip('h100', 'NVIDIA H100 SXM', ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 SXM5 80GB'),
         81_559 * MiB, {'bfloat16': 989.4e12, 'float16': 989.4e12, 'float32': 66.9e12,
                        'float8_e4m3fn': 1978.9e12}),
    Chip('h200', 'NVIDIA H200 SXM', ('NVIDIA H200', 'NVIDIA H200 141GB HBM3e'), 143_771 * MiB,
         {'bfloat16': 989.4e12, 'float16': 989.4e12, 'float32': 66.9e12,
          'float8_e4m3fn': 1978.9e12}),
)}


def chip_for_device_kind(kind: str) -> Chip | None:
  """The chip whose JAX `device_kind` is `kind` (case and spacing ignored); None if unknown."""
  wanted = ' '.join(kind.lower().split())
  for chip in CHIPS.values():
    if wanted in (k.lower() for k in chip.device_kinds):
      return chip
  return None


@dataclasses.dataclass(frozen=True)
class TopologySpec:
  """A TPU slice (or several identical ones) as get_topology_desc wants it."""
  name: str                          # as given: 'v5p-256', '2xv5p-256', 'v5p:4x4x8'
  chip: Chip
  shape: tuple[int, ...]             # the chip grid of one slice: (4, 4, 8)
  num_slices: int
  chips_per_host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]      # torus wrap-around links per dimension

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.shape)

  @property
  def num_chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def num_devices(self) -> int:
    """JAX devices of the whole job (what `jax.device_count()` says on the pod)."""
    return self.num_chips * self.chip.devices_per_chip

  @property
  def chips_per_host(self) -> int:
    return math.prod(self.chips_per_host_bounds)

  @property
  def num_hosts(self) -> int:
    """TPU VMs of the whole job: one podium process runs on each."""
    return self.num_chips // self.chips_per_host

  @property
  def topology_name(self) -> str:
    """The name get_topology_desc takes: 'v5:4x4x8'."""
    return f'{self.chip.generation}:{"x".join(map(str, self.shape))}'

  @property
  def chip_config_name(self) -> str:
    return self.chip.chip_config_name

  def describe(self) -> str:
    slices = f'{self.num_slices} slices of ' if self.num_slices > 1 else ''
    per_chip = (f', {self.num_devices} devices' if self.chip.devices_per_chip > 1 else '')
    hosts = f'{self.num_hosts} host' + ('s' if self.num_hosts > 1 else '')
    chips = f'{self.num_chips} chip' + ('s' if self.num_chips > 1 else '')
    return f'{slices}{self.chip.product} {"x".join(map(str, self.shape))}: {chips}{per_chip}, {hosts}'


_NAME = re.compile(r'^(?:(?P<slices>\d+)x)?(?P<prefix>[a-z0-9]+?)(?:-(?P<count>\d+)|:(?P<grid>\d+(?:x\d+)+))$')


def _prefixes() -> dict[str, Chip]:
  return {p: chip for chip in CHIPS.values() for p in chip.accelerator_prefixes}


def valid_examples() -> str:
  return ('v4-64, v5p-256, v5litepod-16 (or v5e-16), v6e-64, tpu7x-128, 2xv5p-256 (two slices), '
          'v5p:4x4x8 (a chip grid)')


def parse_topology(name: str) -> TopologySpec:
  """'v5p-256' -> TopologySpec(v5p, shape (4, 4, 8), ...); errors say what would be valid."""
  match = _NAME.match(name.strip().lower())
  prefixes = _prefixes()
  if not match or match['prefix'] not in prefixes:
    raise ConfigError(f'unknown TPU topology {name!r}; valid are names like {valid_examples()}')
  chip = prefixes[match['prefix']]
  num_slices = int(match['slices'] or 1)
  if num_slices < 1:
    raise ConfigError(f'topology {name!r}: the number of slices must be at least 1')
  if match['grid']:
    shape = tuple(int(d) for d in match['grid'].split('x'))
    if len(shape) != chip.grid_dims or min(shape) < 1:
      raise ConfigError(f'topology {name!r}: {chip.product} chips form a {chip.grid_dims}D grid, '
                        f'e.g. {_example_grid(chip)}')
  else:
    count = int(match['count'])
    if chip.name_counts_cores:
      if count % 2:
        raise ConfigError(f'topology {name!r}: for {chip.product} the number after the dash '
                          f'counts TensorCores, two per chip, so it must be even')
      chips = count // 2
    else:
      chips = count
    shape = _default_shape(chip, chips, name)
  return TopologySpec(name=name, chip=chip, shape=shape, num_slices=num_slices,
                      chips_per_host_bounds=_host_bounds(chip, shape), wrap=_wrap(chip, shape))


def _example_grid(chip: Chip) -> str:
  return f'{chip.accelerator_prefixes[0]}:' + ('4x4x8' if chip.grid_dims == 3 else '8x8')


# Slices smaller than one 4x4x4 cube have fixed shapes; larger ones are whole cubes.
_SMALL_3D = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


def _default_shape(chip: Chip, chips: int, name: str) -> tuple[int, ...]:
  """The chip grid Cloud TPU gives an accelerator type (its 'default topology')."""
  if chip.grid_dims == 2:
    if chips not in _SHAPES_2D:
      sizes = ', '.join(f'{chip.accelerator_prefixes[0]}-{n}' for n in _SHAPES_2D)
      raise ConfigError(f'topology {name!r}: {chip.product} slices have {", ".join(map(str, _SHAPES_2D))} '
                        f'chips ({sizes})')
    return _SHAPES_2D[chips]
  if chips in _SMALL_3D:
    return _SMALL_3D[chips]
  unit = 2 if chip.name_counts_cores else 1
  if chips < 64 or chips % 64:
    small = ', '.join(f'{chip.accelerator_prefixes[0]}-{n * unit}' for n in _SMALL_3D if n > 1)
    raise ConfigError(
        f'topology {name!r} is {chips} chips; {chip.product} slices are {small}, or a '
        f'multiple of 64 chips ({chip.accelerator_prefixes[0]}-{64 * unit}, '
        f'-{128 * unit}, ...)')
  return tuple(4 * d for d in _most_cubic(chips // 64))


def _most_cubic(cubes: int) -> tuple[int, int, int]:
  """a <= b <= c with a*b*c == cubes, the largest side as small as it can be, then the
  smallest as large: 12 -> (2, 2, 3), 16 -> (2, 2, 4). This matches Cloud TPU's shapes."""
  best = None
  for a in range(1, cubes + 1):
    for b in range(a, cubes + 1):
      if cubes % (a * b) == 0 and cubes // (a * b) >= b:
        c = cubes // (a * b)
        key = (c, -a)
        if best is None or key < best[0]:
          best = (key, (a, b, c))
  return best[1]


def _host_bounds(chip: Chip, shape: tuple[int, ...]) -> tuple[int, int, int]:
  """Chips one TPU VM drives, as a box: 2x2x1 on multi-host slices; the whole slice when one
  host holds it (v5e and v6e put up to 8 chips, 2x4, on one host)."""
  full = tuple(shape) + (1,) * (3 - len(shape))
  if math.prod(shape) <= chip.max_chips_single_host:
    return full
  return (2, 2, 1)


def _wrap(chip: Chip, shape: tuple[int, ...]) -> tuple[bool, bool, bool]:
  """Torus wrap-around links. 3D slices of whole 4x4x4 cubes wrap in every dimension;
  2D (v5e, v6e) slices wrap along a side of 16 chips, the full pod's side."""
  if chip.grid_dims == 3:
    cubes = math.prod(shape) >= 64 and all(d % 4 == 0 for d in shape)
    return (cubes,) * 3
  return (shape[0] == 16, shape[1] == 16, False)
