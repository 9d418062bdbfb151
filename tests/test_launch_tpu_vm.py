"""`podium launch tpu-vm` against a fake gcloud that records every call (tests/fakes).

The fake answers describe/create/delete from canned rules and runs the ssh command lines
with bash in one sandbox folder per worker, whose python3 runs the real preflight probe and a
stand-in for `podium run`; everything on this side (argv building, git archive, tar, the
monitor, the preflight analysis) is real.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest

from fakes.harness import FakeClock, FakeCloud, make_repo, ssh_command
from launch import preflight, tpu_vm
from launch.gcloud import LaunchError, Runner, TpuVm
from launch.recipe_info import DataSpec, RecipeInfo

NAME, ZONE, PROJECT = 'podium-test', 'us-central2-b', 'my-proj'
WHERE = [f'--zone={ZONE}', f'--project={PROJECT}']


@pytest.fixture
def fake(tmp_path, monkeypatch):
  cloud = FakeCloud(tmp_path, monkeypatch)
  yield cloud
  cloud.cleanup()


@pytest.fixture
def repo(tmp_path):
  path = tmp_path / 'checkout'
  return path, make_repo(path)


@pytest.fixture(scope='module')
def shipped(tmp_path_factory):
  """A checkout and four fake workers set up from it once, by a real `setup`; tests that
  need installed workers copy them (setup itself is tested on its own below)."""
  base = tmp_path_factory.mktemp('shipped')
  path = base / 'checkout'
  head = make_repo(path)
  with pytest.MonkeyPatch.context() as monkeypatch:
    cloud = FakeCloud(base, monkeypatch)
    cloud.configure(workers=4, accelerator_type='v4-32')
    pod, _, _, _ = make_pod(base, path)
    tpu_vm.setup(pod)
  return path, head, cloud.dir / 'workers'


def make_pod(tmp_path, repo_path, **kw):
  clock = FakeClock()
  out, streamed = [], []
  pod = tpu_vm.Pod(TpuVm(NAME, ZONE, PROJECT), Runner(echo=out.append), out=out.append,
                   stream=streamed.append, clock=clock.now, sleep=clock.sleep, poll_s=30,
                   monitor_s=1, grace_s=kw.pop('grace_s', 1000), logs_root=tmp_path / 'logs',
                   repo=repo_path, **kw)
  return pod, out, streamed, clock


def recipe(**kw) -> RecipeInfo:
  fields = dict(benchmark='resnet50', recipe='tpu_v4_32', topology='v4-32',
                global_batch_size=1024, eval_batch_size=1024,
                mesh={'data': -1, 'fsdp': 1, 'tensor': 1},
                dcn_mesh={'data': 1, 'fsdp': 1, 'tensor': 1})
  fields.update(kw)
  return RecipeInfo(**fields)


def queued(state: str, **extra) -> dict:
  return {'json': {'name': f'projects/{PROJECT}/locations/{ZONE}/queuedResources/{NAME}',
                   'state': dict(state=state, **extra)}}


def describe_rule(*states) -> dict:
  return {'when': ['queued-resources', 'describe'], 'responses': [queued(s) for s in states]}


def kinds(calls):
  """A short name per gcloud call: 'create', 'describe', 'ssh:0', 'scp:all', ...; calls to
  single workers in a row (made in parallel, logged in any order) are sorted."""
  names = []
  for argv in calls:
    verb = next(a for a in argv if a in ('create', 'describe', 'delete', 'ssh', 'scp'))
    if verb in ('ssh', 'scp'):
      worker = next(a for a in argv if a.startswith('--worker=')).split('=')[1]
      names.append(f'{verb}:{worker}')
    elif verb == 'describe':
      names.append('describe-node' if 'tpu-vm' in argv else 'describe')
    else:
      names.append(verb)
  out, i = [], 0
  while i < len(names):
    j = i
    while j < len(names) and re.fullmatch(r'ssh:\d+', names[j]):
      j += 1
    if j > i:
      out += sorted(names[i:j])
      i = j
    else:
      out.append(names[i])
      i += 1
  return out


def install(fake, shipped, workers):
  """Fake workers as `setup` leaves them (copies of the module's set-up workers)."""
  fake.configure(workers=workers, accelerator_type='v4-32')
  for index in range(workers):
    shutil.copytree(shipped[2] / str(index), fake.worker(index))
  (fake.dir / 'remote_calls.jsonl').unlink(missing_ok=True)


# -- create / wait / delete ------------------------------------------------------------------------

def test_create_waits_until_active_and_prints_each_state(fake, tmp_path, repo):
  fake.configure(rules=[describe_rule('WAITING_FOR_RESOURCES', 'WAITING_FOR_RESOURCES',
                                      'PROVISIONING', 'ACTIVE')])
  pod, out, _, clock = make_pod(tmp_path, repo[0])
  tpu_vm.create(pod, 'v4-32', capacity='spot')
  assert fake.calls() == [
      ['compute', 'tpus', 'queued-resources', 'create', NAME, f'--node-id={NAME}',
       '--accelerator-type=v4-32', '--runtime-version=tpu-ubuntu2204-base', *WHERE, '--spot'],
  ] + [['compute', 'tpus', 'queued-resources', 'describe', NAME, *WHERE, '--format=json']] * 4
  assert clock.t == 1000.0 + 3 * 30
  progress = [line for line in out if line.startswith('[')]
  assert progress == [
      '[00:00:00] podium-test: WAITING_FOR_RESOURCES (queued, waiting for capacity; not '
      'billed until ACTIVE)',
      '[00:01:00] podium-test: PROVISIONING (capacity found, creating the TPU VMs)',
      '[00:01:30] podium-test: ACTIVE (the TPU VMs are up; billed from now on)']


def test_capacity_flags_follow_gcloud():
  tpu = TpuVm(NAME, ZONE)
  assert tpu.create('v5p-128', 'v2-alpha-tpuv5', 'reserved')[-1] == '--reserved'
  best = tpu.create('v6e-64', 'v2-alpha-tpuv6e', 'best-effort')
  assert best[:2] == ['gcloud', 'alpha'] and best[-1] == '--best-effort'
  assert not any(a.startswith('--') and a in ('--spot', '--reserved')
                 for a in tpu.create('v4-8', 'tpu-ubuntu2204-base'))
  with pytest.raises(LaunchError, match='TPU name'):
    TpuVm('bad name; rm -rf ~', ZONE)


def test_quota_error_says_why_and_that_nothing_is_left(fake, tmp_path, repo):
  fake.configure(rules=[
      {'when': ['queued-resources', 'create'], 'responses': [{
          'rc': 1, 'stderr': "ERROR: (gcloud.compute.tpus.queued-resources.create) "
                             "RESOURCE_EXHAUSTED: Quota 'TPUV4PodPerProjectPerZoneForTPUAPI' "
                             "exhausted. Limit 32 in zone us-central2-b\n"}]},
      {'when': ['queued-resources', 'describe'], 'responses': [{
          'rc': 1, 'stderr': 'ERROR: (gcloud.compute.tpus.queued-resources.describe) '
                             'NOT_FOUND: Resource not found\n'}]}])
  pod, _, _, _ = make_pod(tmp_path, repo[0])
  with pytest.raises(tpu_vm.CreateRefused) as error:
    tpu_vm.create(pod, 'v4-64')
  message = str(error.value)
  assert "RESOURCE_EXHAUSTED: Quota 'TPUV4PodPerProjectPerZoneForTPUAPI' exhausted" in message
  assert 'quota in us-central2-b does not cover v4-64' in message
  assert message.endswith('podium-test: nothing is left, nothing is billed')
  assert kinds(fake.calls()) == ['create', 'describe']


def test_failed_queued_resource_reports_the_reason(fake, tmp_path, repo):
  fake.configure(rules=[{'when': ['queued-resources', 'describe'], 'responses': [
      queued('WAITING_FOR_RESOURCES'),
      queued('FAILED', failedData={'error': {'code': 8, 'message': 'Insufficient capacity '
                                             'before the valid-until time'}})]}])
  pod, _, _, _ = make_pod(tmp_path, repo[0])
  with pytest.raises(tpu_vm.QueueFailed, match=r'podium-test FAILED: Insufficient capacity '
                     r'before the valid-until time\. podium-test is FAILED: it holds no TPU VMs; '
                     r'remove the request with `podium launch tpu-vm delete podium-test'):
    tpu_vm.create(pod, 'v4-8')


def test_wait_times_out_and_says_what_is_left(fake, tmp_path, repo):
  fake.configure(rules=[describe_rule('WAITING_FOR_RESOURCES')])
  pod, _, _, clock = make_pod(tmp_path, repo[0])
  with pytest.raises(LaunchError, match='still WAITING_FOR_RESOURCES after 00:01:30. '
                     'podium-test is WAITING_FOR_RESOURCES: queued, not billed'):
    tpu_vm.create(pod, 'v4-8', timeout_s=90)
  assert clock.t == 1090.0


def test_delete_checks_that_nothing_is_left(fake, tmp_path, repo):
  fake.configure(rules=[{'when': ['queued-resources', 'describe'], 'responses': [
      {'rc': 1, 'stderr': 'ERROR: (gcloud...) NOT_FOUND: Resource not found\n'}]}])
  pod, out, _, _ = make_pod(tmp_path, repo[0])
  tpu_vm.delete(pod)
  assert fake.calls()[0] == ['compute', 'tpus', 'queued-resources', 'delete', NAME, *WHERE,
                             '--force', '--quiet']
  assert out[-1] == 'deleted podium-test. podium-test: nothing is left, nothing is billed'


# -- setup -----------------------------------------------------------------------------------------

def test_setup_ships_head_to_every_worker_and_checks_it(fake, tmp_path, repo):
  path, head = repo
  fake.configure(workers=2, accelerator_type='v4-16')
  pod, out, _, _ = make_pod(tmp_path, path)
  assert tpu_vm.setup(pod) == head
  calls = fake.calls()
  assert kinds(calls) == ['describe-node', 'scp:all', 'ssh:all', 'ssh:0', 'ssh:1']
  archive = f'podium-{head[:12]}.tar.gz'
  assert calls[1][-5:] == [f'{NAME}:{archive}', *WHERE, '--worker=all', '--quiet']
  assert ssh_command(calls[2]) == (
      f"rm -rf podium.new && mkdir -p podium.new && tar -xzf {archive} -C podium.new && "
      f"rm -f {archive} && printf '%s\\n' {head} > podium.new/.podium_commit && rm -rf podium "
      f"&& mv podium.new podium && cd podium && python3 -m pip install -e '.[tpu]'")
  for worker in (0, 1):
    code = fake.worker(worker) / 'podium'
    assert (code / '.podium_commit').read_text() == head + '\n'
    assert (code / 'launch' / 'preflight.py').is_file()
    assert not (fake.worker(worker) / archive).exists()
  pips = fake.remote_calls('pip')
  assert [(c['worker'], c['argv']) for c in pips] == [
      ('0', ['-m', 'pip', 'install', '-e', '.[tpu]']), ('1', ['-m', 'pip', 'install', '-e', '.[tpu]'])]
  assert pips[0]['cwd'].endswith('workers/0/podium')
  # the real probe ran on both workers and found the shipped commit
  assert out[-1].startswith(f'podium-test: 2 workers: podium {head[:12]}, jax ')


def test_setup_refuses_uncommitted_changes_before_any_call(fake, tmp_path, repo):
  path, head = repo
  (path / 'README.md').write_text('changed\n')
  pod, _, _, _ = make_pod(tmp_path, path)
  with pytest.raises(LaunchError, match=rf'uncommitted changes \(README.md\); the workers would '
                     rf'run commit {head[:12]} without them'):
    tpu_vm.setup(pod)
  assert fake.calls() == []


# -- preflight ---------------------------------------------------------------------------------

def probe_line(commit, jax='0.6.2', libtpu='0.0.17', holders=(), data=None):
  report = {'host': 'w', 'python': '3.10.12', 'commit': commit,
            'versions': {'jax': jax, 'jaxlib': jax, 'libtpu': libtpu},
            'tpu_holders': list(holders)}
  if data is not None:
    report['data'] = data
  return preflight.MARKER + json.dumps(report) + '\n'


def test_preflight_failures_stop_the_run_before_it_starts(fake, tmp_path, shipped):
  path, head, _ = shipped
  pod, out, _, _ = make_pod(tmp_path, path)
  install(fake, shipped, workers=4)
  data = {'dir': 'gs://bucket/imagenet', 'pattern': 'train-*-of-*', 'files': 2, 'error': None}
  holder = {'pid': 4242, 'devices': ['/dev/accel0'],
            'command': 'python3 -m launch.cli run resnet50 --recipe tpu_v4_32'}
  unreachable = {'when': ['ssh'], 'worker': 0, 'command_has': 'launch.preflight probe',
                 'responses': [{'rc': 255, 'stderr': 'ssh: connect to host 10.0.0.2 port 22: '
                                                     'Connection timed out\n'}]}
  fake.configure(workers=4, accelerator_type='v4-32', rules=[unreachable] + [
      {'when': ['ssh'], 'worker': w, 'command_has': 'launch.preflight probe',
       'responses': [{'stdout': probe_line(
           head if w != 2 else 'f' * 40, jax='0.6.0' if w == 3 else '0.6.2',
           holders=[holder] if w == 1 else [], data=data)}]}
      for w in range(1, 4)])
  info = recipe(data=DataSpec('gs://bucket/imagenet', ('train-*-of-*',), 'ImageNet files'),
                global_batch_size=1000)
  with pytest.raises(LaunchError, match='preflight failed on podium-test: nothing was started. '
                     'podium-test is ACTIVE: its TPU VMs are billed until you run'):
    tpu_vm.run(pod, info)
  lines = [line for line in out if line.startswith('preflight: ')]
  setup = f'podium launch tpu-vm setup {NAME} --zone={ZONE} --project={PROJECT}'
  assert lines == [
      'preflight: recipe: train.global_batch_size=1000 is not divisible by the 16 chips of '
      'v4-32 (16 devices) that split the batch: use a multiple of 16 (--set '
      'train.global_batch_size=1008)',
      'preflight: worker 0: cannot be reached (ssh exit 255: ssh: connect to host 10.0.0.2 port '
      '22: Connection timed out): check that the TPU VM is READY (podium launch tpu-vm status) '
      'and try again',
      'preflight: worker 1: process 4242 holds the TPU (/dev/accel0: `python3 -m launch.cli run '
      'resnet50 --recipe tpu_v4_32`); with it the run hangs at "TPU backend initialization is '
      'taking more than 60 seconds": run `podium launch tpu-vm stop podium-test '
      '--zone=us-central2-b --project=my-proj` (it stops podium runs on every worker) or '
      '`kill 4242` on that worker',
      "preflight: workers 1-3: finds 2 training files ('train-*-of-*') in gs://bucket/imagenet "
      'but the run needs at least 4, one per host (data.input_shards): write the data in more '
      'files',
      f'preflight: worker 2: runs podium ffffffffffff but the local checkout is at {head[:12]}: '
      f'run `{setup}` so every worker runs the same code',
      'preflight: worker 3: has jax 0.6.0, jaxlib 0.6.0, libtpu 0.0.17 but the other workers '
      f'have jax 0.6.2, jaxlib 0.6.2, libtpu 0.0.17: run `{setup}` so every worker installs the '
      'same versions']
  assert not fake.remote_calls('podium-run')
  assert not any('launch.cli run' in (ssh_command(c) or '') for c in fake.calls())


def test_probe_reads_real_data_on_the_workers(fake, tmp_path, shipped):
  path, head, _ = shipped
  pod, out, _, _ = make_pod(tmp_path, path)
  install(fake, shipped, workers=2)
  data_dir = tmp_path / 'imagenet'
  data_dir.mkdir()
  for i in range(3):
    (data_dir / f'train-0000{i}-of-00003').write_bytes(b'records')
  (data_dir / 'validation-00000-of-00001').write_bytes(b'records')
  info = recipe(topology='v4-16', global_batch_size=64, eval_batch_size=64,
                data=DataSpec(str(data_dir), ('train-*-of-*', '*-train.tfrecord-*-of-*'), 'x'))
  assert tpu_vm.run_preflight(pod, info, 2, 'v4-16') == []
  assert out[-1].startswith(f'preflight passed on 2 worker(s): 2 workers: podium {head[:12]}')
  info = recipe(topology='v4-16', global_batch_size=64, eval_batch_size=64, input_shards=4,
                data=DataSpec(str(tmp_path / 'missing'), ('train-*-of-*',), 'x'))
  problems = tpu_vm.run_preflight(pod, info, 2, 'v4-16')
  assert problems == [
      f"workers 0-1: cannot read {tmp_path / 'missing'} (FileNotFoundError: [Errno 2] No such "
      f"file or directory: '{tmp_path / 'missing'}'): check the path and that the VM's service "
      f"account may read it (gcloud storage ls {tmp_path / 'missing'})"]


# -- run ---------------------------------------------------------------------------------------------

def test_run_starts_every_worker_streams_worker0_and_logs_each(fake, tmp_path, shipped):
  path, head, _ = shipped
  pod, out, streamed, _ = make_pod(tmp_path, path)
  install(fake, shipped, workers=2)
  outcome = tpu_vm.run(pod, recipe(topology='v4-16'), skip_preflight=True)
  assert outcome.ok and outcome.exit_code == 0
  runs = fake.remote_calls('podium-run')
  assert sorted(r['worker'] for r in runs) == ['0', '1']
  assert runs[0]['argv'] == ['-m', 'launch.cli', 'run', 'resnet50', '--recipe', 'tpu_v4_32',
                             '--output', '../podium_runs']
  assert runs[0]['cwd'].endswith('/podium')
  assert ''.join(streamed) == 'podium: fake run on worker 0\npodium: worker 0 done\n'
  for worker in (0, 1):
    log = (outcome.log_dir / f'worker_{worker}.log').read_text()
    assert f'podium: worker {worker} done' in log
  ssh = [c for c in fake.calls() if 'ssh' in c]
  assert sorted(c[c.index('--quiet') - 1] for c in ssh) == ['--worker=0', '--worker=1']
  assert ssh_command(ssh[0]) == ('cd podium && exec python3 -m launch.cli run resnet50 --recipe '
                                 'tpu_v4_32 --output ../podium_runs')


@pytest.mark.parametrize('field', ['recipe', 'set'])
def test_shell_metacharacters_cannot_inject_a_command(fake, tmp_path, shipped, field):
  path, _, _ = shipped
  pod, _, _, _ = make_pod(tmp_path, path)
  install(fake, shipped, workers=2)
  evil = [f'$(touch {tmp_path}/pwned1)', f'x; touch {tmp_path}/pwned2',
          f"it's `touch {tmp_path}/pwned3` && touch {tmp_path}/pwned4 | cat \" \\",
          f'data.dir=gs://b/i\n touch {tmp_path}/pwned5']
  info = (recipe(recipe=evil[1]) if field == 'recipe' else
          recipe(sets=tuple(f'data.dir={v}' for v in evil)))
  outcome = tpu_vm.run(pod, info, skip_preflight=True)
  assert outcome.ok
  expected = ['-m', 'launch.cli', 'run', 'resnet50', '--recipe', info.recipe]
  for assignment in info.sets:
    expected += ['--set', assignment]
  expected += ['--output', '../podium_runs']
  runs = fake.remote_calls('podium-run')
  assert [r['argv'] for r in runs] == [expected, expected]
  assert not list(tmp_path.glob('pwned*'))
  # what a worker's shell sees splits back into exactly podium's argv
  command = ssh_command([c for c in fake.calls() if 'ssh' in c][0])
  assert shlex.split(command) == ['cd', 'podium', '&&', 'exec', 'python3', *expected]


def test_a_failed_worker_stops_all_and_says_what_is_billed(fake, tmp_path, shipped):
  path, _, _ = shipped
  pod, out, _, _ = make_pod(tmp_path, path, grace_s=10)
  install(fake, shipped, workers=3)
  fake.configure(workers=3, accelerator_type='v4-32', rules=[
      {'when': ['ssh'], 'worker': 1, 'command_has': 'launch.cli run', 'responses': [
          {'rc': 255, 'stderr': 'ssh: connect to host 10.0.0.3 port 22: Connection refused\n'}]},
      {'when': ['ssh'], 'command_has': 'launch.cli run', 'responses': [
          {'exec': True, 'env': {'PODIUM_FAKE_RUN_SLEEP': '120'}}]}])
  outcome = tpu_vm.run(pod, recipe(), skip_preflight=True)
  assert not outcome.ok and outcome.exit_code == 255
  assert sorted(outcome.stopped_workers) == [0, 2]
  stop = [c for c in fake.calls() if ssh_command(c) == tpu_vm.stop_command()]
  assert len(stop) == 1 and '--worker=all' in stop[0]
  # the remote pkill ended the runs podium had started on workers 0 and 2
  assert (fake.worker(0) / 'sigterm').exists() and (fake.worker(2) / 'sigterm').exists()
  assert fake.processes() == []
  assert ('worker 1 ended with exit 255 (ssh failed or the connection was lost); the others '
          'get 10 s to end, then podium stops them') in out
  assert any(line.startswith('worker 1: exit 255 (ssh failed or the connection was lost): ssh: '
                             'connect to host 10.0.0.3 port 22: Connection refused') for line in out)
  assert any(line.startswith('worker 0: stopped by podium (worker 1 had failed)') for line in out)
  assert out[-1] == ('podium-test is ACTIVE: its TPU VMs are billed until you run `podium launch '
                     'tpu-vm delete podium-test --zone=us-central2-b --project=my-proj`')


def test_run_copies_the_results_folder_back_while_it_runs(fake, tmp_path, shipped):
  path, _, _ = shipped
  pod, out, _, _ = make_pod(tmp_path, path)
  install(fake, shipped, workers=1)
  fake.configure(workers=1, accelerator_type='v4-8', rules=[
      {'when': ['ssh'], 'command_has': 'launch.cli run', 'responses': [
          {'exec': True, 'env': {'PODIUM_FAKE_RUN_SLEEP': '3'}}]}])
  outcome = tpu_vm.run(pod, recipe(topology='v4-8', global_batch_size=64, eval_batch_size=64),
                       skip_preflight=True, sync_s=5)
  assert outcome.ok
  packs = [c for c in fake.calls() if (ssh_command(c) or '').startswith('tar -czf')]
  assert len(packs) >= 2   # copied back while the run went on, without being asked
  mirror = tmp_path / 'logs' / NAME / 'results'
  assert (mirror / 'podium/results/tpu-v4-32/resnet/result_0.txt').is_file()
  assert not list(mirror.rglob('checkpoints'))


def test_stop_pattern_never_matches_its_own_command_line():
  pattern = re.compile(tpu_vm.RUN_PATTERN)
  assert pattern.search('python3 -m launch.cli run resnet50 --recipe tpu_v4_64_bs4096')
  assert not pattern.search(tpu_vm.stop_command())


def test_preemption_is_reported_with_what_to_do(fake, tmp_path, shipped):
  path, _, _ = shipped
  pod, out, _, _ = make_pod(tmp_path, path, grace_s=10)
  install(fake, shipped, workers=2)
  fake.configure(workers=2, accelerator_type='v4-16', rules=[
      {'when': ['ssh'], 'command_has': 'launch.cli run', 'responses': [
          {'exec': True, 'env': {'PODIUM_FAKE_RUN_RC': '143'}}]},
      describe_rule('SUSPENDED') | {'responses': [queued('SUSPENDED', stateInitiator='SERVICE')]}])
  info = recipe(topology='v4-16', checkpoint_every_steps=500, checkpoint_dir='gs://b/ckpt')
  outcome = tpu_vm.run(pod, info, skip_preflight=True)
  assert outcome.preempted and outcome.exit_code == 143
  advice = next(line for line in out if 'was preempted' in line)
  assert advice == (
      f'podium-test was preempted (queued resource SUSPENDED, initiated by SERVICE): its TPU VMs '
      f'and their disks are gone. The checkpoints in gs://b/ckpt keep the progress; the run '
      f'folder was last copied to {tmp_path}/logs/podium-test/results. To resume: delete '
      f'podium-test, create and set up a new slice, then `run ... --resume-from '
      f'{tmp_path}/logs/podium-test/results` (or `up-run-down ... --retry-preempted N` does all '
      f'of it).')
  assert out[-1].startswith('podium-test is SUSPENDED: it holds no TPU VMs; remove the request')


# -- fetch, up-run-down ---------------------------------------------------------------------------

def test_up_run_down_goes_from_nothing_to_fetched_results_and_deletes(fake, tmp_path, repo):
  path, head = repo
  fake.configure(workers=2, accelerator_type='v4-16', rules=[
      {'when': ['queued-resources', 'describe'], 'responses': [
          queued('WAITING_FOR_RESOURCES'), queued('ACTIVE'),
          {'rc': 1, 'stderr': 'ERROR: (gcloud...) NOT_FOUND: Resource not found\n'}]}])
  pod, out, _, _ = make_pod(tmp_path, path)
  info = recipe(topology='v4-16', global_batch_size=64, eval_batch_size=64)
  assert tpu_vm.up_run_down(pod, info, capacity='spot') == 0
  assert kinds(fake.calls()) == [
      'create', 'describe', 'describe',                      # queued -> ACTIVE
      'describe-node', 'scp:all', 'ssh:all', 'ssh:0', 'ssh:1',   # setup + check
      'describe-node',                                       # preflight, podium run (one ssh
      'ssh:0', 'ssh:0', 'ssh:0', 'ssh:1', 'ssh:1', 'scp:0',  # per worker), fetch (tar, scp)
      'delete', 'describe']                                  # down, and nothing is left
  results = tmp_path / 'logs' / NAME / 'results'
  assert (results / 'podium/results/tpu-v4-32/resnet/result_0.txt').is_file()
  assert not list(results.rglob('checkpoints'))
  assert out[-1] == 'deleted podium-test. podium-test: nothing is left, nothing is billed'


def test_up_run_down_deletes_the_slice_when_the_run_fails(fake, tmp_path, repo):
  path, _ = repo
  fake.configure(workers=1, accelerator_type='v4-8', rules=[
      {'when': ['ssh'], 'command_has': 'launch.cli run', 'responses': [
          {'exec': True, 'env': {'PODIUM_FAKE_RUN_RC': '1'}}]}])
  pod, out, _, _ = make_pod(tmp_path, path)
  info = recipe(topology='v4-8', global_batch_size=64, eval_batch_size=64)
  assert tpu_vm.up_run_down(pod, info, skip_preflight=True) == 1
  assert kinds(fake.calls())[-3:] == ['scp:0', 'delete', 'describe']
  assert 'deleting podium-test (up-run-down leaves nothing running)' in out


def test_up_run_down_deletes_a_failed_request(fake, tmp_path, repo):
  path, _ = repo
  fake.configure(rules=[describe_rule('FAILED')])
  pod, _, _, _ = make_pod(tmp_path, path)
  with pytest.raises(tpu_vm.QueueFailed):
    tpu_vm.up_run_down(pod, recipe(topology='v4-8', global_batch_size=64, eval_batch_size=64))
  assert kinds(fake.calls()) == ['create', 'describe', 'delete', 'describe']


def test_up_run_down_resumes_after_a_preemption(fake, tmp_path, repo):
  path, _ = repo
  fake.configure(workers=1, accelerator_type='v4-8', rules=[
      {'when': ['ssh'], 'command_has': 'launch.cli run', 'responses': [
          {'exec': True, 'env': {'PODIUM_FAKE_RUN_RC': '143'}}, {'exec': True}]},
      {'when': ['queued-resources', 'describe'], 'responses': [
          queued('ACTIVE'), queued('SUSPENDED', stateInitiator='SERVICE'),
          {'rc': 1, 'stderr': 'ERROR: NOT_FOUND\n'}, queued('ACTIVE'),
          {'rc': 1, 'stderr': 'ERROR: NOT_FOUND\n'}]}])
  pod, out, _, _ = make_pod(tmp_path, path)
  mirror = tmp_path / 'logs' / NAME / 'results' / 'podium'
  mirror.mkdir(parents=True)
  (mirror / 'run_state.json').write_text('{"status": "running"}')
  info = recipe(topology='v4-8', global_batch_size=64, eval_batch_size=64,
                checkpoint_every_steps=100, checkpoint_dir='gs://b/ckpt')
  assert tpu_vm.up_run_down(pod, info, capacity='spot', retry_preempted=1,
                            skip_preflight=True) == 0
  attempt = ['create', 'describe', 'describe-node', 'scp:all', 'ssh:all', 'ssh:0',  # up, setup
             'describe-node']
  assert kinds(fake.calls()) == (
      attempt + ['ssh:0', 'describe', 'delete', 'describe'] +   # run: 143, SUSPENDED; delete
      attempt + ['scp:0', 'ssh:0', 'ssh:0', 'ssh:0', 'scp:0',   # restore, run, fetch
                 'delete', 'describe'])
  assert 'recreating podium-test after the preemption (attempt 2 of 2)' in out
  # the new slice got the results folder back before the run resumed
  assert (fake.worker(0) / 'podium_runs' / 'podium' / 'run_state.json').exists()
  assert len(fake.remote_calls('podium-run')) == 2
  assert out[-1] == 'deleted podium-test. podium-test: nothing is left, nothing is billed'


def test_dry_run_prints_the_exact_commands_and_runs_none(fake, tmp_path, repo):
  path, head = repo
  printed = []
  pod = tpu_vm.Pod(TpuVm(NAME, ZONE), Runner(dry_run=True, echo=printed.append),
                   out=lambda line: None, logs_root=tmp_path / 'logs', repo=path)
  info = recipe(topology='v4-16', sets=('data.dir=$(touch x)',), global_batch_size=64,
                eval_batch_size=64)
  tpu_vm.up_run_down(pod, info)
  assert fake.calls() == []
  archive = f'podium-{head[:12]}.tar.gz'
  commands = [line[2:] for line in printed]
  run = ("cd podium && exec python3 -m launch.cli run resnet50 --recipe tpu_v4_32 --set "
         "'data.dir=$(touch x)' --output ../podium_runs")
  expected_tail = [
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=0 --quiet "
      f"{shlex.quote('--command=' + run)}",
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=1 --quiet "
      f"{shlex.quote('--command=' + run)}",
      f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE} --worker=0 --quiet '--command=tar "
      f"-czf podium_results.tar.gz --exclude=checkpoints -C podium_runs .'",
  ]
  assert commands[0] == (f'gcloud compute tpus queued-resources create {NAME} --node-id={NAME} '
                         f'--accelerator-type=v4-16 --runtime-version=tpu-ubuntu2204-base '
                         f'--zone={ZONE}')
  assert commands[-6:-3] == expected_tail
  assert commands[-2:] == [f'gcloud compute tpus queued-resources delete {NAME} --zone={ZONE} '
                           f'--force --quiet',
                           f'gcloud compute tpus queued-resources describe {NAME} --zone={ZONE} '
                           f'--format=json']
  assert any(c.startswith(f'git -C {path} archive --format=tar.gz --output=') and
             c.endswith(f'/{archive} HEAD') for c in commands)
  assert not (tmp_path / 'logs').exists()
