"""BERT against transformers' PyTorch ``BertForPreTraining`` with random weights.

The importer must reproduce the masked-LM prediction logits and the NSP logits (max abs
difference <= 1e-4 in float32) with padding in the batch, for both activations (exact
GELU, Hugging Face's 'gelu', and the tanh form TF BERT and MLPerf use, its 'gelu_new').
"""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from models import bert as bert_lib
from models.importers import bert_layout, pytorch_bert

TOL = 1e-4


def _hf_model(hidden_act, seed=0, **overrides):
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=40, type_vocab_size=2,
      hidden_act=hidden_act, **overrides)
  model = transformers.BertForPreTraining(config).eval()
  # Random (not initial) values everywhere: zero biases and unit LayerNorms would hide
  # a bias or scale copied into the wrong place.
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model


def _inputs(batch=3, length=24, vocab=97, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, 15:] = 0  # padded examples
  mask[2, 7:] = 0
  segments = np.zeros((batch, length), np.int64)
  segments[:, 10:] = 1
  return ids, mask, segments * mask


# One activation in `make test` (~90 s on 2 cores); both in `make test-all`.
@pytest.mark.parametrize('hidden_act', ['gelu', pytest.param('gelu_new', marks=pytest.mark.slow)])
def test_imported_weights_reproduce_transformers_logits(hidden_act):
  hf = _hf_model(hidden_act)
  config = pytorch_bert.config_from_transformers(hf.config)
  model = bert_lib.BertForPreTraining(config, rngs=nnx.Rngs(0))
  pytorch_bert.load_pytorch_bert(model, hf.state_dict())
  ids, mask, segments = _inputs()
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(segments))
  mlm, nsp = model(ids, mask, segments)  # every position, like transformers
  mlm_diff = np.abs(np.asarray(mlm) - out.prediction_logits.numpy())
  # transformers' padded queries attend to padding keys as well (its mask only hides keys),
  # as ours does: every position is comparable.
  assert mlm_diff.max() <= TOL, mlm_diff.max()
  nsp_diff = np.abs(np.asarray(nsp) - out.seq_relationship_logits.numpy()).max()
  assert nsp_diff <= TOL, nsp_diff
  # The gathered head (masked positions only) is the same computation.
  positions = np.array([[1, 5, 0], [2, 3, 14], [0, 6, 6]])
  gathered, _ = model(ids, mask, segments, positions)
  np.testing.assert_allclose(np.asarray(gathered),
                             np.take_along_axis(np.asarray(mlm), positions[..., None], 1),
                             atol=1e-5)


def test_activation_names_map_to_the_same_functions():
  """TF BERT's and MLPerf's 'gelu' is the tanh form; Hugging Face names it 'gelu_new'."""
  for hf_name, ours in (('gelu', 'gelu'), ('gelu_new', 'gelu_tanh'), ('relu', 'relu')):
    hf = transformers.BertConfig(hidden_act=hf_name)
    assert pytorch_bert.config_from_transformers(hf).hidden_act == ours
  with pytest.raises(ValueError, match='valid: gelu, gelu_new'):
    pytorch_bert.config_from_transformers(transformers.BertConfig(hidden_act='silu'))


def test_missing_unexpected_and_misshapen_keys_are_all_named():
  hf = _hf_model('gelu')
  config = pytorch_bert.config_from_transformers(hf.config)
  model = bert_lib.BertForPreTraining(config, rngs=nnx.Rngs(0))
  before = np.asarray(model.embeddings.word.embedding[...]).copy()
  state = dict(hf.state_dict())
  del state['bert.encoder.layer.1.output.dense.bias']
  state['bert.encoder.layer.2.output.dense.bias'] = torch.zeros(32)
  state['bert.pooler.dense.weight'] = torch.zeros(32, 31)
  with pytest.raises(bert_layout.CheckpointMismatch) as error:
    pytorch_bert.load_pytorch_bert(model, state)
  message = str(error.value)
  assert 'missing variables (1)' in message and 'layer.1.output.dense.bias' in message
  assert 'unexpected variables (1)' in message and 'layer.2.output.dense.bias' in message
  assert 'bert.pooler.dense.weight  expected [32, 32], found [32, 31]' in message
  np.testing.assert_array_equal(np.asarray(model.embeddings.word.embedding[...]), before)


def test_an_untied_decoder_is_refused():
  hf = _hf_model('gelu')
  model = bert_lib.BertForPreTraining(pytorch_bert.config_from_transformers(hf.config),
                                      rngs=nnx.Rngs(0))
  state = {k: v.clone() for k, v in hf.state_dict().items()}
  state['cls.predictions.decoder.weight'] += 1.0
  with pytest.raises(bert_layout.CheckpointMismatch, match='untied'):
    pytorch_bert.load_pytorch_bert(model, state)


def test_fused_attention_call_matches_the_einsum_path_on_padded_rows():
  """model.attention='cudnn' hands q, k, v and the key lengths to jax.nn.dot_product_attention;
  the same call with XLA's implementation must give the einsum path's context (padding at the
  end, as BERT's records have it). The cuDNN kernel itself needs an NVIDIA GPU."""
  import jax
  import jax.numpy as jnp
  config = bert_lib.BertConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                               intermediate_size=64, max_position_embeddings=16,
                               hidden_dropout=0.0, attention_dropout=0.0)
  model = bert_lib.BertForPreTraining(config, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 64, (3, 16)), jnp.int32)
  mask = jnp.asarray(np.arange(16)[None] < np.array([[16], [9], [4]]), jnp.int32)
  segments = jnp.zeros_like(ids)
  expected = model.encode(ids, mask, segments)
  for layer in model.layers:
    layer.attention.implementation = 'xla_fused'  # the fused call, on XLA
  original = bert_lib.fused_attention
  try:
    bert_lib.fused_attention = lambda q, k, v, lengths, implementation: original(
        q, k, v, lengths, implementation='xla')
    fused = model.encode(ids, mask, segments)
  finally:
    bert_lib.fused_attention = original
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(expected)[real], atol=2e-5)
  jax.block_until_ready(fused)


def test_cudnn_attention_refuses_attention_dropout():
  with pytest.raises(ValueError, match="attention='cudnn' has no attention dropout"):
    bert_lib.BertConfig(attention='cudnn')
  assert bert_lib.BertConfig(attention='cudnn', attention_dropout=0.0).attention == 'cudnn'
