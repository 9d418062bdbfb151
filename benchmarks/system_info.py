"""What this run runs on: the MLPerf system name, device facts and software versions.

The JAX side of the system description; `results.system_desc` turns it into the MLPerf
system JSON without importing JAX.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re

import jax

from results import system_desc


def device_kind() -> str:
  return jax.devices()[0].device_kind


def system_name(config, runtime) -> str:
  """`submission.system` if the recipe sets it, else e.g. `tpu-v5p-x256` or `cpu-x8`."""
  if config.submission.system:
    return config.submission.system
  device = jax.devices()[0]
  kind = device.device_kind if device.platform != 'cpu' else ''
  name = '-'.join(part for part in (device.platform, kind) if part)
  name = re.sub(r'[^A-Za-z0-9]+', '-', name.lower()).strip('-')
  return f'{name}-x{runtime.num_devices}'


def versions() -> dict[str, str]:
  found = {'python': platform.python_version()}
  for package in ('jax', 'jaxlib', 'libtpu', 'flax', 'optax', 'orbax-checkpoint',
                  'tensorflow-cpu', 'tensorflow', 'mlperf-logging'):
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def write_system_json(path: str, config, runtime, system: str) -> None:
  devices = jax.devices()
  device = devices[0]
  accelerator = device.device_kind if device.platform != 'cpu' else ''
  memory = ''
  if device.platform != 'cpu':
    try:
      stats = device.memory_stats() or {}
      if stats.get('bytes_limit'):
        memory = f'{stats["bytes_limit"] / 2**30:.0f} GB'
    except Exception:  # memory_stats is not implemented on every backend
      memory = ''
  software = versions()
  desc = system_desc.system_description(
      submitter=config.submission.org,
      division=config.submission.division,
      status=config.submission.status,
      system_name=system,
      number_of_nodes=runtime.process_count,
      accelerators_per_node=len(jax.local_devices()) if accelerator else 0,
      accelerator_model_name=accelerator,
      accelerator_memory_capacity=memory,
      framework=f'JAX {software.get("jax", "")}, Flax {software.get("flax", "")}',
      other_software_stack=software,
      notes=f'podium recipe {config.benchmark}/{config.recipe}',
  )
  system_desc.write_system_description(path, desc)
