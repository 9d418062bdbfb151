"""Importing MLPerf's TF1 checkpoint layout (model.ckpt-28252) into podium's BERT.

A small checkpoint is written with TF1's Saver under the real variable names and layouts
(`bert/encoder/layer_0/attention/self/query/kernel` [hidden, hidden], NSP
`cls/seq_relationship/output_weights` [2, hidden], ...) plus what the real one carries
besides the model (Adam/LAMB slots, global_step). The imported model must hold exactly
those values, and compute what transformers' BertForPreTraining computes from the same
values (mapped by this test's own TF -> PyTorch table, the conversion transformers used to
ship as load_tf_weights_in_bert), with TF BERT's tanh GELU.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from flax import nnx

from models import bert as bert_lib
from models.importers import bert_layout, tf1_bert

CONFIG = bert_lib.BertConfig(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4,
                             intermediate_size=48, max_position_embeddings=40)


def tf1_variables(config, seed=0):
  """Name -> value in TF1 BERT's layout for a model of `config` (random values)."""
  rng = np.random.default_rng(seed)
  h, f = config.hidden_size, config.intermediate_size

  def r(*shape):
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)

  v = {'bert/embeddings/word_embeddings': r(config.vocab_size, h),
       'bert/embeddings/token_type_embeddings': r(2, h),
       'bert/embeddings/position_embeddings': r(config.max_position_embeddings, h),
       'bert/embeddings/LayerNorm/gamma': 1 + r(h), 'bert/embeddings/LayerNorm/beta': r(h)}
  for i in range(config.num_layers):
    p = f'bert/encoder/layer_{i}'
    for name in ('query', 'key', 'value'):
      v[f'{p}/attention/self/{name}/kernel'] = r(h, h)
      v[f'{p}/attention/self/{name}/bias'] = r(h)
    v[f'{p}/attention/output/dense/kernel'] = r(h, h)
    v[f'{p}/attention/output/dense/bias'] = r(h)
    v[f'{p}/attention/output/LayerNorm/gamma'] = 1 + r(h)
    v[f'{p}/attention/output/LayerNorm/beta'] = r(h)
    v[f'{p}/intermediate/dense/kernel'] = r(h, f)
    v[f'{p}/intermediate/dense/bias'] = r(f)
    v[f'{p}/output/dense/kernel'] = r(f, h)
    v[f'{p}/output/dense/bias'] = r(h)
    v[f'{p}/output/LayerNorm/gamma'] = 1 + r(h)
    v[f'{p}/output/LayerNorm/beta'] = r(h)
  v.update({'bert/pooler/dense/kernel': r(h, h), 'bert/pooler/dense/bias': r(h),
            'cls/predictions/transform/dense/kernel': r(h, h),
            'cls/predictions/transform/dense/bias': r(h),
            'cls/predictions/transform/LayerNorm/gamma': 1 + r(h),
            'cls/predictions/transform/LayerNorm/beta': r(h),
            'cls/predictions/output_bias': r(config.vocab_size),
            'cls/seq_relationship/output_weights': r(2, h),
            'cls/seq_relationship/output_bias': r(2)})
  return v


def write_tf1_checkpoint(directory, values, *, optimizer_slots=True, step=28252):
  """What run_pretraining.py's Saver writes: the variables, their optimizer slots, global_step."""
  graph = tf.Graph()
  with graph.as_default():
    variables = []
    for name, value in values.items():
      variables.append(tf.compat.v1.get_variable(name, initializer=tf.constant(value)))
      if optimizer_slots:
        for slot in ('adam_m', 'adam_v'):
          variables.append(tf.compat.v1.get_variable(f'{name}/{slot}',
                                                     initializer=tf.zeros_like(value)))
    tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(tf.compat.v1.assign(tf.compat.v1.train.get_global_step(), step))
      return saver.save(session, os.path.join(str(directory), 'model.ckpt'), global_step=step)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  values = tf1_variables(CONFIG)
  prefix = write_tf1_checkpoint(tmp_path_factory.mktemp('ckpt'), values)
  return prefix, values


def test_real_names_and_layout_import_exactly(checkpoint):
  prefix, values = checkpoint
  assert prefix.endswith('model.ckpt-28252')
  assert 'bert/encoder/layer_0/attention/self/query/kernel/adam_m' in tf1_bert.variable_shapes(prefix)
  model = bert_lib.BertForPreTraining(CONFIG, rngs=nnx.Rngs(0))
  tf1_bert.load_tf1_bert(model, prefix)
  n, d = CONFIG.num_heads, CONFIG.head_dim
  attention = model.layers[1].attention
  np.testing.assert_array_equal(np.asarray(attention.query.kernel[...]),
                                values['bert/encoder/layer_1/attention/self/query/kernel'].reshape(32, n, d))
  np.testing.assert_array_equal(np.asarray(attention.value.bias[...]),
                                values['bert/encoder/layer_1/attention/self/value/bias'].reshape(n, d))
  np.testing.assert_array_equal(np.asarray(attention.output.kernel[...]),
                                values['bert/encoder/layer_1/attention/output/dense/kernel'].reshape(n, d, 32))
  np.testing.assert_array_equal(np.asarray(model.nsp.kernel[...]),
                                values['cls/seq_relationship/output_weights'].T)
  np.testing.assert_array_equal(np.asarray(model.mlm_bias[...]), values['cls/predictions/output_bias'])
  np.testing.assert_array_equal(np.asarray(model.embeddings.norm.scale[...]),
                                values['bert/embeddings/LayerNorm/gamma'])
  # Every model variable is named in the table, every checkpoint model variable is used.
  slots = bert_layout.bert_slots(model)
  assert {s.tf1 for s in slots} == set(values)
  assert len(slots) == len(jax_leaves(model))
  # A directory finds its checkpoint.
  assert tf1_bert.checkpoint_prefix(os.path.dirname(prefix)) == prefix
  assert tf1_bert.vocab_size(prefix) == CONFIG.vocab_size


def jax_leaves(model):
  import jax
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def _tf_to_transformers(values, config):
  """TF1 names -> BertForPreTraining keys (transposing dense kernels)."""
  sd = {}
  for name, value in values.items():
    key = name.replace('/', '.').replace('layer_', 'layer.')
    key = key.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta', 'LayerNorm.bias')
    if key.endswith('.kernel'):
      key, value = key[:-len('kernel')] + 'weight', value.T
    if key.endswith('_embeddings'):
      key += '.weight'
    key = {'cls.predictions.output_bias': 'cls.predictions.bias',
           'cls.seq_relationship.output_weights': 'cls.seq_relationship.weight',
           'cls.seq_relationship.output_bias': 'cls.seq_relationship.bias'}.get(key, key)
    sd[key] = torch.tensor(np.ascontiguousarray(value))
  sd['cls.predictions.decoder.weight'] = sd['bert.embeddings.word_embeddings.weight']
  sd['cls.predictions.decoder.bias'] = sd['cls.predictions.bias']
  return sd


def test_imported_model_computes_what_transformers_computes_from_the_same_values(checkpoint):
  prefix, values = checkpoint
  model = bert_lib.BertForPreTraining(CONFIG, rngs=nnx.Rngs(0))
  tf1_bert.load_tf1_bert(model, prefix)
  hf = transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=40, hidden_act='gelu_new')).eval()
  missing, unexpected = hf.load_state_dict(_tf_to_transformers(values, CONFIG), strict=False)
  assert not unexpected and all('position_ids' in k for k in missing), (missing, unexpected)
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 101, (2, 20))
  mask = np.ones((2, 20), np.int64)
  mask[1, 12:] = 0
  segments = (np.arange(20) >= 9).astype(np.int64)[None].repeat(2, 0) * mask
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(segments))
  mlm, nsp = model(ids, mask, segments)
  assert np.abs(np.asarray(mlm) - out.prediction_logits.numpy()).max() <= 1e-4
  assert np.abs(np.asarray(nsp) - out.seq_relationship_logits.numpy()).max() <= 1e-4


def test_missing_and_misshapen_variables_are_named(tmp_path):
  values = tf1_variables(CONFIG)
  del values['bert/encoder/layer_1/output/LayerNorm/beta']
  del values['cls/seq_relationship/output_bias']
  prefix = write_tf1_checkpoint(tmp_path, values, optimizer_slots=False)
  model = bert_lib.BertForPreTraining(CONFIG, rngs=nnx.Rngs(0))
  before = np.asarray(model.layers[0].intermediate.kernel[...]).copy()
  with pytest.raises(bert_layout.CheckpointMismatch) as error:
    tf1_bert.load_tf1_bert(model, prefix)
  message = str(error.value)
  assert 'missing variables (2)' in message
  assert 'bert/encoder/layer_1/output/LayerNorm/beta  expected shape [32]' in message
  assert 'cls/seq_relationship/output_bias  expected shape [2]' in message
  np.testing.assert_array_equal(np.asarray(model.layers[0].intermediate.kernel[...]), before)


def test_another_architecture_is_named_with_a_hint(checkpoint):
  prefix, _ = checkpoint
  one_layer = bert_lib.BertForPreTraining(
      bert_lib.BertConfig(**{**CONFIG.__dict__, 'num_layers': 1, 'vocab_size': 100}),
      rngs=nnx.Rngs(0))
  with pytest.raises(bert_layout.CheckpointMismatch) as error:
    tf1_bert.load_tf1_bert(one_layer, prefix)
  message = str(error.value)
  assert 'bert/embeddings/word_embeddings  expected [100, 32], found [101, 32]' in message
  assert 'unexpected variables' in message and 'bert/encoder/layer_1/output/dense/kernel' in message
  assert 'adam_m' not in message and 'global_step' not in message  # optimizer state is skipped
  assert 'set model.num_layers=2' in message


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='model.ckpt-28252'):
    tf1_bert.checkpoint_prefix(tmp_path / 'model.ckpt-1')
  with pytest.raises(FileNotFoundError, match=r'no \*.index file'):
    tf1_bert.checkpoint_prefix(tmp_path)


def test_bert_config_json_maps_tf_gelu_to_the_tanh_form(tmp_path):
  path = tmp_path / 'bert_config.json'
  path.write_text('{"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", '
                  '"hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02, '
                  '"intermediate_size": 4096, "max_position_embeddings": 512, '
                  '"num_attention_heads": 16, "num_hidden_layers": 24, "type_vocab_size": 2, '
                  '"vocab_size": 30522}')
  assert tf1_bert.config_from_json(path) == bert_lib.BERT_CONFIGS['bert_large']
