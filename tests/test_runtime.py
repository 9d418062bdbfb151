"""Runtime pieces that need no training: mesh sizes, batch splits, platform choice, hosts."""

import jax
import pytest

from benchmarks.config import ConfigError
from launch import runtime as runtime_lib
from launch import xla_flags


def test_mesh_shape_fills_the_free_axis_and_names_bad_sizes():
  assert runtime_lib.mesh_shape({'data': -1, 'fsdp': 2}, 8) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  with pytest.raises(ConfigError, match='only one axis may be -1'):
    runtime_lib.mesh_shape({'data': -1, 'fsdp': -1}, 8)
  with pytest.raises(ConfigError, match='needs 6 devices; this job has 8'):
    runtime_lib.mesh_shape({'data': 3, 'fsdp': 2}, 8)
  with pytest.raises(ConfigError, match="unknown mesh axes \\['model'\\]"):
    runtime_lib.mesh_shape({'model': 8}, 8)


def test_hybrid_mesh_puts_slices_on_the_outer_axis():
  devices = jax.devices()[:8]
  mesh = runtime_lib.make_mesh({'data': 2, 'fsdp': 2}, devices, dcn_axes={'data': 2})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  ids = [[d.id for d in row] for row in mesh.devices[:, :, 0]]
  # Slice 0 is devices 0-3, slice 1 devices 4-7: `data` crosses slices only at its midpoint,
  # `fsdp` never does.
  assert ids == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_local_batch_names_the_multiple_that_works():
  runtime = runtime_lib.Runtime(runtime_lib.make_mesh({'data': 8}, jax.devices()[:8]),
                                runtime_lib.logical_axis_rules('data_parallel'))
  assert runtime.local_batch_size(64) == 64  # one process feeds all 8 devices
  with pytest.raises(ConfigError, match='use a multiple of 8'):
    runtime.local_batch_size(12)


def test_multihost_detection_ignores_libtpu_warnings(monkeypatch):
  monkeypatch.delenv('MEGASCALE_COORDINATOR_ADDRESS', raising=False)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'WARNING: could not determine TPU worker hostnames, '
                     'please set env var `TPU_WORKER_HOSTNAMES` manually')
  assert not runtime_lib._on_multihost_tpu_vm()
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 't1v-n-0,t1v-n-1')
  assert runtime_lib._on_multihost_tpu_vm()
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 't1v-n-0')
  assert not runtime_lib._on_multihost_tpu_vm()
  # Multi-slice of single-host slices (e.g. 2x v5litepod-8 on GKE): still one job.
  monkeypatch.setenv('MEGASCALE_COORDINATOR_ADDRESS', 'job-slice-0-0.job:8080')
  assert runtime_lib._on_multihost_tpu_vm()


def test_absent_tpu_is_skipped_only_when_libtpu_is_installed(monkeypatch):
  found = {'libtpu': True, 'jax_cuda12_plugin': False, 'jax_cuda13_plugin': False}
  monkeypatch.setattr(xla_flags.importlib.util, 'find_spec', lambda name: found.get(name))
  monkeypatch.setattr(xla_flags.glob, 'glob', lambda pattern: [])
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  xla_flags.skip_absent_tpu()
  assert xla_flags.os.environ['JAX_PLATFORMS'] == 'cpu'
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')   # the user's choice wins
  xla_flags.skip_absent_tpu()
  assert xla_flags.os.environ['JAX_PLATFORMS'] == 'tpu'
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.setattr(xla_flags.glob, 'glob', lambda pattern: ['/dev/accel0'])
  xla_flags.skip_absent_tpu()
  assert 'JAX_PLATFORMS' not in xla_flags.os.environ
  found['jax_cuda12_plugin'] = True
  monkeypatch.setattr(xla_flags.glob, 'glob', lambda pattern: [])
  xla_flags.skip_absent_tpu()
  assert xla_flags.os.environ['JAX_PLATFORMS'] == 'cuda,cpu'
