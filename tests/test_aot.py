"""`podium compile`: XLA:TPU ahead-of-time compiles of real train steps for TPU slices.

The compiles need libtpu (the `tpu` extra); without it those tests are skipped, and the
message path is tested by making libtpu look absent. A tiny ResNet at 16x16 compiles in
20-50 s per slice on 2 cores; the real ResNet-50 check is marked slow.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from benchmarks import registry
from launch import aot, cli
from launch.chips import GiB, parse_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason=f"libtpu is not installed ({aot.INSTALL_COMMAND}; `make aot` does it)")

BATCH = 256
IMAGE = 16
TINY = ['model.name=resnet_tiny', f'data.image_size={IMAGE}', f'data.eval_resize={IMAGE}',
        f'train.global_batch_size={BATCH}', f'train.eval_batch_size={BATCH}']
RECIPE = ('resnet50', 'tpu_v4_64_bs4096')


def _conv_flops(size, k, stride, cin, cout):
  """2 * multiply-adds of a 'same'-padded conv, counting only taps inside the image (as XLA's
  cost analysis does), and the output size."""
  pad = k // 2
  out = (size + 2 * pad - k) // stride + 1
  taps = sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad + t < size)
  return 2 * taps * taps * cin * cout, out


def resnet_tiny_train_flops(image, classes, batch):
  """Convolutions and classifier of resnet_tiny (basic blocks, width 16, 3x3 stem), times 3
  for a training step (forward, input gradient, weight gradient; the stem needs no input
  gradient). BatchNorm, the loss and LARS add a few percent."""
  stem, size = _conv_flops(image, 3, 1, 3, 16)
  body, cin = 0, 16
  for stage in range(4):
    width, stride = 16 * 2**stage, (2 if stage else 1)
    conv1, out = _conv_flops(size, 3, stride, cin, width)
    conv2, _ = _conv_flops(out, 3, 1, width, width)
    shortcut = _conv_flops(size, 1, stride, cin, width)[0] if (stride != 1 or cin != width) else 0
    body += conv1 + conv2 + shortcut
    size, cin = out, width
  return batch * (3 * (body + 2 * cin * classes) + 2 * stem)


def _compile(topology, *extra):
  config, spec = aot.resolve(*RECIPE, [*TINY, *extra], topology)
  devices = aot.topology_devices(spec)
  report = aot.compile_recipe(config, spec, devices=devices,
                              usable_hbm=aot.usable_hbm_bytes(devices[0]))
  print('\n'.join(report.lines()))
  return report


# -- without libtpu ----------------------------------------------------------------------------

def test_without_libtpu_the_command_says_how_to_install_it(monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(aot.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real_find_spec(name, *a))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  problem = aot.libtpu_problem()
  assert 'not installed' in problem and "pip install -e '.[tpu]'" in problem
  code = cli.main(['compile', *RECIPE[:1], '--recipe', RECIPE[1]])
  out, err = capsys.readouterr()
  assert code == 2
  assert err.strip() == f'podium: {problem}' and '\n' not in err.strip()
  assert 'Traceback' not in out + err


def test_an_unusable_libtpu_is_one_line_and_exit_code_2(monkeypatch, capsys):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setattr(aot, 'libtpu_problem', lambda: 'libtpu is installed but cannot build a '
                      "TPU topology here: boom (pip install -e '.[tpu]')")
  assert cli.main(['compile', '--all']) == 2
  out, err = capsys.readouterr()
  assert err == "podium: libtpu is installed but cannot build a TPU topology here: boom (pip install -e '.[tpu]')\n"


def test_bad_requests_are_named_before_anything_compiles(monkeypatch, capsys):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert cli.main(['compile', 'resnet50', '--recipe', 'digits_cpu']) == 2
  assert 'names no TPU topology; pass one, e.g. --topology v5p-256' in capsys.readouterr().err
  assert cli.main(['compile', 'resnet50', '--recipe', RECIPE[1], '--topology', 'v3-8']) == 2
  assert 'unknown TPU topology' in capsys.readouterr().err
  assert cli.main(['compile', 'resnet50']) == 2
  assert '--recipe NAME (or --all)' in capsys.readouterr().err


def test_all_means_every_recipe_with_a_topology():
  pods = aot.pod_recipes()
  assert ('resnet50', 'tpu_v4_64_bs4096') in pods and ('resnet50', 'digits_cpu') not in pods
  assert all(registry.resolve(b, r).topology for b, r in pods)


def test_out_of_memory_messages_and_verdicts():
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
             'temporaries (40.00G) exceeds available HBM (15.75G).')
  assert aot.parse_out_of_memory(message) == (40 * GiB, int(15.75 * GiB))
  assert aot.parse_out_of_memory('Used 18.00G of 15.75G hbm. Exceeded hbm capacity by 2.25G.') == (
      18 * GiB, int(15.75 * GiB))
  assert aot.parse_out_of_memory('INTERNAL: something else') is None

  spec = parse_topology('v5e-16')
  too_big = aot.CompileReport('resnet50', 'r', spec, needed_hbm=40 * GiB, usable_hbm=int(15.75 * GiB))
  assert not too_big.fits
  assert too_big.verdict() == ('does NOT fit: needs 40 GiB, chip has 16 GiB (15.75 GiB usable), '
                               'over by 24.25 GiB')
  memory = aot.MemoryUse(argument=2 * GiB, output=GiB, temp=5 * GiB, alias=GiB, code=10 << 20)
  fits = aot.CompileReport('resnet50', 'r', spec, memory=memory, usable_hbm=int(15.75 * GiB))
  assert memory.total == 7 * GiB and fits.fits
  assert fits.verdict() == 'fits (uses 7 GiB of 16 GiB per chip, 44%; XLA may use 15.75 GiB)'
  assert aot.exit_code([fits]) == 0 and aot.exit_code([fits, too_big]) == 1
  failed = aot.CompileReport('resnet50', 'r', spec, error='ConfigError: bad mesh')
  assert not failed.fits and failed.verdict() == 'did not compile: ConfigError: bad mesh'
  v7 = aot.CompileReport('resnet50', 'r', parse_topology('tpu7x-8'), memory=memory)
  assert 'of 96 GiB per device' in v7.verdict()


def test_collectives_are_counted_once_per_channel():
  hlo = '\n'.join([
      '%all-reduce.1 = f32[8] all-reduce(%a), channel_id=1, replica_groups={{0,1}}',
      '%all-reduce.2 = f32[8] all-reduce(%b), channel_id=2, replica_groups={{0,1}}',
      '%all-gather.3 = bf16[64] all-gather(%p), channel_id=7, dimensions={0}',
      '%all-gather.4 = bf16[64] all-gather(%q), channel_id=7, dimensions={0}',  # same collective, split
      '%cp = (bf16[2], bf16[2]) collective-permute-start(%x), channel_id=9',
      '%cpd = bf16[2] collective-permute-done(%cp)',
      '%rs = f32[4] reduce-scatter(%g), dimensions={0}',
  ])
  assert aot.count_collectives(hlo) == {'all-reduce': 2, 'all-gather': 1, 'reduce-scatter': 1,
                                        'collective-permute': 1}


# -- with libtpu -------------------------------------------------------------------------------

@needs_libtpu
def test_libtpu_is_usable():
  assert aot.libtpu_problem() is None


@needs_libtpu
# Two generations and the two-slice case in `make test`; the rest in `make test-all`.
@pytest.mark.parametrize('topology', [
    'v4-16', pytest.param('v5litepod-16', marks=pytest.mark.slow), 'v5p-8',
    pytest.param('v6e-8', marks=pytest.mark.slow), '2xv5p-8'])
def test_tiny_resnet_train_step_compiles_for_each_generation(topology):
  report = _compile(topology)
  spec, chip = report.topology, report.topology.chip
  assert report.error is None and report.fits, report.verdict()
  assert report.mesh_shape == {'data': spec.num_devices, 'fsdp': 1, 'tensor': 1}
  assert report.dcn_axes == ({'data': 2} if spec.num_slices == 2 else {})
  memory = report.memory
  assert memory.argument > 0 and memory.output > 0 and memory.code > 0
  assert 0 < memory.total < chip.hbm_bytes_per_device
  assert 0.9 * chip.hbm_bytes_per_device < report.usable_hbm <= chip.hbm_bytes_per_device
  expected = resnet_tiny_train_flops(IMAGE, 1000, BATCH)
  assert 1.0 < report.model_flops / expected < 1.1, (report.model_flops, expected)
  assert 0.95 < report.flops_total / report.model_flops < 1.1  # data parallel: no loops
  assert report.collectives.get('all-reduce', 0) > 0  # gradients (and BatchNorm statistics)


@needs_libtpu
def test_fsdp_gathers_parameters():
  report = _compile('v5litepod-8', 'sharding_rules=fsdp', 'mesh.data=1', 'mesh.fsdp=-1')
  assert report.fits and report.mesh_shape == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert report.collectives.get('all-gather', 0) > 0
  # XLA:TPU runs these convolutions as loops over a ring of collective-permutes; its count for
  # the compiled program sees each loop body once, the model count does not depend on it.
  expected = resnet_tiny_train_flops(IMAGE, 1000, BATCH)
  assert 1.0 < report.model_flops / expected < 1.1, (report.model_flops, expected)


@needs_libtpu
def test_multislice_mesh_splits_the_data_axis_across_slices():
  spec = parse_topology('2xv5p-16')
  devices = aot.topology_devices(spec)
  assert len(devices) == spec.num_devices == 16
  # `mesh` is per slice; a recipe without a dcn_mesh gets data split over the slices.
  mesh, dcn = aot.make_mesh({'data': -1, 'fsdp': 2}, devices, spec.num_slices)
  assert dcn == {'data': 2} and dict(mesh.shape) == {'data': 8, 'fsdp': 2, 'tensor': 1}
  slices = [[d.slice_index for d in row.flat] for row in mesh.devices]
  assert slices == [[0, 0]] * 4 + [[1, 1]] * 4  # fsdp pairs stay inside a slice
  mesh, dcn = aot.make_mesh({'data': 1, 'fsdp': -1}, devices, 2, {'data': 2, 'fsdp': 1})
  assert dcn == {'data': 2} and dict(mesh.shape) == {'data': 2, 'fsdp': 8, 'tensor': 1}
  with pytest.raises(aot.ConfigError, match='over 4 slices but the topology has 2'):
    aot.make_mesh({'data': -1}, devices, 2, {'data': 4})
  with pytest.raises(aot.ConfigError, match='over 2 slices but the topology has 1'):
    aot.make_mesh({'data': -1}, devices[:8], 1, {'data': 2})


def _podium(*args, timeout):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'launch.cli', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@needs_libtpu
def test_the_command_compiles_for_tpu7x():
  """End to end, on Ironwood: two JAX devices per chip, 96 GiB each."""
  sets = [a for s in TINY for a in ('--set', s)]
  result = _podium('compile', *RECIPE[:1], '--recipe', RECIPE[1], '--topology', 'tpu7x-8', *sets,
                   timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  out = result.stdout
  assert 'TPU7x (Ironwood) 2x2x1: 4 chips, 8 devices, 1 host' in out
  assert 'fits (uses' in out and 'of 96 GiB per device' in out
  assert 'collectives   all-reduce' in out and 'FLOPs/step    model ' in out
  assert 'Traceback' not in result.stderr


@needs_libtpu
def test_a_recipe_that_does_not_fit_says_by_how_much():
  # resnet_tiny keeps full 224x224 activations (no stem pooling): 2,048 images a chip overflow.
  # XLA gives up in seconds, before most of the compile.
  report = _compile('v5litepod-4', 'data.image_size=224', 'data.eval_resize=256',
                    'train.global_batch_size=8192', 'train.eval_batch_size=8192')
  assert report.error is None and not report.fits and report.memory is None
  assert report.needed_hbm > report.usable_hbm > 15 * GiB
  assert report.verdict().startswith('does NOT fit: needs ')
  assert not any(line.startswith('  collectives') for line in report.lines())
  assert aot.exit_code([report]) == 1


@needs_libtpu
@pytest.mark.slow
def test_resnet50_fits_a_v4_64():
  """The MLPerf batch-4,096 recipe on its slice: ~5 minutes of XLA:TPU compile on 2 cores."""
  result = _podium('compile', 'resnet50', '--recipe', 'tpu_v4_64_bs4096', timeout=1500)
  assert result.returncode == 0, result.stdout + result.stderr
  out = result.stdout
  assert 'TPU v4 2x4x4: 32 chips, 8 hosts' in out and 'global batch 4,096' in out
  assert 'fits (uses' in out and 'of 32 GiB per chip' in out
  assert 'collectives   all-reduce' in out
