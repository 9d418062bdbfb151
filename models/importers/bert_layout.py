"""Where each parameter of ``models.bert.BertForPreTraining`` lives in published checkpoints.

One table serves both importers: every podium variable with its TF1 name (google-research/bert
and MLPerf's ``model.ckpt-28252``), its Hugging Face ``BertForPreTraining`` state-dict key,
and its *kind*, which says how the layouts differ:

  kind         podium                  TF1                 PyTorch (transformers)
  embedding    [rows, hidden]          same                same
  vector       [n]                     same                same
  dense        kernel [in, out]        same                weight [out, in]
  heads_in     kernel [hidden, n, h]   kernel [hidden, n*h]  weight [n*h, hidden]
  heads_bias   bias [n, h]             bias [n*h]          same as TF1
  heads_out    kernel [n, h, hidden]   kernel [n*h, hidden]  weight [hidden, n*h]
  nsp_weights  kernel [hidden, 2]      output_weights [2, hidden]  weight [2, hidden]

`copy_checked` checks every name and shape first and raises one error naming everything
missing, unexpected or misshapen; only then does it write, so a failed import leaves the
model as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.bert import BertForPreTraining


class CheckpointMismatch(ValueError):
  """A checkpoint does not fit the model; the message lists every difference."""


@dataclasses.dataclass(frozen=True)
class Slot:
  """One podium variable and its names in the published layouts."""

  tf1: str
  torch: str
  variable: nnx.Variable
  kind: str


def bert_slots(model: BertForPreTraining) -> list[Slot]:
  """Every parameter of ``model`` with its TF1 and PyTorch names."""
  slots: list[Slot] = []

  def add(tf1, torch, variable, kind):
    slots.append(Slot(tf1, torch, variable, kind))

  def dense(tf1, torch, layer, kind='dense', bias_kind='vector'):
    add(f'{tf1}/kernel', f'{torch}.weight', layer.kernel, kind)
    add(f'{tf1}/bias', f'{torch}.bias', layer.bias, bias_kind)

  def norm(tf1, torch, layer):
    add(f'{tf1}/gamma', f'{torch}.weight', layer.scale, 'vector')
    add(f'{tf1}/beta', f'{torch}.bias', layer.bias, 'vector')

  e = model.embeddings
  add('bert/embeddings/word_embeddings', 'bert.embeddings.word_embeddings.weight',
      e.word.embedding, 'embedding')
  add('bert/embeddings/token_type_embeddings', 'bert.embeddings.token_type_embeddings.weight',
      e.token_type.embedding, 'embedding')
  add('bert/embeddings/position_embeddings', 'bert.embeddings.position_embeddings.weight',
      e.position.embedding, 'embedding')
  norm('bert/embeddings/LayerNorm', 'bert.embeddings.LayerNorm', e.norm)
  for i, layer in enumerate(model.layers):
    tf1, torch = f'bert/encoder/layer_{i}', f'bert.encoder.layer.{i}'
    a = layer.attention
    for name in ('query', 'key', 'value'):
      dense(f'{tf1}/attention/self/{name}', f'{torch}.attention.self.{name}', getattr(a, name),
            'heads_in', 'heads_bias')
    dense(f'{tf1}/attention/output/dense', f'{torch}.attention.output.dense', a.output,
          'heads_out')
    norm(f'{tf1}/attention/output/LayerNorm', f'{torch}.attention.output.LayerNorm', a.norm)
    dense(f'{tf1}/intermediate/dense', f'{torch}.intermediate.dense', layer.intermediate)
    dense(f'{tf1}/output/dense', f'{torch}.output.dense', layer.output)
    norm(f'{tf1}/output/LayerNorm', f'{torch}.output.LayerNorm', layer.norm)
  dense('bert/pooler/dense', 'bert.pooler.dense', model.pooler)
  dense('cls/predictions/transform/dense', 'cls.predictions.transform.dense', model.mlm_transform)
  norm('cls/predictions/transform/LayerNorm', 'cls.predictions.transform.LayerNorm',
       model.mlm_norm)
  add('cls/predictions/output_bias', 'cls.predictions.bias', model.mlm_bias, 'vector')
  add('cls/seq_relationship/output_weights', 'cls.seq_relationship.weight', model.nsp.kernel,
      'nsp_weights')
  add('cls/seq_relationship/output_bias', 'cls.seq_relationship.bias', model.nsp.bias, 'vector')
  return slots


def _flat(shape: Sequence[int], start: int, stop: int | None = None) -> tuple[int, ...]:
  """``shape`` with dimensions ``start:stop`` merged into one."""
  stop = len(shape) if stop is None else stop
  return (*shape[:start], int(np.prod(shape[start:stop])), *shape[stop:])


# kind -> (source shape from the podium shape, source array -> podium array) per layout.
_TF1 = {
    'embedding': (tuple, lambda a, s: a),
    'vector': (tuple, lambda a, s: a),
    'dense': (tuple, lambda a, s: a),
    'heads_in': (lambda s: _flat(s, 1), lambda a, s: a.reshape(s)),
    'heads_bias': (lambda s: _flat(s, 0), lambda a, s: a.reshape(s)),
    'heads_out': (lambda s: _flat(s, 0, 2), lambda a, s: a.reshape(s)),
    'nsp_weights': (lambda s: (s[1], s[0]), lambda a, s: a.T),
}
_TORCH = {
    'embedding': (tuple, lambda a, s: a),
    'vector': (tuple, lambda a, s: a),
    'dense': (lambda s: (s[1], s[0]), lambda a, s: a.T),
    'heads_in': (lambda s: _flat(s, 1)[::-1], lambda a, s: a.T.reshape(s)),
    'heads_bias': (lambda s: _flat(s, 0), lambda a, s: a.reshape(s)),
    'heads_out': (lambda s: _flat(s, 0, 2)[::-1], lambda a, s: a.T.reshape(s)),
    'nsp_weights': (lambda s: (s[1], s[0]), lambda a, s: a.T),
}
LAYOUTS = {'tf1': _TF1, 'torch': _TORCH}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source name, the podium variable it fills, and how."""

  name: str
  variable: nnx.Variable
  source_shape: tuple[int, ...]
  convert: Callable[[np.ndarray], np.ndarray]


def entries(model: BertForPreTraining, layout: str) -> list[Entry]:
  return entries_for(bert_slots(model), layout)


def entries_for(slots: Iterable[Slot], layout: str) -> list[Entry]:
  table = LAYOUTS[layout]
  out = []
  for slot in slots:
    source_shape, convert = table[slot.kind]
    shape = tuple(int(d) for d in slot.variable.shape)
    name = slot.tf1 if layout == 'tf1' else slot.torch
    out.append(Entry(name, slot.variable, tuple(int(d) for d in source_shape(shape)),
                     lambda a, shape=shape, convert=convert: convert(a, shape)))
  return out


def copy_checked(targets: Iterable[Entry], shapes: Mapping[str, Sequence[int]],
                 read: Callable[[str], np.ndarray], *, unexpected: Sequence[str] = (),
                 what: str, source: str, hint: str = '', check_only: bool = False) -> None:
  """Checks every name and shape against ``shapes``, then writes each variable in place.

  ``read(name)`` is called only after every check passed (a TF1 checkpoint is read lazily).
  ``unexpected`` lists source names that belong to no variable and are not ignorable.
  """
  targets = list(targets)
  missing = [t for t in targets if t.name not in shapes]
  mismatched = [(t, tuple(shapes[t.name])) for t in targets
                if t.name in shapes and tuple(int(d) for d in shapes[t.name]) != t.source_shape]
  if missing or mismatched or unexpected:
    lines = [f'{source} does not fit {what}:']
    if missing:
      lines.append(f'  missing variables ({len(missing)}):')
      lines += [f'    {t.name}  expected shape {list(t.source_shape)}' for t in missing]
    if mismatched:
      lines.append(f'  shape mismatches ({len(mismatched)}):')
      lines += [f'    {t.name}  expected {list(t.source_shape)}, found {list(shape)}'
                for t, shape in mismatched]
    if unexpected:
      lines.append(f'  unexpected variables ({len(unexpected)}):')
      lines += [f'    {name}  shape {list(shapes[name])}' for name in unexpected]
    if hint:
      lines.append(hint)
    raise CheckpointMismatch('\n'.join(lines))
  if check_only:
    return
  for t in targets:
    # A private copy: JAX on CPU may alias numpy buffers, and torch's change in place.
    value = np.array(t.convert(np.asarray(read(t.name))), dtype=t.variable.dtype, copy=True)
    t.variable.set_value(jnp.asarray(value))


def describe_model(model: BertForPreTraining) -> str:
  c = model.config
  return (f'podium BERT (vocab {c.vocab_size}, hidden {c.hidden_size}, {c.num_layers} layers, '
          f'{c.num_heads} heads, FFN {c.intermediate_size}, max positions '
          f'{c.max_position_embeddings})')
