"""Weight files as people publish them: which format a path holds, and reading it safely.

One reader for every model's importer (``model.init_checkpoint``, ``podium import``):

  format        what the path is
  pytorch       a torch pickle (``.pt``/``.pth``/``.pyth``/``.bin``, or any file torch wrote):
                torchvision/transformers state dicts, pycls's ``{'model_state': ...}``,
                fairseq checkpoints (weights under ``'model'``, beside argparse/omegaconf
                objects under ``'args'``/``'cfg'``)
  safetensors   ``.safetensors``
  tf1           a TF1 checkpoint: its prefix (``model.ckpt-28252``), one of its files, or a
                folder with a ``checkpoint`` file (MLPerf BERT's starting point)
  podium        a podium run folder (``config.json`` + its checkpoints), a checkpoints folder
                (orbax steps), or what ``podium import`` wrote

Torch pickles are read with torch's ``weights_only`` unpickler first. fairseq checkpoints
hold objects it refuses (``argparse.Namespace``, omegaconf configs); those are read by a
restricted unpickler that rebuilds tensors with the same allow-list torch uses and turns every
other object into an inert :class:`Opaque` record: no code from the file runs either way.
torch and TensorFlow are imported only when a file of theirs is read.
"""

from __future__ import annotations

import json
import os
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMATS = ('pytorch', 'safetensors', 'tf1', 'podium')
TORCH_SUFFIXES = ('.pt', '.pth', '.pyth', '.bin', '.ckpt')  # .pyth: pycls's model zoo
SAFETENSORS_SUFFIXES = ('.safetensors',)
# Where checkpoints nest their state dict: generic, fairseq / timm, pycls.
STATE_DICT_WRAPPERS = ('state_dict', 'model', 'model_state')
_ZIP_MAGIC = b'PK\x03\x04'   # torch.save's default (zip) format
_PICKLE_MAGIC = b'\x80'      # legacy torch.save / plain pickles (protocol >= 2)


class WeightFileError(ValueError):
  """A weight file that cannot be read or has no recognisable format; the message says why."""


def _is_orbax_step(path: Path) -> bool:
  return path.is_dir() and path.name.isdigit() and (path / '_CHECKPOINT_METADATA').exists()


def podium_checkpoint_dir(path: str | os.PathLike) -> Path | None:
  """The orbax checkpoints folder a podium path stands for, or None if it is no podium path:
  a run folder (its ``config.json`` says where checkpoints went), a checkpoints folder, or
  one step of it (its parent)."""
  path = Path(path)
  if not path.is_dir():
    return None
  if _is_orbax_step(path):
    return path.parent
  if any(_is_orbax_step(p) for p in path.iterdir()):
    return path
  config = path / 'config.json'
  if config.is_file():
    directory = (json.loads(config.read_text()).get('checkpoint') or {}).get('dir')
    return Path(directory) / path.name if directory else path / 'checkpoints'
  return None


def _is_tf1(path: str) -> bool:
  if os.path.isdir(path):
    return os.path.isfile(os.path.join(path, 'checkpoint')) or any(
        name.endswith('.index') for name in os.listdir(path))
  stem = path[:-len('.index')] if path.endswith('.index') else path
  return os.path.isfile(stem + '.index')


def detect_format(path: str | os.PathLike) -> str:
  """One of FORMATS for `path`, from its name, its layout and its first bytes."""
  path = os.fspath(path)
  if not os.path.exists(path) and not _is_tf1(path):
    raise WeightFileError(f'{path}: no such file or folder (expected a .pt/.pth/.bin/'
                          '.safetensors file, a TF1 checkpoint prefix, or a podium run or '
                          'checkpoint folder)')
  if os.path.isdir(path):
    if podium_checkpoint_dir(path) is not None:
      return 'podium'
    if _is_tf1(path):
      return 'tf1'
    raise WeightFileError(f'{path} is a folder with neither a podium run (config.json), '
                          'podium checkpoints (numbered orbax steps) nor a TF1 checkpoint')
  if path.endswith(SAFETENSORS_SUFFIXES):
    return 'safetensors'
  if _is_tf1(path) or '.data-' in os.path.basename(path):
    return 'tf1'
  with open(path, 'rb') as f:
    head = f.read(4)
  if path.endswith(TORCH_SUFFIXES) or head == _ZIP_MAGIC or head[:1] == _PICKLE_MAGIC:
    return 'pytorch'
  raise WeightFileError(f'Unknown checkpoint format {path!r}; valid: PyTorch '
                        f'({", ".join(TORCH_SUFFIXES)}), {SAFETENSORS_SUFFIXES[0]}, a TF1 '
                        'checkpoint prefix, a podium run or checkpoint folder')


# -- torch pickles --------------------------------------------------------------------------

class Opaque:
  """Stands in for any object a checkpoint holds besides tensors (fairseq's argparse
  Namespace, omegaconf configs, enums): it keeps what the pickle gave it and runs nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.items[len(self.items)] = value

  def extend(self, values):
    for value in values:
      self.append(value)

  def __call__(self, *args, **kwargs):
    return Opaque(*args, **kwargs)

  def __repr__(self):
    return f'<{type(self).__qualname__}>'


def _restricted_pickle_module():
  """A pickle module for ``torch.load``: torch's weights-only allow-list, Opaque for the rest."""
  from torch import _weights_only_unpickler  # pylint: disable=import-outside-toplevel
  allowed = _weights_only_unpickler._get_allowed_globals()  # pylint: disable=protected-access
  opaque: dict[str, type] = {}

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      key = f'{module}.{name}'
      if key in allowed:
        return allowed[key]
      if key not in opaque:  # one subclass per name keeps types apart (isinstance, repr)
        opaque[key] = type(name, (Opaque,), {'__qualname__': key})
      return opaque[key]

  return types.SimpleNamespace(__name__='podium_restricted_pickle', Unpickler=Unpickler,
                               load=pickle.load)


def load_torch_pickle(path: str) -> Any:
  """What ``torch.save`` wrote to `path`, without running code from the file."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise WeightFileError(f'reading {path} needs PyTorch (pip install torch); or convert it '
                          'once with `podium import` on a machine that has torch, or to '
                          '.safetensors') from e
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    pass  # objects beside the tensors (fairseq's args/cfg): read them as Opaque records
  except (RuntimeError, EOFError, OSError) as e:
    raise WeightFileError(f'{path} is not a readable PyTorch file: {e}') from None
  try:
    return torch.load(path, map_location='cpu', weights_only=False,
                      pickle_module=_restricted_pickle_module())
  except Exception as e:  # noqa: BLE001 -- any failure here means an unreadable file
    raise WeightFileError(f'{path} is not a readable PyTorch file: '
                          f'{type(e).__name__}: {e}') from None


def unwrap_state_dict(loaded: Any, path: str = 'checkpoint') -> dict[str, Any]:
  """The state dict inside a loaded checkpoint (``{'model': ...}``, ``{'state_dict': ...}``,
  pycls's ``{'model_state': ...}``), with only its tensor entries' names kept as they are."""
  for wrapper in STATE_DICT_WRAPPERS:
    if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
      loaded = loaded[wrapper]
  if not isinstance(loaded, Mapping):
    raise WeightFileError(f'{path} holds a {type(loaded).__name__}, not a state dict (a '
                          'mapping from names to tensors)')
  if not any(hasattr(v, 'shape') for v in loaded.values()):
    keys = ', '.join(map(str, list(loaded)[:6])) or 'none'
    raise WeightFileError(f'{path} holds no tensors at its top level or under '
                          f'{"/".join(STATE_DICT_WRAPPERS)} (keys: {keys})')
  return dict(loaded)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """The state dict of a PyTorch or safetensors file (wrappers unwrapped), name -> tensor."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'PyTorch checkpoint {path!r} does not exist')
  fmt = detect_format(path)
  if fmt == 'safetensors':
    try:
      from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise WeightFileError(f'reading {path} needs the safetensors package: '
                            'pip install safetensors') from e
    # framework='flax' reads bfloat16 tensors too (numpy cannot hold them).
    with safe_open(path, framework='flax') as f:
      return {key: f.get_tensor(key) for key in f.keys()}
  if fmt != 'pytorch':
    raise WeightFileError(f'{path} is a {fmt} checkpoint, not a PyTorch state dict')
  return unwrap_state_dict(load_torch_pickle(path), path)


def read_podium(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """``{'params', 'model_state', ...}`` as numpy from a podium run, checkpoints folder or
  ``podium import`` output (the latest step unless `step`)."""
  directory = podium_checkpoint_dir(path)
  if directory is None:
    raise WeightFileError(f'{path} is no podium run or checkpoints folder')
  from benchmarks import checkpointing  # pylint: disable=import-outside-toplevel
  if checkpointing.latest_step(directory) is None:
    raise WeightFileError(f'{directory} holds no complete checkpoint (the run saved no final '
                          'state: it ran with checkpoint.save_final=False, or did not finish)')
  return checkpointing.read_state(directory, step)


def tree_mismatches(expected: Any, given: Any, kind: str = 'parameter') -> list[str]:
  """Every difference between two pytrees of arrays (or shape structs), one phrase each:
  'missing <kind> <path>', 'unexpected ...', '<kind> <path> has shape ..., the model ...'."""
  import jax  # pylint: disable=import-outside-toplevel

  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, 'shape', ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  mine, theirs = shapes(expected), shapes(given)
  return ([f'missing {kind} {k}' for k in mine if k not in theirs] +
          [f'unexpected {kind} {k}' for k in theirs if k not in mine] +
          [f'{kind} {k} has shape {theirs[k]}, the model {mine[k]}' for k in mine
           if k in theirs and theirs[k] != mine[k]])


def summarize(problems: list[str], shown: int = 8) -> str:
  """The first `shown` problems in one line, and how many more there are."""
  more = f'; and {len(problems) - shown} more' if len(problems) > shown else ''
  return '; '.join(problems[:shown]) + more
