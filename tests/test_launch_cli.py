"""`podium launch` end to end: the real recipe resolver, the real CLI, a fake gcloud."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fakes.harness import FakeCloud, ROOT
from launch import gke, tpu_vm
from launch.gcloud import TpuVm


@pytest.fixture
def fake(tmp_path, monkeypatch):
  cloud = FakeCloud(tmp_path, monkeypatch)
  yield cloud
  cloud.cleanup()


def podium(*args: str) -> subprocess.CompletedProcess:
  """`podium ...` in a fresh process that reports whether JAX got imported."""
  code = ('import sys; from launch import cli; rc = cli.main(sys.argv[1:]); '
          'print("JAX_IMPORTED" if "jax" in sys.modules else "NO_JAX"); sys.exit(rc)')
  return subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow   # resolving a real recipe imports TensorFlow in the child: 10-25 s
def test_launch_run_resolves_the_recipe_and_passes_set_values_literally(fake, tmp_path):
  fake.configure(workers=2, accelerator_type='v4-64')
  for worker in (0, 1):
    (fake.worker(worker) / 'podium').mkdir(parents=True)
  sets = [f'data.dir=gs://b/$(touch {tmp_path}/pwned1)',
          f'checkpoint.dir=gs://c; touch {tmp_path}/pwned2 #']
  done = podium('launch', 'tpu-vm', 'run', 'podium-cli', 'resnet50', '--recipe',
                'tpu_v4_64_bs4096', '--zone', 'us-central2-b', '--set', sets[0], '--set', sets[1],
                '--skip-preflight', '--logs', str(tmp_path / 'logs'))
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().endswith('NO_JAX')
  expected = ['-m', 'launch.cli', 'run', 'resnet50', '--recipe', 'tpu_v4_64_bs4096',
              '--set', sets[0], '--set', sets[1], '--output', '../podium_runs']
  assert [r['argv'] for r in fake.remote_calls('podium-run')] == [expected, expected]
  assert not list(tmp_path.glob('pwned*'))
  assert sorted(p.name for p in (tmp_path / 'logs' / 'podium-cli').glob('*/worker_*.log')) == [
      'worker_0.log', 'worker_1.log']


def test_launch_refuses_a_bad_benchmark_before_any_call(fake, tmp_path):
  done = podium('launch', 'tpu-vm', 'up-run-down', 'podium-cli', f'resnet50; touch {tmp_path}/x',
                '--recipe', 'r', '--zone', 'us-central2-b', '--logs', str(tmp_path / 'logs'))
  assert done.returncode == 2
  assert "podium launch: error: unknown benchmark 'resnet50; touch" in done.stderr
  assert fake.calls(None) == []
  assert not (tmp_path / 'x').exists()


def test_launch_status_create_and_delete_through_the_cli(fake, tmp_path):
  fake.configure(workers=4, accelerator_type='v5litepod-16')
  where = ['--zone', 'us-west4-a', '--project', 'p1', '--logs', str(tmp_path / 'logs')]
  done = podium('launch', 'tpu-vm', 'status', 'pod1', *where)
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[:3] == [
      'pod1: queued resource ACTIVE', 'pod1: v5litepod-16, 4 worker(s)',
      'pod1 is ACTIVE: its TPU VMs are billed until you run `podium launch tpu-vm delete pod1 '
      '--zone=us-west4-a --project=p1`']
  done = podium('launch', 'tpu-vm', 'create', 'pod1', '--accelerator-type', 'v5litepod-16',
                '--best-effort', '--dry-run', *where)
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[1] == (
      '$ gcloud alpha compute tpus queued-resources create pod1 --node-id=pod1 '
      '--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --zone=us-west4-a '
      '--project=p1 --best-effort')
  assert done.stdout.strip().endswith('NO_JAX')
  assert fake.calls() == [['compute', 'tpus', 'queued-resources', 'describe', 'pod1',
                           '--zone=us-west4-a', '--project=p1', '--format=json'],
                          ['compute', 'tpus', 'tpu-vm', 'describe', 'pod1', '--zone=us-west4-a',
                           '--project=p1', '--format=json']]
  done = podium('launch', 'tpu-vm', 'create', 'pod1', '--accelerator-type', '2xv5p-256', *where)
  assert done.returncode == 2
  assert 'is 2 slices: a TPU VM queued resource here holds one slice' in done.stderr


def _every_command_line(tmp_path):
  tpu = TpuVm('podium-v4-64', 'us-central2-b', 'my-proj')
  xpk = gke.Xpk('c1', 'w1', 'my-proj', 'us-east5-a')
  return [
      tpu.create('v4-64', 'tpu-ubuntu2204-base', 'spot'),
      tpu.create('v5p-128', 'v2-alpha-tpuv5', 'reserved'),
      tpu.create('v6e-64', 'v2-alpha-tpuv6e', 'best-effort'),
      tpu.describe_queued(), tpu.describe_node(),
      tpu.ssh(tpu_vm.stop_command(), 'all'), tpu.ssh('true', 3),
      tpu.scp_to(tmp_path / 'a.tar.gz', 'a.tar.gz', 'all'),
      tpu.scp_from(tpu_vm.REMOTE_RESULTS_ARCHIVE, tmp_path / 'b.tar.gz', 0),
      tpu.delete(),
      ['gcloud', 'storage', 'cp', '--recursive', 'gs://b/w1/*', str(tmp_path)],
  ], [xpk.create('true', 'v5p-256', 2, tmp_path, 'python:3.11'), xpk.wait(60), xpk.delete()]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('gcloud') is None and not os.path.exists('/usr/bin/gcloud'),
                    reason='the Google Cloud CLI is not installed')
def test_the_real_gcloud_parser_accepts_every_command_line(tmp_path):
  """The installed gcloud parses each command line; with no account it then stops before any
  network call ("You do not currently have an active account selected")."""
  gcloud = shutil.which('gcloud') or '/usr/bin/gcloud'
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / 'gcloud-config'),
             CLOUDSDK_CORE_DISABLE_PROMPTS='1')
  for argv in _every_command_line(tmp_path)[0]:
    done = subprocess.run([gcloud, *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=120)
    assert 'unrecognized arguments' not in done.stderr and 'argument ' not in done.stderr, (
        argv, done.stderr)
    assert 'active account' in done.stderr or 'credential' in done.stderr.lower(), (
        argv, done.stderr)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('xpk') is None, reason='xpk is not installed')
def test_the_real_xpk_accepts_every_command_line(tmp_path):
  """xpk's own --dry-run parses each command line and prints what it would do, offline."""
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / 'gcloud-config'))
  for argv in _every_command_line(tmp_path)[1]:
    done = subprocess.run([shutil.which('xpk'), *argv[1:], '--dry-run', '--skip-validation'],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert 'unrecognized arguments' not in output and 'error: argument' not in output, (
        argv, output[-2000:])
    assert '[XPK]' in output, (argv, output[-2000:])


def test_recipe_info_json_round_trip():
  fields = {'benchmark': 'bert', 'recipe': 'r', 'sets': ['a=1'], 'topology': 'v4-64',
            'global_batch_size': 8, 'eval_batch_size': 8, 'mesh': {}, 'dcn_mesh': {},
            'input_shards': 0, 'data': {'dir': 'gs://d', 'patterns': ['part-*'], 'what': 'x'},
            'data_note': '', 'org': 'podium', 'checkpoint_dir': '', 'checkpoint_every_steps': 0,
            'checkpoint_every_epochs': 0.0}
  from launch.recipe_info import RecipeInfo
  info = RecipeInfo.from_json(json.loads(json.dumps(fields)))
  assert info.sets == ('a=1',) and info.data.patterns == ('part-*',) and not info.checkpointing
