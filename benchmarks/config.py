"""Recipe configs: `--set key=value` overrides and the error for a bad recipe, key or value.

Every field of a recipe can be overridden from the command line; an unknown key is an error
that names the closest valid keys, and a value is parsed as a Python literal and must fit the
field's type (ConfigDict enforces it), so a typo never silently trains something else.
"""

from __future__ import annotations

import ast
import difflib
from typing import Iterable

import ml_collections


class ConfigError(ValueError):
  """A recipe name, key or value that is not valid; the message says what is."""


def loop_config() -> ml_collections.ConfigDict:
  """The fields of every recipe that the loop and the runtime read, whatever the benchmark.

  A benchmark's base config starts from this and adds `model`, `data`, `train` and
  `optimizer`; the recipe fills in the values.
  """
  return ml_collections.ConfigDict(dict(
      seed=0,
      topology='',  # the TPU slice a pod recipe is for, e.g. 'v5p-256'; empty: any
      output_dir='runs',
      log_every_steps=50,
      prefetch_batches=2,
      mesh=dict(data=-1, fsdp=1, tensor=1),
      # Multi-slice: how each axis splits across slices (over DCN); `mesh` is then per slice.
      dcn_mesh=dict(data=1, fsdp=1, tensor=1),
      sharding_rules='data_parallel',
      submission=dict(org='podium', division='closed', status='research', system=''),
      # Off by default: an MLPerf time-to-train is one contiguous run, and saving is on the
      # clock. See benchmarks/checkpointing.py for what is saved and how a run resumes.
      checkpoint=dict(
          every_steps=0,        # save every N steps (0: off)
          every_epochs=0.0,     # or every N epochs of `train_samples` (0: off)
          keep=2,               # the newest checkpoints kept
          on_preemption=True,   # on SIGTERM: save at the next step, then exit (when enabled)
          resume='auto',        # 'auto': continue an unfinished run of this config; 'never'
          dir='',               # default: <run dir>/checkpoints
          # Save the final state after run_stop (untimed) for `podium export` and
          # fine-tuning, even with periodic checkpoints off.
          save_final=True,
      ),
  ))


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, f'{prefix}{key}.'))
    else:
      keys.append(f'{prefix}{key}')
  return keys


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies one `dotted.key=value` to `config` in place."""
  if '=' not in assignment:
    raise ConfigError(f'--set {assignment!r}: expected key=value, e.g. --set train.global_batch_size=256')
  key, text = assignment.split('=', 1)
  key = key.strip()
  valid = flat_keys(config)
  if key not in valid:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ConfigError(f'--set {key}: unknown key.{hint} Valid keys: {", ".join(valid)}')
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  old = node[leaf]
  value = _parse_value(text)
  if isinstance(old, str) and not isinstance(value, str):
    value = text  # a string field given something that parses as a number, e.g. a name '1'
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and isinstance(value, (list, tuple, dict)) != isinstance(old, (list, tuple, dict)):
    raise ConfigError(f'--set {key}={text}: expected a value like {old!r}')
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(
        f'--set {key}={text}: expected a {type(old).__name__} like {old!r} ({e})') from None


def apply_overrides(config: ml_collections.ConfigDict, assignments: Iterable[str]) -> ml_collections.ConfigDict:
  for assignment in assignments:
    apply_override(config, assignment)
  return config
