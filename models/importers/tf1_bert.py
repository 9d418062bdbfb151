"""Loads a TF1 BERT checkpoint (google-research/bert, MLPerf's ``model.ckpt-28252``).

MLPerf BERT starts every run from the same checkpoint, written by the TF1 reference
(``bert/encoder/layer_0/attention/self/query/kernel``, ...; the full table is in
``bert_layout``). It is read with ``tf.train.load_checkpoint``, tensor by tensor, after
every name and shape has been checked. Besides the model the checkpoint holds optimizer
state (``<variable>/adam_m``, ``/adam_v``, ``/LAMB``, ...) and ``global_step``; those are
skipped. Any other variable, a missing one, or a wrong shape is one error naming them all.

With the real checkpoint, BERT-large and MLPerf's 10,000-example eval set, masked-LM
accuracy before any training is 0.34085 (the MLPerf reference's check that the checkpoint
and the data were prepared right); ``podium run bert`` evaluates and prints it at start.

``bert_config.json`` beside the checkpoint uses TF's names; TF BERT's ``"gelu"`` is the tanh
approximation, so it maps to ``hidden_act='gelu_tanh'``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from models.bert import BertConfig, BertForPreTraining
from models.importers import bert_layout

WORD_EMBEDDINGS = 'bert/embeddings/word_embeddings'
# Bookkeeping that is no model variable: the step, Adam/LAMB power accumulators.
_IGNORED = re.compile(r'^(global_step|beta[12]_power(_\d+)?|.*/beta[12]_power(_\d+)?)$')


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


def checkpoint_prefix(path: str | os.PathLike) -> str:
  """The checkpoint prefix of ``path``: a prefix (``model.ckpt-28252``), one of its files,
  or a directory (its latest checkpoint, or its only ``.index`` file)."""
  tf = _tf()
  path = os.fspath(path)
  for suffix in ('.index', '.meta'):
    if path.endswith(suffix):
      path = path[:-len(suffix)]
  path = re.sub(r'\.data-\d+-of-\d+$', '', path)
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    indexes = sorted(tf.io.gfile.glob(os.path.join(path, '*.index')))
    if len(indexes) == 1:
      return indexes[0][:-len('.index')]
    raise FileNotFoundError(
        f'{path} is a directory with {len(indexes)} TF checkpoints ' +
        (f'({", ".join(os.path.basename(i) for i in indexes)}); name one, e.g. '
         f'{indexes[0][:-len(".index")]}' if indexes else
         '(no *.index file): give the checkpoint prefix, e.g. .../model.ckpt-28252'))
  if not tf.io.gfile.exists(path + '.index'):
    raise FileNotFoundError(f'TF checkpoint {path!r} not found: expected {path}.index and '
                            f'{path}.data-00000-of-00001 (give the prefix, e.g. '
                            '.../model.ckpt-28252)')
  return path


def variable_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
  """Every variable of the checkpoint and its shape, without reading any tensor."""
  reader = _tf().train.load_checkpoint(checkpoint_prefix(path))
  return {name: tuple(int(d) for d in shape)
          for name, shape in reader.get_variable_to_shape_map().items()}


def vocab_size(path: str | os.PathLike) -> int:
  """Rows of the word-embedding table: the vocabulary the checkpoint was trained with."""
  shapes = variable_shapes(path)
  if WORD_EMBEDDINGS not in shapes:
    raise bert_layout.CheckpointMismatch(
        f'{checkpoint_prefix(path)} has no {WORD_EMBEDDINGS}: not a BERT checkpoint '
        f'(first variables: {", ".join(sorted(shapes)[:5]) or "none"})')
  return shapes[WORD_EMBEDDINGS][0]


def _is_optimizer_state(name: str, variables: Mapping[str, Any]) -> bool:
  if _IGNORED.match(name):
    return True
  # Slots are named after their variable: `<variable>/adam_m`, `<variable>/LAMB_1`, ...
  parts = name.split('/')
  return any('/'.join(parts[:i]) in variables for i in range(1, len(parts)))


def load_tf1_bert(model: BertForPreTraining, path: str | os.PathLike, *,
                  check_only: bool = False) -> BertForPreTraining:
  """Copies the checkpoint at ``path`` into ``model`` in place and returns it.

  Raises ``CheckpointMismatch`` (a ValueError) naming every missing, unexpected or misshapen
  variable, with the model unchanged; FileNotFoundError when there is no checkpoint.
  ``check_only`` checks names and shapes without reading a tensor (``model`` may then be
  abstract, from ``nnx.eval_shape``).
  """
  prefix = checkpoint_prefix(path)
  reader = _tf().train.load_checkpoint(prefix)
  shapes = {name: tuple(int(d) for d in shape)
            for name, shape in reader.get_variable_to_shape_map().items()}
  targets = bert_layout.entries(model, 'tf1')
  known = {t.name for t in targets}
  unexpected = sorted(n for n in shapes if n not in known and not _is_optimizer_state(n, shapes))
  layers = sorted({int(m[1]) for n in shapes if (m := re.match(r'bert/encoder/layer_(\d+)/', n))})
  hint = ''
  if layers and len(layers) != model.config.num_layers:
    hint = (f'  (the checkpoint has {len(layers)} encoder layers, the model '
            f'{model.config.num_layers}: set model.num_layers={len(layers)})')
  bert_layout.copy_checked(targets, shapes, reader.get_tensor, unexpected=unexpected,
                           what=bert_layout.describe_model(model),
                           source=f'TF1 checkpoint {prefix}', hint=hint, check_only=check_only)
  return model


def config_from_json(path: str | os.PathLike) -> BertConfig:
  """A podium ``BertConfig`` from google-research/bert's ``bert_config.json``."""
  with open(path) as f:
    values: dict[str, Any] = json.load(f)
  act = values.get('hidden_act', 'gelu')
  return BertConfig(
      vocab_size=values['vocab_size'], hidden_size=values['hidden_size'],
      num_layers=values['num_hidden_layers'], num_heads=values['num_attention_heads'],
      intermediate_size=values['intermediate_size'],
      max_position_embeddings=values['max_position_embeddings'],
      type_vocab_size=values.get('type_vocab_size', 2),
      hidden_act={'gelu': 'gelu_tanh'}.get(act, act),
      hidden_dropout=values.get('hidden_dropout_prob', 0.1),
      attention_dropout=values.get('attention_probs_dropout_prob', 0.1),
      initializer_range=values.get('initializer_range', 0.02))


def save_tf1_bert(model: BertForPreTraining, prefix: str | os.PathLike, *, step: int = 0) -> str:
  """Writes ``model`` as a TF1 checkpoint under the reference's names; returns its prefix.

  The inverse of `load_tf1_bert` (no optimizer slots): for handing podium weights to the TF
  reference, and for tests.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  tf = _tf()
  graph = tf.Graph()
  with graph.as_default():
    for slot in bert_layout.bert_slots(model):
      value = np.asarray(slot.variable[...], np.float32)
      entry = next(e for e in bert_layout.entries_for([slot], 'tf1'))
      value = value.T if slot.kind == 'nsp_weights' else value.reshape(entry.source_shape)
      tf.compat.v1.get_variable(slot.tf1, initializer=tf.constant(value))
    step_var = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(step_var.assign(step))
      return saver.save(session, os.fspath(prefix), global_step=step)
