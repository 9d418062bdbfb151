"""The chip table and TPU slice names (pure Python: no libtpu, no JAX devices)."""

import pytest

from benchmarks.config import ConfigError
from launch.chips import CHIPS, GiB, chip_for_device_kind, parse_topology


@pytest.mark.parametrize('name,chip,shape,chips,hosts,bounds,wrap,topology_name', [
    # v4 and v5p count TensorCores: two per chip.
    ('v4-8', 'v4', (2, 2, 1), 4, 1, (2, 2, 1), (False,) * 3, 'v4:2x2x1'),
    ('v4-64', 'v4', (2, 4, 4), 32, 8, (2, 2, 1), (False,) * 3, 'v4:2x4x4'),
    ('v4-128', 'v4', (4, 4, 4), 64, 16, (2, 2, 1), (True,) * 3, 'v4:4x4x4'),
    ('v4-512', 'v4', (4, 8, 8), 256, 64, (2, 2, 1), (True,) * 3, 'v4:4x8x8'),
    ('v4-4096', 'v4', (8, 16, 16), 2048, 512, (2, 2, 1), (True,) * 3, 'v4:8x16x16'),
    ('v5p-8', 'v5p', (2, 2, 1), 4, 1, (2, 2, 1), (False,) * 3, 'v5:2x2x1'),
    ('v5p-256', 'v5p', (4, 4, 8), 128, 32, (2, 2, 1), (True,) * 3, 'v5:4x4x8'),
    ('v5p-1024', 'v5p', (8, 8, 8), 512, 128, (2, 2, 1), (True,) * 3, 'v5:8x8x8'),
    # v5e and v6e count chips; up to 8 chips sit on one host.
    ('v5litepod-8', 'v5e', (2, 4), 8, 1, (2, 4, 1), (False,) * 3, 'v5e:2x4'),
    ('v5litepod-16', 'v5e', (4, 4), 16, 4, (2, 2, 1), (False,) * 3, 'v5e:4x4'),
    ('v5e-128', 'v5e', (8, 16), 128, 32, (2, 2, 1), (False, True, False), 'v5e:8x16'),
    ('v5e-256', 'v5e', (16, 16), 256, 64, (2, 2, 1), (True, True, False), 'v5e:16x16'),
    ('v6e-1', 'v6e', (1, 1), 1, 1, (1, 1, 1), (False,) * 3, 'v6e:1x1'),
    ('v6e-64', 'v6e', (8, 8), 64, 16, (2, 2, 1), (False,) * 3, 'v6e:8x8'),
    # TPU7x counts TensorCores, and each is a JAX device.
    ('tpu7x-8', 'v7', (2, 2, 1), 4, 1, (2, 2, 1), (False,) * 3, 'tpu7x:2x2x1'),
    ('tpu7x-128', 'v7', (4, 4, 4), 64, 16, (2, 2, 1), (True,) * 3, 'tpu7x:4x4x4'),
])
def test_accelerator_types_become_topologies(name, chip, shape, chips, hosts, bounds, wrap,
                                             topology_name):
  spec = parse_topology(name)
  assert (spec.chip.name, spec.shape, spec.num_chips, spec.num_hosts) == (chip, shape, chips, hosts)
  assert spec.chips_per_host_bounds == bounds and spec.wrap == wrap
  assert spec.topology_name == topology_name and spec.num_slices == 1


def test_the_number_after_the_dash_counts_cores_or_chips_by_generation():
  assert parse_topology('v4-64').num_chips == 32        # TensorCores
  assert parse_topology('v5p-256').num_chips == 128     # TensorCores
  assert parse_topology('v5litepod-16').num_chips == 16  # chips
  assert parse_topology('v5e-16').num_chips == 16        # chips
  assert parse_topology('v6e-64').num_chips == 64        # chips
  v7 = parse_topology('tpu7x-128')
  assert (v7.num_chips, v7.num_devices) == (64, 128)     # TensorCores, each a JAX device
  assert parse_topology('v4-64').num_devices == 32       # megacore: one device per chip


def test_large_3d_slices_take_cloud_tpus_most_cubic_shape():
  # Cloud TPU's default shapes (v5p): whole 4x4x4 cubes, the longest side as short as it goes.
  expected = {'v5p-768': (4, 8, 12), 'v5p-1536': (8, 8, 12), 'v5p-2048': (8, 8, 16),
              'v5p-3072': (8, 12, 16), 'v5p-3456': (12, 12, 12), 'v5p-4096': (8, 16, 16),
              'v5p-12288': (16, 16, 24), 'v5p-896': (4, 4, 28)}
  assert {name: parse_topology(name).shape for name in expected} == expected


def test_multislice_and_chip_grid_names():
  two = parse_topology('2xv5p-256')
  assert (two.num_slices, two.shape, two.num_chips, two.num_hosts) == (2, (4, 4, 8), 256, 64)
  assert two.topology_name == 'v5:4x4x8'
  assert '2 slices of' in two.describe()
  grid = parse_topology('v5p:4x4x16')
  assert (grid.num_chips, grid.wrap, grid.topology_name) == (256, (True,) * 3, 'v5:4x4x16')
  assert parse_topology('v6e:4x8').num_chips == 32
  assert parse_topology('V5P-256').shape == (4, 4, 8)


@pytest.mark.parametrize('name,message', [
    ('v3-8', 'unknown TPU topology .*v5p-256'),
    ('v5p', 'unknown TPU topology'),
    ('v4-63', 'counts TensorCores, two per chip'),
    ('v5p-200', '100 chips; TPU v5p slices are v5p-8, v5p-16, v5p-32, v5p-64, or a multiple of 64'),
    ('v5e-12', 'TPU v5e slices have 1, 4, 8, 16, 32, 64, 128, 256 chips'),
    ('v5p:4x4', '3D grid, e.g. v5p:4x4x8'),
    ('0xv5p-8', 'at least 1'),
])
def test_bad_topology_names_say_what_is_valid(name, message):
  with pytest.raises(ConfigError, match=message):
    parse_topology(name)


def test_chip_table_numbers():
  assert CHIPS['v4'].hbm_bytes == 32 * GiB and CHIPS['v4'].peak_flops['bfloat16'] == 275e12
  assert CHIPS['v5e'].hbm_bytes == 16 * GiB and CHIPS['v5e'].peak_flops['bfloat16'] == 197e12
  assert CHIPS['v5p'].peak_flops['bfloat16'] == 459e12
  assert CHIPS['v6e'].hbm_bytes == 32 * GiB and CHIPS['v6e'].peak_flops['bfloat16'] == 918e12
  v7 = CHIPS['v7']
  assert v7.hbm_bytes == 192 * GiB and v7.peak_flops['bfloat16'] == 2307e12
  assert v7.hbm_bytes_per_device == 96 * GiB and v7.peak_flops_per_device() == 2307e12 / 2
  assert CHIPS['h100'].peak_flops['bfloat16'] == CHIPS['h200'].peak_flops['bfloat16'] == 989.4e12
  assert 79 * GiB < CHIPS['h100'].hbm_bytes < 80 * GiB < 140 * GiB < CHIPS['h200'].hbm_bytes
  assert CHIPS['v5e'].peak_flops_per_device('float32') is None  # not published for TPUs
  assert CHIPS['v5p'].peak_bf16_flops == 459e12  # what benchmarks/flops.py reads for MFU
  for chip in CHIPS.values():
    assert chip.hbm_bytes > 0 and chip.peak_flops['bfloat16'] > 1e13, chip.name


@pytest.mark.parametrize('kind,chip', [
    ('TPU v4', 'v4'), ('TPU v5 lite', 'v5e'), ('TPU v5e', 'v5e'), ('TPU v5', 'v5p'),
    ('TPU v5p', 'v5p'), ('TPU v6 lite', 'v6e'), ('TPU7x', 'v7'), ('tpu v7x', 'v7'),
    ('NVIDIA H100 80GB HBM3', 'h100'), ('NVIDIA H200', 'h200'),
])
def test_device_kinds_as_jax_reports_them(kind, chip):
  assert chip_for_device_kind(kind).name == chip


def test_unknown_device_kinds_have_no_chip():
  assert chip_for_device_kind('cpu') is None
  assert chip_for_device_kind('NVIDIA H100 PCIe') is None  # a slower part: no guessed peak
  assert chip_for_device_kind('TPU v3') is None
