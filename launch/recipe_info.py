"""What `podium launch` needs to know of a recipe, resolved without importing JAX here.

Recipes live in the benchmark modules, which import JAX and TensorFlow; `podium launch`
must not (it runs on a laptop, or on a TPU VM whose chips a training job holds). So the
recipe is resolved in a child process (`python -m launch.recipe_info`, JAX on the CPU
platform), with exactly `registry.resolve`: an unknown recipe, key or value is rejected
before anything is created or billed. The child prints one JSON line; `RecipeInfo` holds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from launch.gcloud import LaunchError

ROOT = Path(__file__).resolve().parent.parent
_MARKER = 'PODIUM_RECIPE '


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The training files a run reads: what the preflight looks for on every worker."""
  dir: str
  patterns: tuple[str, ...]   # the first one that matches anything names the files
  what: str                   # for messages: 'ImageNet TFRecords'


@dataclasses.dataclass(frozen=True)
class RecipeInfo:
  benchmark: str
  recipe: str
  sets: tuple[str, ...] = ()
  topology: str = ''
  global_batch_size: int = 0
  eval_batch_size: int = 0
  mesh: dict = dataclasses.field(default_factory=dict)
  dcn_mesh: dict = dataclasses.field(default_factory=dict)
  input_shards: int = 0
  data: DataSpec | None = None
  data_note: str = ''          # why there is no data check (synthetic, written at start)
  org: str = 'podium'
  checkpoint_dir: str = ''
  checkpoint_every_steps: int = 0
  checkpoint_every_epochs: float = 0.0

  @property
  def checkpointing(self) -> bool:
    return bool(self.checkpoint_every_steps or self.checkpoint_every_epochs)

  @classmethod
  def from_json(cls, fields: dict) -> 'RecipeInfo':
    fields = dict(fields)
    if fields.get('data'):
      data = fields['data']
      fields['data'] = DataSpec(data['dir'], tuple(data['patterns']), data['what'])
    fields['sets'] = tuple(fields.get('sets', ()))
    return cls(**fields)


_CACHE: dict[tuple, RecipeInfo] = {}


def resolve(benchmark: str, recipe: str, sets: Sequence[str] = ()) -> RecipeInfo:
  """The recipe with its `--set` values, resolved in a child process (cached per process)."""
  key = (benchmark, recipe, tuple(sets))
  if key in _CACHE:
    return _CACHE[key]
  argv = [sys.executable, '-m', 'launch.recipe_info', benchmark, recipe]
  for assignment in sets:
    argv += ['--set', assignment]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env,
                        stdin=subprocess.DEVNULL)
  for line in done.stdout.splitlines():
    if line.startswith(_MARKER):
      payload = json.loads(line[len(_MARKER):])
      if 'error' in payload:
        raise LaunchError(payload['error'], exit_code=2)
      info = RecipeInfo.from_json(payload)
      _CACHE[key] = info
      return info
  tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
  raise LaunchError(f'could not resolve recipe {benchmark}/{recipe} (exit {done.returncode}): '
                    f'{tail}')


def _describe(benchmark: str, recipe: str, sets: Sequence[str]) -> dict:
  """Runs in the child process: registry.resolve, then the fields the launcher reads."""
  from benchmarks import registry
  config = registry.resolve(benchmark, recipe, sets)
  data = config.get('data', {})
  spec, note = None, ''
  if data.get('synthetic'):
    note = 'data.synthetic=True: no files are read'
  elif data.get('prepare'):
    note = f'data.prepare={data.prepare!r}: the run writes its data at start'
  elif not data.get('dir'):
    note = 'the recipe names no data.dir'
  elif 'train_pattern' in data:   # BERT: part-* files (MLPerf's names), or the recipe's
    spec = {'dir': data.dir, 'patterns': [data.train_pattern],
            'what': 'training TFRecords'}
  elif 'image_size' in data:      # the ImageNet input: either of its two on-disk layouts
    from input_pipelines import imagenet
    tfds_train = imagenet.TFDS_PATTERNS[1].replace('<name>', '*')
    spec = {'dir': data.dir, 'patterns': [imagenet.TFRECORD_PATTERNS[0], tfds_train],
            'what': 'ImageNet training files'}
  else:
    note = f'no file check is known for {benchmark}'
  train = config.get('train', {})
  checkpoint = config.get('checkpoint', {})
  return dict(
      benchmark=benchmark, recipe=recipe, sets=list(sets), topology=config.get('topology', ''),
      global_batch_size=int(train.get('global_batch_size', 0)),
      eval_batch_size=int(train.get('eval_batch_size', 0) or 0),
      mesh=dict(config.get('mesh', {})), dcn_mesh=dict(config.get('dcn_mesh', {})),
      input_shards=int(data.get('input_shards', 0) or 0), data=spec, data_note=note,
      org=config.submission.org, checkpoint_dir=checkpoint.get('dir', ''),
      checkpoint_every_steps=int(checkpoint.get('every_steps', 0)),
      checkpoint_every_epochs=float(checkpoint.get('every_epochs', 0.0)))


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog='python -m launch.recipe_info')
  parser.add_argument('benchmark')
  parser.add_argument('recipe')
  parser.add_argument('--set', action='append', default=[])
  args = parser.parse_args(argv)
  from benchmarks.config import ConfigError
  try:
    payload = _describe(args.benchmark, args.recipe, args.set)
  except ConfigError as error:
    payload = {'error': str(error)}
  print(_MARKER + json.dumps(payload), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
