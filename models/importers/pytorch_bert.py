"""Loads a Hugging Face ``BertForPreTraining`` state dict into ``models.bert``.

Keys are transformers' (``bert.encoder.layer.{i}.attention.self.query.weight``, ...; the
table is in ``bert_layout``). The decoder of the masked-LM head is tied to the word
embeddings in both models: ``cls.predictions.decoder.weight`` / ``.bias``, when present,
must equal ``bert.embeddings.word_embeddings.weight`` / ``cls.predictions.bias`` (an untied
checkpoint cannot be represented and is refused). tests/test_bert_parity.py builds
transformers' model with random weights and requires the same logits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.bert import BertConfig, BertForPreTraining
from models.importers import bert_layout
from models.importers.pytorch import read_state_dict, to_numpy

# Buffers and tied copies with no parameter of their own.
_TIED = {'cls.predictions.decoder.weight': 'bert.embeddings.word_embeddings.weight',
         'cls.predictions.decoder.bias': 'cls.predictions.bias'}
_IGNORED_SUFFIXES = ('position_ids', 'num_batches_tracked')


def config_from_transformers(hf_config: Any) -> BertConfig:
  """The podium ``BertConfig`` of a transformers ``BertConfig`` (activation names mapped)."""
  act = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
         'relu': 'relu'}.get(hf_config.hidden_act)
  if act is None:
    raise ValueError(f'transformers hidden_act={hf_config.hidden_act!r} has no podium '
                     'counterpart; valid: gelu, gelu_new, gelu_pytorch_tanh, relu')
  return BertConfig(
      vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
      num_layers=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads,
      intermediate_size=hf_config.intermediate_size,
      max_position_embeddings=hf_config.max_position_embeddings,
      type_vocab_size=hf_config.type_vocab_size, hidden_act=act,
      layer_norm_eps=hf_config.layer_norm_eps,
      hidden_dropout=hf_config.hidden_dropout_prob,
      attention_dropout=hf_config.attention_probs_dropout_prob,
      initializer_range=hf_config.initializer_range)


def load_pytorch_bert(model: BertForPreTraining, state_dict: Mapping[str, Any]) -> BertForPreTraining:
  """Copies a ``BertForPreTraining`` state dict into ``model`` in place and returns it.

  Any missing, unexpected or misshapen key raises one ``CheckpointMismatch`` (a ValueError)
  listing them all; the model is then unchanged.
  """
  targets = bert_layout.entries(model, 'torch')
  known = {t.name for t in targets}
  arrays = {k: to_numpy(v) for k, v in state_dict.items()
            if not k.endswith(_IGNORED_SUFFIXES)}
  for tied, owner in _TIED.items():
    if tied in arrays and owner in arrays:
      if arrays[tied].shape != arrays[owner].shape or not np.array_equal(arrays[tied], arrays[owner]):
        raise bert_layout.CheckpointMismatch(
            f'{tied} differs from {owner}: this checkpoint has an untied masked-LM decoder, '
            'but BERT ties it to the word embeddings')
  unexpected = sorted(k for k in arrays if k not in known and k not in _TIED)
  bert_layout.copy_checked(
      targets, {k: v.shape for k, v in arrays.items()}, arrays.__getitem__,
      unexpected=unexpected, what=bert_layout.describe_model(model),
      source='PyTorch BertForPreTraining state dict')
  return model


def load_pytorch_bert_file(model: BertForPreTraining, path: str | os.PathLike) -> BertForPreTraining:
  """:func:`load_pytorch_bert` from a ``.bin``/``.pt`` or ``.safetensors`` file."""
  return load_pytorch_bert(model, read_state_dict(path))
