"""BERT for pretraining in Flax NNX: the MLPerf language-model reference (BERT-large).

The encoder is the original one (Devlin et al. 2018; google-research/bert ``modeling.py``,
which the MLPerf TF reference runs): post-LayerNorm transformer layers, learned absolute
positions, two segment types, an additive attention mask of -10000 on padding. The
pretraining heads are those of ``run_pretraining.py``: a masked-LM head (dense + activation +
LayerNorm, then the word-embedding table as output projection, tied, plus an output bias)
evaluated only at the masked positions, and a next-sentence head on the pooled [CLS] token.

The activation is the one thing the two published implementations disagree on under the
same name: TF BERT's ``gelu`` is the tanh approximation (``'gelu_tanh'`` here, Hugging Face
``'gelu_new'``), Hugging Face's ``'gelu'`` is the exact erf form (``'gelu'`` here). MLPerf's
checkpoint was trained with the tanh form.

Parameter tree (logical axis names in brackets)::

  embeddings.word [vocab, embed]   .position [None, embed]   .token_type [None, embed]
  embeddings.norm.{scale,bias} [embed]
  layers[i].attention.{query,key,value}.kernel [embed, heads, kv], .bias [heads, kv]
  layers[i].attention.output.kernel [heads, kv, embed], .bias [embed]
  layers[i].attention.norm     layers[i].intermediate.kernel [embed, mlp]
  layers[i].output.kernel [mlp, embed]   layers[i].norm
  pooler.kernel [embed, mlp]   mlm_transform.kernel [embed, mlp]   mlm_norm
  mlm_bias [vocab]   nsp.kernel [embed, None], .bias [None]

Heads are a kernel axis of their own, so a tensor-parallel rule (``heads``, ``mlp``,
``vocab`` -> ``tensor``) splits attention by head and the MLP by its hidden units
(Megatron-style) without reshapes here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers

ACTIVATIONS = ('gelu_tanh', 'gelu', 'relu')
# 'xla': scores, softmax and dropout as XLA ops (any device, attention dropout as in MLPerf);
# 'cudnn': cuDNN's fused flash attention on NVIDIA GPUs (jax.nn.dot_product_attention), which
# never writes the [B, N, S, S] scores to memory but has no attention dropout.
ATTENTION = ('xla', 'cudnn')
# TF BERT's additive mask for padding keys; exp(-10000) is 0 in float32, as -inf would be,
# without producing NaN when a whole row is masked.
MASK_VALUE = -10000.0


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The shape of a BERT; the defaults are MLPerf's BERT-large (``bert_config.json``)."""

  vocab_size: int = 30522
  hidden_size: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 4096
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  hidden_act: str = 'gelu_tanh'
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  attention: str = 'xla'

  def __post_init__(self):
    if self.attention not in ATTENTION:
      raise ValueError(f'BertConfig attention={self.attention!r}; valid: {", ".join(ATTENTION)}')
    if self.attention == 'cudnn' and self.attention_dropout:
      raise ValueError(f"BertConfig attention='cudnn' has no attention dropout; set "
                       f'attention_dropout=0.0 (got {self.attention_dropout}) or use '
                       f"attention='xla'")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f'BertConfig hidden_act={self.hidden_act!r}; valid: {", ".join(ACTIVATIONS)} '
                       "(TF BERT's and MLPerf's 'gelu' is 'gelu_tanh'; Hugging Face's 'gelu' is "
                       "'gelu', its 'gelu_new' is 'gelu_tanh')")
    if self.hidden_size % self.num_heads:
      raise ValueError(f'BertConfig hidden_size={self.hidden_size} is not divisible by '
                       f'num_heads={self.num_heads}')
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                 'max_position_embeddings', 'type_vocab_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'BertConfig {name}={getattr(self, name)} must be >= 1')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> 'BertConfig':
    """From a mapping with these field names; unknown keys are an error that names them."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f'unknown BertConfig fields {unknown}; valid: {sorted(fields)}')
    return cls(**values)


BERT_CONFIGS = {
    'bert_large': BertConfig(),
    'bert_base': BertConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}


def activation(name: str):
  if name == 'gelu_tanh':
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == 'gelu':
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == 'relu':
    return jax.nn.relu
  raise ValueError(f'activation {name!r}; valid: {", ".join(ACTIVATIONS)}')


@dataclasses.dataclass(frozen=True)
class _Options:
  config: BertConfig
  dtype: Any
  param_dtype: Any
  precision: jax.lax.PrecisionLike

  @property
  def init(self):
    return nnx.initializers.truncated_normal(self.config.initializer_range)

  def dense(self, cin, cout, axes, *, rngs):
    return layers.dense(cin, cout, axes=axes, kernel_init=self.init, dtype=self.dtype,
                        param_dtype=self.param_dtype, precision=self.precision, rngs=rngs)

  def norm(self, *, rngs):
    return layers.layer_norm(self.config.hidden_size, epsilon=self.config.layer_norm_eps,
                             param_dtype=self.param_dtype, rngs=rngs)


def _dropout(x, rate: float, train: bool, rngs: nnx.Rngs | None):
  return layers.dropout(x, rate, train=train, rngs=rngs, model='BERT')


class Embeddings(nnx.Module):
  """Word + position + segment embeddings, LayerNorm, dropout."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.dropout = c.hidden_dropout
    self.word = layers.embedding(c.vocab_size, c.hidden_size, axes=('vocab', 'embed'),
                                 embedding_init=opts.init, param_dtype=opts.param_dtype, rngs=rngs)
    self.position = layers.embedding(c.max_position_embeddings, c.hidden_size,
                                     axes=(None, 'embed'), embedding_init=opts.init,
                                     param_dtype=opts.param_dtype, rngs=rngs)
    self.token_type = layers.embedding(c.type_vocab_size, c.hidden_size, axes=(None, 'embed'),
                                       embedding_init=opts.init, param_dtype=opts.param_dtype,
                                       rngs=rngs)
    self.norm = opts.norm(rngs=rngs)

  def __call__(self, input_ids, segment_ids, *, train, rngs):
    length = input_ids.shape[1]
    x = (self.word(input_ids) + self.position.embedding[...][:length][None]
         + self.token_type(segment_ids))
    x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
    return _dropout(x, self.dropout, train, rngs)


@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """The padding mask in the two forms the attention implementations take."""
  bias: jax.Array       # [B, 1, 1, S] float32: 0 for real keys, MASK_VALUE for padding
  lengths: jax.Array    # [B] int32: real keys per row (the records pad at the end)

  @classmethod
  def of(cls, input_mask: jax.Array) -> 'AttentionMask':
    return cls((1.0 - input_mask.astype(jnp.float32))[:, None, None, :] * MASK_VALUE,
               jnp.sum(input_mask != 0, axis=-1).astype(jnp.int32))


def fused_attention(q, k, v, lengths, *, implementation: str = 'cudnn'):
  """softmax(q k^T / sqrt(h)) v over the first `lengths` keys of each row, [B, S, N, H].

  One fused kernel on cuDNN (flash attention: the scores stay on chip). Padding is given as
  key lengths, so the input mask must be ones then zeros -- as BERT's records are written;
  with 'xla' the same call runs anywhere (what the tests compare against the einsum path)."""
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                      implementation=implementation)


class SelfAttention(nnx.Module):
  """Multi-head self-attention, output projection, residual, LayerNorm (post-LN)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.head_dim = c.head_dim
    self.dropout = c.hidden_dropout
    self.attention_dropout = c.attention_dropout
    self.implementation = c.attention
    shape = (c.hidden_size, c.num_heads, c.head_dim)

    def heads_in():
      return layers.einsum_dense(
          'bsd,dnh->bsnh', shape, shape[1:], kernel_axes=('embed', 'heads', 'kv'),
          bias_axes=('heads', 'kv'), kernel_init=opts.init, dtype=opts.dtype,
          param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)

    self.query = heads_in()
    self.key = heads_in()
    self.value = heads_in()
    self.output = layers.einsum_dense(
        'bsnh,nhd->bsd', (c.num_heads, c.head_dim, c.hidden_size), (c.hidden_size,),
        kernel_axes=('heads', 'kv', 'embed'), bias_axes=('embed',), kernel_init=opts.init,
        dtype=opts.dtype, param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)
    self.norm = opts.norm(rngs=rngs)

  def __call__(self, x, mask, *, train, rngs):
    names = ('batch', 'length', 'heads', 'kv')
    q = layers.with_logical_constraint(self.query(x), names)
    k = layers.with_logical_constraint(self.key(x), names)
    v = layers.with_logical_constraint(self.value(x), names)
    if self.implementation == 'xla':
      scores = jnp.einsum('bqnh,bknh->bnqk', q, k, preferred_element_type=jnp.float32)
      scores = scores / math.sqrt(self.head_dim) + mask.bias
      probs = _dropout(jax.nn.softmax(scores, axis=-1), self.attention_dropout, train, rngs)
      context = jnp.einsum('bnqk,bknh->bqnh', probs.astype(self.dtype), v)
    else:
      context = fused_attention(q, k, v, mask.lengths, implementation=self.implementation)
    context = layers.with_logical_constraint(context, names)
    y = _dropout(self.output(context), self.dropout, train, rngs)
    return self.norm((y + x).astype(jnp.float32)).astype(self.dtype)


class Layer(nnx.Module):
  """One transformer layer: attention, then the feed-forward block (post-LN)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.dropout = c.hidden_dropout
    self.act = c.hidden_act
    self.attention = SelfAttention(opts, rngs=rngs)
    self.intermediate = opts.dense(c.hidden_size, c.intermediate_size, ('embed', 'mlp'), rngs=rngs)
    self.output = opts.dense(c.intermediate_size, c.hidden_size, ('mlp', 'embed'), rngs=rngs)
    self.norm = opts.norm(rngs=rngs)

  def __call__(self, x, mask, *, train, rngs):
    x = self.attention(x, mask, train=train, rngs=rngs)
    h = activation(self.act)(self.intermediate(x))
    h = layers.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    y = _dropout(self.output(h), self.dropout, train, rngs)
    y = self.norm((y + x).astype(jnp.float32)).astype(self.dtype)
    return layers.with_logical_constraint(y, ('batch', 'length', 'embed'))


class BertForPreTraining(nnx.Module):
  """BERT with its masked-LM and next-sentence heads.

  Call with ``input_ids``, ``input_mask``, ``segment_ids`` (int ``[B, S]``) and
  ``masked_lm_positions`` (int ``[B, P]``; None means every position, for parity checks) and
  get float32 ``(mlm_logits [B, P, vocab], nsp_logits [B, 2])``. Index 0 of the NSP logits
  is "B follows A", 1 is "B is random" (``next_sentence_labels`` of the MLPerf records).

  ``dtype`` is the compute dtype (bfloat16 on TPU); LayerNorm, softmax and both heads' logits
  are computed in float32.
  """

  def __init__(self, config: BertConfig, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, precision: jax.lax.PrecisionLike = None,
               rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    opts = _Options(config, dtype, param_dtype, precision)
    self.embeddings = Embeddings(opts, rngs=rngs)
    self.layers = nnx.List([Layer(opts, rngs=rngs) for _ in range(config.num_layers)])
    self.pooler = opts.dense(config.hidden_size, config.hidden_size, ('embed', 'mlp'), rngs=rngs)
    self.mlm_transform = opts.dense(config.hidden_size, config.hidden_size, ('embed', 'mlp'),
                                    rngs=rngs)
    self.mlm_norm = opts.norm(rngs=rngs)
    self.mlm_bias = nnx.Param(jnp.zeros((config.vocab_size,), param_dtype), out_sharding=('vocab',))
    self.nsp = layers.dense(config.hidden_size, 2, axes=('embed', None), kernel_init=opts.init,
                            dtype=jnp.float32, param_dtype=param_dtype, precision=precision,
                            rngs=rngs)

  def encode(self, input_ids, input_mask, segment_ids, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """The last layer's hidden states ``[B, S, hidden]`` in the compute dtype."""
    if input_ids.shape[1] > self.config.max_position_embeddings:
      raise ValueError(f'sequence length {input_ids.shape[1]} exceeds max_position_embeddings='
                       f'{self.config.max_position_embeddings}')
    mask = AttentionMask.of(input_mask)
    x = self.embeddings(input_ids, segment_ids, train=train, rngs=rngs)
    x = layers.with_logical_constraint(x, ('batch', 'length', 'embed'))
    for layer in self.layers:
      x = layer(x, mask, train=train, rngs=rngs)
    return x

  def __call__(self, input_ids, input_mask, segment_ids, masked_lm_positions=None, *,
               train: bool = False, rngs: nnx.Rngs | None = None):
    x = self.encode(input_ids, input_mask, segment_ids, train=train, rngs=rngs)
    if masked_lm_positions is None:
      gathered = x
    else:
      gathered = jnp.take_along_axis(x, masked_lm_positions[..., None].astype(jnp.int32), axis=1)
    h = activation(self.config.hidden_act)(self.mlm_transform(gathered))
    h = self.mlm_norm(h.astype(jnp.float32))
    mlm_logits = self.embeddings.word.attend(h.astype(self.dtype)).astype(jnp.float32)
    mlm_logits = mlm_logits + self.mlm_bias[...].astype(jnp.float32)
    mlm_logits = layers.with_logical_constraint(mlm_logits, ('batch', None, 'vocab'))
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    nsp_logits = self.nsp(pooled.astype(jnp.float32))
    return mlm_logits, nsp_logits


def bert(config: BertConfig | str, *, dtype: Any = jnp.float32, rngs: nnx.Rngs,
         **overrides: Any) -> BertForPreTraining:
  """Builds a registered BERT (``'bert_large'``, ``'bert_base'``) or one from a config."""
  if isinstance(config, str):
    if config not in BERT_CONFIGS:
      raise ValueError(f'Unknown BERT {config!r}; registered: {sorted(BERT_CONFIGS)}')
    config = BERT_CONFIGS[config]
  if overrides:
    config = dataclasses.replace(config, **overrides)
  return BertForPreTraining(config, dtype=dtype, rngs=rngs)
