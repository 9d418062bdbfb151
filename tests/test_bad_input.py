"""Bad input gets one clear message naming the file, key or value, and no traceback; a run
that fails after run_start ends its MLPerf log with run_stop status aborted."""

import glob
import json
import os

from input_pipelines import digits
from launch import cli


def run_cli(capsys, *args):
  code = cli.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_unknown_recipe(capsys):
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'bogus')
  assert code == 2
  assert "unknown recipe 'bogus'" in err and 'digits_cpu' in err and 'Traceback' not in err


def test_unknown_key(capsys):
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--set', 'train.lr=1')
  assert code == 2 and '--set train.lr: unknown key' in err and 'Traceback' not in err


def test_missing_data_dir(capsys, tmp_path):
  missing = tmp_path / 'nowhere'
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(tmp_path),
                         '--set', f'data.dir={missing}', '--set', 'data.prepare=""')
  assert code == 2 and str(missing) in err and 'Traceback' not in err


def test_empty_data_dir(capsys, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(tmp_path),
                         '--set', f'data.dir={empty}', '--set', 'data.prepare=""')
  assert code == 2 and str(empty) in err and 'train-' in err


def test_batch_the_devices_cannot_divide(capsys, tmp_path):
  # conftest gives 8 CPU devices; 12 examples cannot be split 8 ways.
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(tmp_path),
                         '--set', f'data.dir={tmp_path / "digits"}', '--set', 'train.global_batch_size=12')
  assert code == 2 and 'global batch 12' in err and 'multiple of 8' in err
  assert not glob.glob(str(tmp_path / 'podium' / 'results' / '*' / '*' / 'result_*.txt')), \
      'a run rejected before it starts must not leave a result file'


def test_corrupt_record_mid_run_names_the_file_and_aborts_the_log(capsys, tmp_path):
  data = tmp_path / 'digits'
  digits.write_digits(str(data), image_size=16)
  victim = sorted(glob.glob(str(data / 'train-*')))[0]
  blob = bytearray(open(victim, 'rb').read())
  middle = len(blob) // 2
  blob[middle:middle + 64] = bytes(64)  # break a record's payload and CRC
  open(victim, 'wb').write(bytes(blob))
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(tmp_path / 'out'),
                         '--set', f'data.dir={data}', '--set', 'data.prepare=""',
                         '--set', 'train.max_epochs=2')
  assert code == 2, err
  assert os.path.basename(victim) in err and 'Traceback' not in err
  logs = glob.glob(str(tmp_path / 'out' / 'podium' / 'results' / '*' / 'resnet' / 'result_0.txt'))
  assert logs
  last = [json.loads(l.split(':::MLLOG', 1)[1]) for l in open(logs[0]) if ':::MLLOG' in l][-1]
  assert last['key'] == 'run_stop' and last['metadata']['status'] == 'aborted'


def test_diverging_loss_names_the_step_and_aborts_the_log(capsys, tmp_path):
  data = tmp_path / 'digits'
  digits.write_digits(str(data), image_size=16)
  code, _, err = run_cli(capsys, 'run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(tmp_path / 'out'),
                         '--set', f'data.dir={data}', '--set', 'optimizer.name=sgd',
                         '--set', 'optimizer.base_learning_rate=1e12', '--set', 'optimizer.warmup_epochs=0.0',
                         '--set', 'log_every_steps=2')
  assert code == 2, err
  assert 'training loss is nan at step' in err and 'Traceback' not in err
  logs = glob.glob(str(tmp_path / 'out' / 'podium' / 'results' / '*' / 'resnet' / 'result_0.txt'))
  last = [json.loads(l.split(':::MLLOG', 1)[1]) for l in open(logs[0]) if ':::MLLOG' in l][-1]
  assert last['key'] == 'run_stop' and last['metadata']['status'] == 'aborted'
