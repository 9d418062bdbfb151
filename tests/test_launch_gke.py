"""`podium launch gke` against a fake xpk (and gcloud) that records every call (tests/fakes)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import pytest

from fakes.harness import FakeCloud, make_repo
from launch import gke
from launch.gcloud import LaunchError, Runner
from launch.recipe_info import DataSpec, RecipeInfo

CLUSTER, WORKLOAD, RESULTS = 'podium-cluster', 'resnet-2xv5p', 'gs://my-bucket/podium'
TARGET = f'{RESULTS}/{WORKLOAD}'


@pytest.fixture
def fake(tmp_path, monkeypatch):
  cloud = FakeCloud(tmp_path, monkeypatch)
  yield cloud
  cloud.cleanup()


@pytest.fixture(scope='module')
def checkout(tmp_path_factory):
  path = tmp_path_factory.mktemp('gke') / 'checkout'
  return path, make_repo(path)


def session(tmp_path, repo, **kw):
  out, streamed = [], []
  return gke.Gke(gke.Xpk(CLUSTER, WORKLOAD, 'my-proj', 'us-east5-a'),
                 Runner(echo=out.append, **kw), out=out.append, stream=streamed.append,
                 repo=repo, logs_root=tmp_path / 'logs'), out, streamed


def multislice(**kw) -> RecipeInfo:
  fields = dict(benchmark='resnet50', recipe='tpu_v5p_bs65536', topology='2xv5p-256',
                global_batch_size=65536, eval_batch_size=65536,
                mesh={'data': -1, 'fsdp': 1, 'tensor': 1},
                dcn_mesh={'data': 2, 'fsdp': 1, 'tensor': 1},
                data=DataSpec('gs://my-bucket/imagenet', ('train-*-of-*',), 'ImageNet'))
  fields.update(kw)
  return RecipeInfo(**fields)


def pod_command(head, sets=()):
  run = ['python3', '-m', 'launch.cli', 'run', 'resnet50', '--recipe', 'tpu_v5p_bs65536']
  for assignment in sets:
    run += ['--set', assignment]
  return (f"python3 -m launch.gke download {TARGET} runs && python3 -m pip install -e '.[tpu]' "
          f"&& python3 -m launch.preflight gate --expect-commit {head} --hosts 64 --min-files 64 "
          f"--data-dir gs://my-bucket/imagenet --pattern 'train-*-of-*' || exit $?; "
          f"{shlex.join(run + ['--output', 'runs'])} & pid=$!; trap 'kill -TERM $pid' TERM; "
          f"wait $pid; rc=$?; while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done; "
          f"python3 -m launch.gke upload runs {TARGET}; exit $rc")


def test_multislice_workload_is_submitted_waited_for_and_fetched(fake, tmp_path, checkout):
  repo, head = checkout
  g, out, _ = session(tmp_path, repo)
  assert gke.launch(g, multislice(), results=RESULTS, max_restarts=5) == 0
  where = [f'--cluster={CLUSTER}', '--project=my-proj', '--zone=us-east5-a']
  create, wait = fake.calls('xpk')
  script_dir = next(a for a in create if a.startswith('--script-dir=')).split('=', 1)[1]
  assert create == ['workload', 'create', *where, f'--workload={WORKLOAD}',
                    '--tpu-type=v5p-256', '--num-slices=2', f'--script-dir={script_dir}',
                    '--base-docker-image=python:3.11', '--max-restarts=5', '--priority=medium',
                    f'--command={pod_command(head)}']
  assert wait == ['workload', 'list', *where, f'--wait-for-job-completion={WORKLOAD}',
                  '--timeout=604800']
  # the image gets exactly HEAD's files, and the commit they are
  shipped = fake.dir / 'xpk_script_dir'
  assert (shipped / '.podium_commit').read_text() == head + '\n'
  assert sorted(p.name for p in (shipped / 'launch').iterdir()) == sorted(
      ['__init__.py', 'gcloud.py', 'gke.py', 'preflight.py', 'recipe_info.py', 'source.py'])
  dest = tmp_path / 'logs' / WORKLOAD / 'results'
  assert fake.calls('gcloud') == [['storage', 'cp', '--recursive', f'{TARGET}/*', str(dest)]]
  assert f'{WORKLOAD} finished successfully; nothing of it is running; the TPU node pools of ' \
         f'cluster {CLUSTER} stay billed until you delete them (xpk cluster delete ' \
         f'--cluster={CLUSTER})' in out


def test_set_values_reach_podium_run_as_literal_arguments(fake, tmp_path, checkout):
  repo, head = checkout
  fake.configure(rules=[{'program': 'xpk', 'when': ['create'],
                         'responses': [{'exec': 'record'}]}])
  evil = (f'data.dir=$(touch {tmp_path}/pwned1)', f'checkpoint.dir=x; touch {tmp_path}/pwned2',
          f"submission.system=`touch {tmp_path}/pwned3`' \" && touch {tmp_path}/pwned4")
  g, _, _ = session(tmp_path, repo)
  gke.launch(g, multislice(sets=evil), results=RESULTS)
  calls = [(c['name'], c['argv']) for c in fake.remote_calls()]
  run = ['-m', 'launch.cli', 'run', 'resnet50', '--recipe', 'tpu_v5p_bs65536']
  for assignment in evil:
    run += ['--set', assignment]
  assert calls == [
      ('python3', ['-m', 'launch.gke', 'download', TARGET, 'runs']),
      ('python3', ['-m', 'pip', 'install', '-e', '.[tpu]']),
      ('python3', ['-m', 'launch.preflight', 'gate', '--expect-commit', head, '--hosts', '64',
                   '--min-files', '64', '--data-dir', 'gs://my-bucket/imagenet', '--pattern',
                   'train-*-of-*']),
      ('podium-run', run + ['--output', 'runs']),
      ('python3', ['-m', 'launch.gke', 'upload', 'runs', TARGET])]
  assert not list(tmp_path.glob('pwned*'))


def test_a_failed_workload_says_what_ended_and_what_is_billed(fake, tmp_path, checkout):
  repo, _ = checkout
  fake.configure(rules=[{'program': 'xpk', 'when': ['list'], 'responses': [
      {'rc': 125, 'stdout': '[XPK] Workload finished with status FAILED\n'}]}])
  g, out, streamed = session(tmp_path, repo)
  assert gke.launch(g, multislice(), results=RESULTS) == 1
  assert '[XPK] Workload finished with status FAILED\n' in streamed
  assert any(line.startswith(f'{WORKLOAD} FAILED (xpk exit 125): its pods have ended') and
             line.endswith(f'(xpk cluster delete --cluster={CLUSTER})') for line in out)
  assert fake.calls('gcloud')[0][:3] == ['storage', 'cp', '--recursive']


def test_interrupting_the_wait_deletes_the_workload(fake, tmp_path, checkout):
  repo, _ = checkout
  fake.configure(rules=[{'program': 'xpk', 'when': ['list'], 'responses': [
      {'stdout': '[XPK] Waiting for workload\n', 'sleep': 30}]}])
  g, out, _ = session(tmp_path, repo)

  def stream(line):
    if 'Waiting' in line:
      raise KeyboardInterrupt

  g.stream = stream
  with pytest.raises(KeyboardInterrupt):
    gke.launch(g, multislice(), results=RESULTS)
  assert fake.calls('xpk')[-1] == ['workload', 'delete', f'--cluster={CLUSTER}',
                                   '--project=my-proj', '--zone=us-east5-a',
                                   f'--workload={WORKLOAD}', '--force']
  assert f'interrupted: deleting {WORKLOAD} so it stops holding the slices' in out


def test_bad_requests_are_refused_before_anything_is_submitted(fake, tmp_path, checkout):
  repo, _ = checkout
  g, _, _ = session(tmp_path, repo)
  with pytest.raises(LaunchError, match=r"recipe: dcn_mesh \{'data': 1, 'fsdp': 1, 'tensor': 1\} "
                     r'spans 1 slice\(s\) but 2xv5p-256 has 2: --set dcn_mesh.data=2'):
    gke.launch(g, multislice(dcn_mesh={'data': 1, 'fsdp': 1, 'tensor': 1}), results=RESULTS)
  with pytest.raises(LaunchError, match='give a gs:// folder'):
    gke.launch(g, multislice(), results='/tmp/results')
  with pytest.raises(LaunchError, match='cluster name'):
    gke.Xpk('my cluster', WORKLOAD)
  assert fake.calls(None) == []


def test_dry_run_prints_the_xpk_commands(fake, tmp_path, checkout):
  repo, head = checkout
  g, out, _ = session(tmp_path, repo, dry_run=True)
  assert gke.launch(g, multislice(), results=RESULTS) == 0
  commands = [line[2:] for line in out if line.startswith('$ ')]
  assert commands[1].startswith(f'xpk workload create --cluster={CLUSTER} ')
  assert shlex.split(commands[1])[-1] == f'--command={pod_command(head)}'
  assert commands[2:] == [
      f'xpk workload list --cluster={CLUSTER} --project=my-proj --zone=us-east5-a '
      f'--wait-for-job-completion={WORKLOAD} --timeout=604800',
      f"gcloud storage cp --recursive '{TARGET}/*' {tmp_path}/logs/{WORKLOAD}/results"]
  assert fake.calls(None) == []


def test_sigterm_reaches_podium_run_and_the_results_are_still_uploaded(fake, tmp_path):
  """What xpk does on a preemption: SIGTERM to the shell running the command."""
  command = gke.pod_command(multislice(), 'c' * 40, 64, str(tmp_path / 'bucket'))
  pod = tmp_path / 'pod'
  pod.mkdir()
  shell = subprocess.Popen(['bash', '-c', command], cwd=pod,
                           env=fake.remote_env(0, PODIUM_FAKE_PY_RECORD='1',
                                               PODIUM_FAKE_RUN_SLEEP='60'))
  deadline = time.monotonic() + 30
  while not fake.remote_calls('podium-run') and time.monotonic() < deadline:
    time.sleep(0.05)
  time.sleep(0.3)   # podium run has set its SIGTERM handler
  shell.send_signal(signal.SIGTERM)
  assert shell.wait(timeout=30) == 143
  assert (fake.worker(0) / 'sigterm').read_text() == 'stopped by SIGTERM\n'
  assert fake.remote_calls()[-1]['argv'] == ['-m', 'launch.gke', 'upload', 'runs',
                                             str(tmp_path / 'bucket')]


def test_copy_tree_leaves_checkpoints_out(tmp_path, monkeypatch):
  src = tmp_path / 'runs'
  (src / 'podium/results/tpu-v5p-512/resnet').mkdir(parents=True)
  (src / 'podium/results/tpu-v5p-512/resnet/result_0.txt').write_text('log\n')
  (src / 'runs/resnet50/x/result_0/checkpoints/100').mkdir(parents=True)
  (src / 'runs/resnet50/x/result_0/checkpoints/100/state').write_text('big\n')
  (src / 'runs/resnet50/x/result_0/run_state.json').write_text('{}\n')
  assert gke.copy_tree(str(src), str(tmp_path / 'up')) == 2
  assert sorted(str(p.relative_to(tmp_path / 'up')) for p in (tmp_path / 'up').rglob('*')
                if p.is_file()) == ['podium/results/tpu-v5p-512/resnet/result_0.txt',
                                    'runs/resnet50/x/result_0/run_state.json']
  assert gke.copy_tree(str(tmp_path / 'absent'), str(tmp_path / 'down')) == 0
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('TPU_WORKER_ID', '3')
  assert gke.main(['upload', str(src), str(tmp_path / 'never')]) == 0
  assert not os.path.exists(tmp_path / 'never')
