"""The runtime: multi-host initialisation, the device mesh, and logical-to-mesh sharding.

One process per host (JAX's multi-controller model). The recipe names mesh axis sizes
(`data`, `fsdp`, `tensor`; -1 fills the rest) and the logical-axis rules that map the names
models put on their parameters and activations (`batch`, `embed`, `conv_out`, ...) to those
axes. Everything is GSPMD through `jax.jit` with `NamedSharding`s; the mesh uses Auto axis
types, which logical rules need (`jax.make_mesh` now defaults to Explicit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks.config import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
# The mesh axes a batch is split over: data parallelism and FSDP both split the batch.
BATCH_AXES = ('data', 'fsdp')

# Logical-axis rules, in flax's (logical name, mesh axes) form. A name missing from the rules
# is replicated.
RULES = {
    'data_parallel': (
        ('batch', BATCH_AXES),
    ),
    # ZeRO-3 style: parameters and optimizer state split over `fsdp` along their output axis.
    'fsdp': (
        ('batch', BATCH_AXES),
        ('conv_out', 'fsdp'),
        ('embed', 'fsdp'),
        ('mlp', 'fsdp'),
        ('vocab', 'fsdp'),
    ),
    # Megatron style: attention split by head, the MLP by its hidden units, the vocabulary
    # (embedding rows, logits) over `tensor`; GSPMD adds the all-reduces after each block.
    'tensor_parallel': (
        ('batch', BATCH_AXES),
        ('heads', 'tensor'),
        ('mlp', 'tensor'),
        ('vocab', 'tensor'),
    ),
    # Both: tensor parallelism inside, the remaining model dimension over `fsdp` (ZeRO-3).
    'fsdp_tensor_parallel': (
        ('batch', BATCH_AXES),
        ('heads', 'tensor'),
        ('mlp', 'tensor'),
        ('vocab', 'tensor'),
        ('embed', 'fsdp'),
        ('conv_out', 'fsdp'),
    ),
}


def logical_axis_rules(name: str) -> tuple:
  if name not in RULES:
    raise ConfigError(f'unknown sharding rules {name!r}; valid: {", ".join(RULES)}')
  return RULES[name]


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts `jax.distributed` when this is one process of several.

  Explicit values (flags, or PODIUM_COORDINATOR / PODIUM_NUM_PROCESSES / PODIUM_PROCESS_ID)
  are for CPU and GPU clusters; on a multi-host Cloud TPU VM JAX finds its peers by itself.
  """
  coordinator_address = coordinator_address or os.environ.get('PODIUM_COORDINATOR')
  if num_processes is None and 'PODIUM_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['PODIUM_NUM_PROCESSES'])
  if process_id is None and 'PODIUM_PROCESS_ID' in os.environ:
    process_id = int(os.environ['PODIUM_PROCESS_ID'])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ConfigError('a coordinator address needs --num_processes and --process_id '
                        '(or PODIUM_NUM_PROCESSES and PODIUM_PROCESS_ID)')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _on_multihost_tpu_vm():
    jax.distributed.initialize()


def enable_compilation_cache(directory: str | None) -> None:
  """JAX's persistent compilation cache: a rerun of the same recipe skips XLA compiles.

  Compiling happens before run_start, so the cache shortens init, never time-to-train.
  """
  if not directory or directory == 'none':
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def _on_multihost_tpu_vm() -> bool:
  # Multi-slice (GKE/xpk) sets the megascale coordinator even when each slice has one host.
  if os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return True
  # libtpu may leave a warning sentence in this variable on machines that are not TPU VMs.
  hosts = [h.strip() for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  return len(hosts) > 1 and all(' ' not in h for h in hosts)


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves the recipe's axis sizes (one may be -1) against the number of devices."""
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'unknown mesh axes {sorted(unknown)}; valid: {", ".join(MESH_AXES)}')
  sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ConfigError(f'mesh: only one axis may be -1, got {", ".join(free)}')
  known = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f'mesh {dict(axes)}: {num_devices} devices are not divisible by {known}')
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f'mesh {sizes} needs {math.prod(sizes.values())} devices; '
                      f'this job has {num_devices}')
  return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None,
              dcn_axes: Mapping[str, int] | None = None) -> Mesh:
  """A mesh over `devices` with podium's axes.

  `dcn_axes` splits each axis across slices (multi-slice TPU): e.g. {'data': 2} over two
  slices puts the slow data-center network only between the two halves of `data`, and
  `axes` then gives the sizes inside one slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = {name: int((dcn_axes or {}).get(name, 1)) for name in MESH_AXES}
  num_slices = math.prod(dcn.values())
  if len(devices) % num_slices:
    raise ConfigError(f'dcn_mesh {dcn} needs a multiple of {num_slices} devices; got {len(devices)}')
  sizes = mesh_shape(axes, len(devices) // num_slices)
  shape = tuple(sizes[name] for name in MESH_AXES)
  if num_slices > 1:
    dcn_shape = tuple(dcn[name] for name in MESH_AXES)
    try:
      device_array = mesh_utils.create_hybrid_device_mesh(shape, dcn_shape, devices)
    except ValueError:  # devices without slice_index (simulated CPUs): consecutive = one slice
      per_slice = np.asarray(devices).reshape(*dcn_shape, *shape)
      device_array = per_slice.transpose(0, 3, 1, 4, 2, 5).reshape(
          tuple(d * i for d, i in zip(dcn_shape, shape)))
  else:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  return Mesh(device_array, MESH_AXES)


@dataclasses.dataclass
class Runtime:
  """The mesh and the sharding rules one run uses; the loop's only view of devices."""
  mesh: Mesh
  rules: tuple

  @classmethod
  def from_config(cls, config, devices: Sequence[Any] | None = None) -> 'Runtime':
    dcn = dict(config.dcn_mesh) if 'dcn_mesh' in config else None
    return cls(make_mesh(dict(config.mesh), devices, dcn), logical_axis_rules(config.sharding_rules))

  @property
  def process_index(self) -> int:
    return jax.process_index()

  @property
  def process_count(self) -> int:
    return jax.process_count()

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def batch_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

  def local_batch_size(self, global_batch_size: int) -> int:
    """This process's share of the global batch; errors name the sizes that would work."""
    if global_batch_size % self.batch_shards:
      raise ConfigError(
          f'global batch {global_batch_size} cannot be split over {self.batch_shards} batch '
          f'shards (mesh {dict(self.mesh.shape)}); use a multiple of {self.batch_shards}')
    return global_batch_size // self.process_count

  def sharding(self, logical_spec: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(logical_spec), self.rules))

  def tree_shardings(self, abstract_tree, logical_specs):
    """NamedShardings for arrays with logical PartitionSpecs (from nnx.get_partition_spec).

    A dimension whose size the mesh axes do not divide is replicated instead (e.g. 64
    channels over fsdp=256 on a large pod): GSPMD needs even shards, and replicating one
    small tensor costs less than failing the run.
    """
    def sharding(leaf, spec):
      mesh_spec = nn.logical_to_mesh_axes(tuple(spec), self.rules)
      dims = []
      for size, axes in zip(leaf.shape, tuple(mesh_spec) + (None,) * (len(leaf.shape) - len(mesh_spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(self.mesh.shape[name] for name in names)
        dims.append(axes if names and size % ways == 0 else None)
      return NamedSharding(self.mesh, P(*dims))
    return jax.tree.map(sharding, abstract_tree, logical_specs,
                        is_leaf=lambda x: isinstance(x, P))

  @contextlib.contextmanager
  def activate(self):
    """Mesh and logical rules in scope while tracing: activation constraints resolve here."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(BATCH_AXES))

  def global_batch(self, local_batch):
    """Host-local numpy batch -> global jax.Arrays split over the batch axes."""
    sharding = self.batch_sharding()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)

  def max_over_processes(self, value: int) -> int:
    if self.process_count == 1:
      return int(value)
    return int(np.max(multihost_utils.process_allgather(np.asarray(value))))

  def broadcast_ints(self, values: Sequence[int]) -> list[int]:
    """Process 0's integers on every process (e.g. the run index it reserved)."""
    if self.process_count == 1:
      return [int(v) for v in values]
    array = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))
    return [int(v) for v in np.asarray(array)]

  def sync(self, name: str) -> None:
    if self.process_count > 1:
      multihost_utils.sync_global_devices(name)
