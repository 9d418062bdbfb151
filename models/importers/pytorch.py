"""Copying PyTorch state dicts into NNX models: reading files, layouts, checked assignment.

Model-specific importers (``pytorch_resnet``) list one :class:`Target` per PyTorch key;
:func:`copy_state_dict` checks the whole list against the state dict first and raises one
``ValueError`` naming every missing key, unexpected key and wrong shape, and only then
writes, so a failed import leaves the model as it was. torch is never imported at module
level: state-dict values may be numpy arrays, torch tensors or anything ``np.asarray`` takes.
"""

from collections.abc import Callable, Iterable, Mapping
import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx


def to_numpy(value: Any) -> np.ndarray:
  """A state-dict value as a numpy array: torch tensors by duck typing, else np.asarray."""
  if hasattr(value, 'detach') and hasattr(value, 'cpu'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':  # numpy has no bfloat16: widen losslessly
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (out, in, h, w) -> Flax kernel (h, w, in, out)."""
  return np.transpose(weight, (2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> Flax kernel (in, out)."""
  return np.transpose(weight)


def same(value: np.ndarray) -> np.ndarray:
  """Vectors (biases, BatchNorm) have the same layout in both frameworks."""
  return value


_TORCH_SHAPE = {
    conv_kernel: lambda s: (s[3], s[2], s[0], s[1]),
    linear_kernel: lambda s: (s[1], s[0]),
    same: lambda s: tuple(s),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """One PyTorch state-dict key and the NNX variable it fills."""

  key: str
  variable: nnx.Variable
  transform: Callable[[np.ndarray], np.ndarray] = same

  @property
  def torch_shape(self) -> tuple[int, ...]:
    """The shape the PyTorch tensor must have (its own layout, as people compare it)."""
    return tuple(int(d) for d in _TORCH_SHAPE[self.transform](self.variable.shape))


def copy_state_dict(
    targets: Iterable[Target],
    state_dict: Mapping[str, Any],
    *,
    ignore: Callable[[str], bool] = lambda key: False,
    what: str = 'model',
) -> None:
  """Checks every key and shape, then writes each target variable in place.

  ``ignore(key)`` marks state-dict entries with no counterpart that are fine to drop
  (e.g. BatchNorm's ``num_batches_tracked``).
  """
  targets = list(targets)
  by_key = {t.key: t for t in targets}
  if len(by_key) != len(targets):
    raise AssertionError(f'importer for {what} maps a PyTorch key twice')

  missing = [t for t in targets if t.key not in state_dict]
  unexpected = [k for k in state_dict if k not in by_key and not ignore(k)]
  arrays, mismatched = {}, []
  for t in targets:
    if t.key in state_dict:
      array = to_numpy(state_dict[t.key])
      if array.shape != t.torch_shape:
        mismatched.append((t, array.shape))
      arrays[t.key] = array

  if missing or unexpected or mismatched:
    lines = [f'PyTorch state dict does not fit {what}:']
    if missing:
      lines.append(f'  missing keys ({len(missing)}):')
      lines += [f'    {t.key}  expected shape {t.torch_shape}' for t in missing]
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}):')
      lines += [f'    {k}  shape {to_numpy(state_dict[k]).shape}' for k in unexpected]
    if mismatched:
      lines.append(f'  shape mismatches ({len(mismatched)}), PyTorch layout:')
      lines += [f'    {t.key}  expected {t.torch_shape}, given {shape}'
                for t, shape in mismatched]
    raise ValueError('\n'.join(lines))

  for t in targets:
    # A private copy: JAX on CPU may alias a numpy buffer, and torch's buffers (shared with
    # .numpy()) change in place when the PyTorch model trains on.
    value = np.array(t.transform(arrays[t.key]), dtype=t.variable.dtype, copy=True)
    t.variable.set_value(jnp.asarray(value))


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a PyTorch (``.pt``/``.pth``/``.bin``, fairseq's included) or ``.safetensors``
  state dict, unwrapping ``{'state_dict'|'model'|'model_state': ...}``: see weight_files."""
  from models.importers import weight_files  # pylint: disable=import-outside-toplevel
  return weight_files.read_state_dict(path)
