"""Two real processes on 127.0.0.1 (`jax.distributed`, gloo collectives) train the digits
recipe and match one process that reads the same two input shards on two devices; only
process 0 writes the MLPerf log, and that log passes the compliance checker; both processes
save checkpoints together (orbax, JAX's preemption service watching for SIGTERM)."""

import glob
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from input_pipelines import digits
from results import compliance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multiprocess_worker.py')
OVERRIDES = ['--set', 'data.input_shards=2', '--set', 'train.max_epochs=6', '--set', 'log_every_steps=5',
             '--set', 'checkpoint.every_steps=50']


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env(devices):
  e = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
           PODIUM_COMPILATION_CACHE='none')
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return e


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  work = tmp_path_factory.mktemp('multiprocess')
  data = str(work / 'data')
  digits.write_digits(data, image_size=16)
  multi, single = str(work / 'multi'), str(work / 'single')
  coordinator = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen([sys.executable, WORKER, multi, data, '2', str(i), coordinator, *OVERRIDES],
                            env=env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  one = subprocess.Popen([sys.executable, WORKER, single, data, '1', '0', '', *OVERRIDES],
                         env=env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
  outputs = [p.communicate(timeout=600)[0] for p in (*procs, one)]
  for p, output in zip((*procs, one), outputs):
    assert p.returncode == 0, output[-4000:]
  return multi, single


def test_two_processes_match_one_process(runs):
  multi, single = runs
  a, b = np.load(os.path.join(multi, 'params.npz')), np.load(os.path.join(single, 'params.npz'))
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
  # Same data, same math; only the order of the cross-device sums may differ.
  assert worst < 1e-5, worst
  assert open(os.path.join(multi, 'curve.txt')).read() == open(os.path.join(single, 'curve.txt')).read()


def test_only_process_zero_writes_a_compliant_log(runs):
  multi, _ = runs
  logs = glob.glob(os.path.join(multi, '**', 'result_*.txt'), recursive=True)
  assert len(logs) == 1 and logs[0].endswith(os.path.join('cpu-x2', 'resnet', 'result_0.txt')), logs
  result = compliance.check_log(logs[0], ruleset='4.0.0')
  assert result.passed, result.output


def test_two_processes_checkpoint_the_state_they_trained(runs):
  import jax
  from benchmarks import checkpointing
  multi, _ = runs
  directory = glob.glob(os.path.join(multi, 'runs', 'resnet50', '*', 'result_0', 'checkpoints'))[0]
  step = checkpointing.latest_step(directory)
  assert step is not None and step % 50 != 0  # the final state, saved after run_stop
  saved = checkpointing.read_state(directory)
  params = np.load(os.path.join(multi, 'params.npz'))
  flat = {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(saved['params'])}
  assert sorted(flat) == sorted(params.files)
  for key in params.files:
    np.testing.assert_array_equal(flat[key], params[key], err_msg=key)
