"""wav2vec 2.0 (Baevski et al. 2020) in Flax NNX: pretraining on raw audio, CTC fine-tuning.

The model is fairseq's ``Wav2Vec2Model`` as Hugging Face ports it (``Wav2Vec2ForPreTraining``,
``Wav2Vec2ForCTC``), so published weights of either load (``models.importers.pytorch_wav2vec2``)
and reproduce their outputs:

* a feature encoder of 7 temporal convolutions over 16 kHz samples (kernels 10,3,3,3,3,2,2,
  strides 5,2,2,2,2,2,2: one frame per 20 ms). BASE (``feature_norm='group'``) normalises the
  first layer's channels over time (GroupNorm with one group per channel); LARGE
  (``feature_norm='layer'``) puts a LayerNorm over channels after every layer;
* a LayerNorm and a projection to the Transformer width, where masked frames are replaced by a
  learned vector (``masked_spec_embed``);
* a convolutional relative positional embedding (one grouped, weight-normalised convolution
  of width 128, added to the input) and a Transformer encoder: post-LN layers for BASE,
  pre-LN layers with a final LayerNorm for LARGE (``stable_layer_norm``);
* for pretraining, a Gumbel-softmax product quantizer (G groups of V codewords) over the
  *unmasked* LayerNormed features, two projections to the contrastive space, and the
  contrastive task: the masked frame's context vector must pick its quantized target among
  K distractors from other masked frames of the same utterance (cosine similarity / 0.1);
* for fine-tuning, a linear CTC head over characters.

Functions, not modules, make the random inputs of pretraining (``span_mask``,
``sample_negatives``), so a parity test can hand the same mask and negatives to both
implementations, and a train step derives them on device from its key.

The compute dtype (``dtype``, bfloat16 on TPU) covers convolutions and matmuls; norms, the
softmaxes, the quantizer's logits, the contrastive logits and the CTC logits are float32.

Parameter tree (logical axis names in brackets)::

  wav2vec2.feature_encoder.layers[i].conv.kernel [None, conv_in, conv_out] (.bias [conv_out])
  wav2vec2.feature_encoder.layers[i].norm   (layer 0 only for 'group'; every layer for 'layer')
  wav2vec2.feature_projection.norm [conv_out]   .projection.kernel [conv_out, embed]
  wav2vec2.masked_spec_embed [embed]
  wav2vec2.encoder.pos_conv.weight_v [None, None, embed] .weight_g [None] .bias [embed]
  wav2vec2.encoder.norm [embed]
  wav2vec2.encoder.layers[i].attention.{query,key,value}.kernel [embed, heads, kv]
  wav2vec2.encoder.layers[i].attention.out.kernel [heads, kv, embed]
  wav2vec2.encoder.layers[i].layer_norm, .final_layer_norm [embed]
  wav2vec2.encoder.layers[i].intermediate.kernel [embed, mlp]   .output.kernel [mlp, embed]
  quantizer.weight_proj.kernel [conv_out, None]   quantizer.codevectors [None, None]
  project_hid.kernel [embed, None]   project_q.kernel [None, None]        (pretraining)
  lm_head.kernel [embed, vocab]                                            (CTC)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from models import layers

FEATURE_NORMS = ('group', 'layer')
# Additive attention bias on padded keys: exp(-1e9) is 0 in float32 with no risk of -inf - -inf.
MASK_VALUE = -1e9
COSINE_EPS = 1e-8  # torch.cosine_similarity's
# fairseq's and transformers' log(p + 1e-7) in the perplexity: a codeword whose softmax
# probability underflows to 0 would otherwise give the diversity loss an infinite gradient
# (log 0) and the step NaN (seen at step 949 of a 3,000-step CPU run).
PERPLEXITY_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """The shape of a wav2vec 2.0 model; the defaults are BASE (fairseq ``wav2vec2_base``).

  Dropout names are Hugging Face's; fairseq calls ``hidden_dropout`` dropout,
  ``feat_proj_dropout`` dropout_input, ``feat_quantizer_dropout`` dropout_features and
  ``layerdrop`` encoder_layerdrop.
  """

  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  feature_norm: str = 'group'
  stable_layer_norm: bool = False
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  layer_norm_eps: float = 1e-5
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  num_codevector_groups: int = 2
  num_codevectors_per_group: int = 320
  codevector_dim: int = 256
  proj_codevector_dim: int = 256
  contrastive_temperature: float = 0.1
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.0
  feat_proj_dropout: float = 0.1
  feat_quantizer_dropout: float = 0.1
  final_dropout: float = 0.0
  layerdrop: float = 0.05
  vocab_size: int = 32
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.feature_norm not in FEATURE_NORMS:
      raise ValueError(f'Wav2Vec2Config feature_norm={self.feature_norm!r}; valid: '
                       f"{', '.join(FEATURE_NORMS)} ('group': BASE, 'layer': LARGE)")
    if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0:
      raise ValueError(f'Wav2Vec2Config conv_dim {self.conv_dim}, conv_kernel {self.conv_kernel} '
                       f'and conv_stride {self.conv_stride} need one entry per layer each')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'Wav2Vec2Config hidden_size={self.hidden_size} is not divisible by '
                       f'num_heads={self.num_heads}')
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f'Wav2Vec2Config hidden_size={self.hidden_size} is not divisible by '
                       f'num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}')
    if self.codevector_dim % self.num_codevector_groups:
      raise ValueError(f'Wav2Vec2Config codevector_dim={self.codevector_dim} is not divisible by '
                       f'num_codevector_groups={self.num_codevector_groups}')
    for name in ('hidden_dropout', 'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
                 'feat_quantizer_dropout', 'final_dropout', 'layerdrop'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'Wav2Vec2Config {name}={getattr(self, name)} must be in [0, 1)')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def num_codevectors(self) -> int:
    return self.num_codevector_groups * self.num_codevectors_per_group

  @property
  def samples_per_frame(self) -> int:
    return math.prod(self.conv_stride)

  def num_frames(self, num_samples: int) -> int:
    """Frames the feature encoder makes of `num_samples` samples (a Python int)."""
    n = int(num_samples)
    for kernel, stride in zip(self.conv_kernel, self.conv_stride):
      n = (n - kernel) // stride + 1
    return max(n, 0)

  def frame_lengths(self, lengths: jax.Array) -> jax.Array:
    """Valid frames per utterance from valid samples (PyTorch's conv output length)."""
    n = jnp.asarray(lengths, jnp.int32)
    for kernel, stride in zip(self.conv_kernel, self.conv_stride):
      n = (n - kernel) // stride + 1
    return jnp.maximum(n, 0)

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> 'Wav2Vec2Config':
    """From a mapping with these field names (lists become tuples); unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f'unknown Wav2Vec2Config fields {unknown}; valid: {sorted(fields)}')
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# BASE and LARGE as the paper and fairseq define them (LARGE as in wav2vec2_large_librivox:
# LayerNorm feature encoder with conv biases, pre-LN Transformer, 768-d contrastive space).
WAV2VEC2_CONFIGS = {
    'base': Wav2Vec2Config(),
    'large': Wav2Vec2Config(
        feature_norm='layer', stable_layer_norm=True, conv_bias=True, hidden_size=1024,
        num_layers=24, num_heads=16, intermediate_size=4096, codevector_dim=768,
        proj_codevector_dim=768, hidden_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, layerdrop=0.0),
    # podium's CPU model: LARGE's structure (LayerNorm feature encoder with conv biases,
    # pre-LN Transformer; G=2 x V=320 codebook, 20 ms frames) at a width that trains in
    # minutes on two cores. BASE's post-LN / GroupNorm structure at this size sat at the
    # contrastive plateau log(K + 1) (targets and context collapsed to one direction: mean
    # cosine 0.93 / 0.80 after 50 steps); LARGE's gets off it. The last convolution keeps
    # 512 channels: the quantizer's logits then have the published models' scale.
    'tiny': Wav2Vec2Config(
        feature_norm='layer', stable_layer_norm=True, conv_bias=True,
        conv_dim=(64,) * 6 + (512,), hidden_size=128, num_layers=3, num_heads=4,
        intermediate_size=256, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
        codevector_dim=64, proj_codevector_dim=64, layerdrop=0.0),
}


def gelu(x):
  """The exact (erf) GELU: fairseq's and Hugging Face's 'gelu'."""
  return jax.nn.gelu(x, approximate=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
  """Identity forward, gradient times `scale` backward (fairseq's GradMultiply)."""
  return x


def _scale_gradient_fwd(x, scale):
  return x, None


def _scale_gradient_bwd(scale, _, g):
  return (g * jnp.asarray(scale, g.dtype),)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def _dropout(x: jax.Array, rate: float, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
  return layers.dropout(x, rate, train=train, rngs=rngs, model='wav2vec 2.0')


def _layer_norm(features: int, epsilon: float, param_dtype, axis: str | None, rngs) -> nnx.LayerNorm:
  """LayerNorm in float32 with a two-pass variance (PyTorch's), parameters named `(axis,)`."""
  return nnx.LayerNorm(
      features, epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype,
      use_fast_variance=False,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)),
      rngs=rngs)


@dataclasses.dataclass(frozen=True)
class _Options:
  config: Wav2Vec2Config
  dtype: Any
  param_dtype: Any
  precision: jax.lax.PrecisionLike

  @property
  def init(self):
    return nnx.initializers.normal(self.config.initializer_range)

  def dense(self, cin, cout, axes, *, kernel_init=None, dtype=None, rngs):
    return layers.dense(cin, cout, axes=axes, kernel_init=kernel_init or self.init,
                        dtype=dtype or self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, rngs=rngs)

  def norm(self, features, axis='embed', *, rngs):
    return _layer_norm(features, self.config.layer_norm_eps, self.param_dtype, axis, rngs)


# PyTorch's nn.Linear default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what
# Hugging Face gives the two contrastive projections.
torch_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# kaiming_normal_ (fan_in, ReLU gain): Hugging Face's and fairseq's conv initialisation.
kaiming_normal = nnx.initializers.variance_scaling(2.0, 'fan_in', 'normal')


# -- feature encoder --------------------------------------------------------------------------

class ConvLayer(nnx.Module):
  """Conv1d (no padding), optional norm, GELU."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: str | None,
               opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.conv = layers.conv(cin, cout, (kernel,), strides=(stride,), padding='VALID',
                            use_bias=c.conv_bias, kernel_init=kaiming_normal, dtype=opts.dtype,
                            param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)
    if norm == 'group':
      self.norm = layers.group_norm(cout, cout, epsilon=1e-5, param_dtype=opts.param_dtype,
                                    rngs=rngs)
    elif norm == 'layer':
      self.norm = _layer_norm(cout, 1e-5, opts.param_dtype, 'conv_out', rngs)
    else:
      self.norm = None

  def __call__(self, x):
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
    return gelu(x)


class FeatureEncoder(nnx.Module):
  """Raw samples [B, S] -> frames [B, T, conv_dim[-1]] (one per 320 samples for the defaults)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    dims = (1,) + tuple(c.conv_dim)
    norms = ([c.feature_norm] + [None] * (len(c.conv_dim) - 1) if c.feature_norm == 'group'
             else ['layer'] * len(c.conv_dim))
    self.layers = nnx.List([
        ConvLayer(dims[i], dims[i + 1], c.conv_kernel[i], c.conv_stride[i], norms[i], opts,
                  rngs=rngs) for i in range(len(c.conv_dim))])

  def __call__(self, audio):
    x = audio.astype(self.dtype)[..., None]
    for layer in self.layers:
      x = layer(x)
      x = layers.with_logical_constraint(x, ('batch', 'length', 'conv_out'))
    return x


class FeatureProjection(nnx.Module):
  """LayerNorm over channels (kept: the quantizer's input), projection to the model width."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.dropout = c.feat_proj_dropout
    self.norm = opts.norm(c.conv_dim[-1], 'conv_out', rngs=rngs)
    self.projection = layers.dense(
        c.conv_dim[-1], c.hidden_size, axes=('conv_out', 'embed'), kernel_init=torch_linear_init,
        dtype=opts.dtype, param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)

  def __call__(self, features, *, train, rngs):
    normed = self.norm(features.astype(jnp.float32))
    projected = self.projection(normed.astype(self.dtype))
    return _dropout(projected, self.dropout, train, rngs), normed


# -- Transformer encoder ----------------------------------------------------------------------

class PositionalConv(nnx.Module):
  """Grouped Conv1d over time with weight norm along the kernel axis (PyTorch ``dim=2``), 'same'
  output length (an even kernel drops the last frame, as fairseq's SamePad), then GELU."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.precision = opts.precision
    self.kernel = c.num_conv_pos_embeddings
    self.groups = c.num_conv_pos_embedding_groups
    shape = (self.kernel, c.hidden_size // self.groups, c.hidden_size)
    std = 2.0 * math.sqrt(1.0 / (self.kernel * c.hidden_size))
    v = std * jax.random.normal(rngs.params(), shape, opts.param_dtype)
    self.weight_v = nnx.Param(v, out_sharding=(None, None, 'embed'))
    self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(v * v, axis=(1, 2))), out_sharding=(None,))
    self.bias = nnx.Param(jnp.zeros((c.hidden_size,), opts.param_dtype), out_sharding=('embed',))

  def __call__(self, x):
    v = self.weight_v[...].astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
    kernel = (v * (self.weight_g[...].astype(jnp.float32)[:, None, None] / norm)).astype(self.dtype)
    left = self.kernel // 2
    right = left - 1 if self.kernel % 2 == 0 else left
    # XLA:CPU's own gradient of this grouped kernel is ~10x slower (layers' docstring).
    y = layers.grouped_conv_general_dilated(
        x.astype(self.dtype), kernel, window_strides=(1,), padding=[(left, right)],
        dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=self.groups,
        precision=self.precision)
    return gelu(y + self.bias[...].astype(self.dtype))


class SelfAttention(nnx.Module):
  """Multi-head self-attention; heads are a kernel axis of their own (tensor parallelism)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.head_dim = c.head_dim
    self.attention_dropout = c.attention_dropout
    shape = (c.hidden_size, c.num_heads, c.head_dim)

    def heads_in():
      return layers.einsum_dense(
          'btd,dnh->btnh', shape, shape[1:], kernel_axes=('embed', 'heads', 'kv'),
          bias_axes=('heads', 'kv'), kernel_init=opts.init, dtype=opts.dtype,
          param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)

    self.query = heads_in()
    self.key = heads_in()
    self.value = heads_in()
    self.out = layers.einsum_dense(
        'btnh,nhd->btd', (c.num_heads, c.head_dim, c.hidden_size), (c.hidden_size,),
        kernel_axes=('heads', 'kv', 'embed'), bias_axes=('embed',), kernel_init=opts.init,
        dtype=opts.dtype, param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)

  def __call__(self, x, bias, *, train, rngs):
    names = ('batch', 'length', 'heads', 'kv')
    q = layers.with_logical_constraint(self.query(x), names)
    k = layers.with_logical_constraint(self.key(x), names)
    v = layers.with_logical_constraint(self.value(x), names)
    scores = jnp.einsum('bqnh,bknh->bnqk', q, k, preferred_element_type=jnp.float32)
    scores = scores * (self.head_dim ** -0.5) + bias
    probs = _dropout(jax.nn.softmax(scores, axis=-1), self.attention_dropout, train, rngs)
    context = jnp.einsum('bnqk,bknh->bqnh', probs.astype(self.dtype), v)
    return self.out(layers.with_logical_constraint(context, names))


class EncoderLayer(nnx.Module):
  """Attention and feed-forward blocks; post-LN (BASE) or pre-LN (``stable_layer_norm``)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.pre_norm = c.stable_layer_norm
    self.dropout = c.hidden_dropout
    self.activation_dropout = c.activation_dropout
    self.attention = SelfAttention(opts, rngs=rngs)
    self.layer_norm = opts.norm(c.hidden_size, rngs=rngs)
    self.intermediate = opts.dense(c.hidden_size, c.intermediate_size, ('embed', 'mlp'), rngs=rngs)
    self.output = opts.dense(c.intermediate_size, c.hidden_size, ('mlp', 'embed'), rngs=rngs)
    self.final_layer_norm = opts.norm(c.hidden_size, rngs=rngs)

  def _norm(self, norm, x):
    return norm(x.astype(jnp.float32)).astype(self.dtype)

  def _feed_forward(self, x, train, rngs):
    h = gelu(self.intermediate(x))
    h = layers.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = _dropout(h, self.activation_dropout, train, rngs)
    return _dropout(self.output(h), self.dropout, train, rngs)

  def __call__(self, x, bias, *, train, rngs):
    if self.pre_norm:
      h = self.attention(self._norm(self.layer_norm, x), bias, train=train, rngs=rngs)
      x = x + _dropout(h, self.dropout, train, rngs)
      x = x + self._feed_forward(self._norm(self.final_layer_norm, x), train, rngs)
    else:
      h = self.attention(x, bias, train=train, rngs=rngs)
      x = self._norm(self.layer_norm, x + _dropout(h, self.dropout, train, rngs))
      x = self._norm(self.final_layer_norm, x + self._feed_forward(x, train, rngs))
    return layers.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Encoder(nnx.Module):
  """Positional convolution, then the Transformer layers (with LayerDrop in training)."""

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.dtype = opts.dtype
    self.pre_norm = c.stable_layer_norm
    self.dropout = c.hidden_dropout
    self.layerdrop = c.layerdrop
    self.pos_conv = PositionalConv(opts, rngs=rngs)
    self.norm = opts.norm(c.hidden_size, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(opts, rngs=rngs) for _ in range(c.num_layers)])

  def __call__(self, x, frame_mask, *, train, rngs):
    x = jnp.where(frame_mask[..., None], x, jnp.zeros_like(x))
    bias = jnp.where(frame_mask, 0.0, MASK_VALUE).astype(jnp.float32)[:, None, None, :]
    x = x + self.pos_conv(x)
    if not self.pre_norm:
      x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
    x = _dropout(x, self.dropout, train, rngs)
    for layer in self.layers:
      y = layer(x, bias, train=train, rngs=rngs)
      if train and self.layerdrop > 0.0:
        # LayerDrop (Fan et al. 2019): the whole batch skips the layer with this probability.
        skip = jax.random.bernoulli(rngs.layerdrop(), self.layerdrop)
        y = jnp.where(skip, x, y)
      x = y
    if self.pre_norm:
      x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
    return x


@struct.dataclass
class EncoderOutput:
  hidden: jax.Array            # [B, T, hidden]: the last layer's states (compute dtype)
  normed_features: jax.Array   # [B, T, C] float32: the quantizer's input (before masking)
  features: jax.Array          # [B, T, C]: the feature encoder's output (for its L2 penalty)
  frame_mask: jax.Array        # [B, T] bool: frames inside the utterance


class Wav2Vec2Model(nnx.Module):
  """Feature encoder, projection, masking, Transformer: ``Wav2Vec2Model`` of fairseq / HF."""

  def __init__(self, config: Wav2Vec2Config, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, precision: jax.lax.PrecisionLike = None,
               rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    opts = _Options(config, dtype, param_dtype, precision)
    self.feature_encoder = FeatureEncoder(opts, rngs=rngs)
    self.feature_projection = FeatureProjection(opts, rngs=rngs)
    self.masked_spec_embed = nnx.Param(
        jax.random.uniform(rngs.params(), (config.hidden_size,), param_dtype),
        out_sharding=('embed',))
    self.encoder = Encoder(opts, rngs=rngs)

  def __call__(self, audio: jax.Array, lengths: jax.Array | None = None,
               mask_time: jax.Array | None = None, mask_channels: jax.Array | None = None, *,
               feature_grad_mult: float = 1.0, train: bool = False,
               rngs: nnx.Rngs | None = None) -> EncoderOutput:
    """`audio` [B, S] float; `lengths` [B] valid samples (None: all); `mask_time` [B, T] bool
    frames to replace by ``masked_spec_embed``; `mask_channels` [B, hidden] bool channels to
    zero (fine-tuning's SpecAugment-style channel mask). `feature_grad_mult` scales the
    feature encoder's gradient (fairseq: 0.1 pretraining BASE, 0 fine-tuning: frozen)."""
    features = self.feature_encoder(audio)
    if feature_grad_mult == 0.0:
      features = jax.lax.stop_gradient(features)
    elif feature_grad_mult != 1.0:
      features = scale_gradient(features, float(feature_grad_mult))
    num_frames = features.shape[1]
    if lengths is None:
      frame_mask = jnp.ones(features.shape[:2], bool)
    else:
      frame_lengths = self.config.frame_lengths(lengths)
      frame_mask = jnp.arange(num_frames)[None, :] < frame_lengths[:, None]
    x, normed = self.feature_projection(features, train=train, rngs=rngs)
    if mask_time is not None:
      x = jnp.where(mask_time[..., None], self.masked_spec_embed[...].astype(x.dtype), x)
    if mask_channels is not None:
      x = jnp.where(mask_channels[:, None, :], jnp.zeros_like(x), x)
    x = layers.with_logical_constraint(x, ('batch', 'length', 'embed'))
    hidden = self.encoder(x, frame_mask, train=train, rngs=rngs)
    return EncoderOutput(hidden=hidden, normed_features=normed, features=features,
                         frame_mask=frame_mask)


# -- quantizer and pretraining ----------------------------------------------------------------

@struct.dataclass
class Quantized:
  vectors: jax.Array      # [B, T, codevector_dim] float32
  codes: jax.Array        # [B, T, G] int32: the chosen codeword of each group
  perplexity: jax.Array   # scalar: sum over groups of exp(entropy of the mean code distribution)


class GumbelVectorQuantizer(nnx.Module):
  """Product quantizer: G groups of V codewords, one chosen per group by a hard Gumbel softmax
  (straight-through) in training, by argmax in eval; the groups' codewords are concatenated.

  The perplexity is that of the codeword distribution averaged over the masked frames: in
  training the softmax of the logits (no noise), in eval the hard choices (fairseq's
  ``prob_perplexity``; its maximum is G * V).
  """

  def __init__(self, opts: _Options, *, rngs: nnx.Rngs):
    c = opts.config
    self.groups = c.num_codevector_groups
    self.entries = c.num_codevectors_per_group
    self.weight_proj = layers.dense(
        c.conv_dim[-1], c.num_codevectors, axes=('conv_out', None),
        kernel_init=nnx.initializers.normal(1.0), dtype=jnp.float32,
        param_dtype=opts.param_dtype, precision=opts.precision, rngs=rngs)
    self.codevectors = nnx.Param(
        jax.random.uniform(rngs.params(), (c.num_codevectors, c.codevector_dim // self.groups),
                           opts.param_dtype), out_sharding=(None, None))

  def __call__(self, features, *, temperature, mask=None, train=False, key=None) -> Quantized:
    batch, length = features.shape[:2]
    logits = self.weight_proj(features.astype(jnp.float32)).reshape(
        batch, length, self.groups, self.entries)
    if train:
      if key is None:
        raise ValueError('the quantizer in train mode needs a key for the Gumbel noise')
      noisy = (logits + jax.random.gumbel(key, logits.shape, jnp.float32)) / temperature
      soft = jax.nn.softmax(noisy, axis=-1)
      codes = jnp.argmax(noisy, axis=-1)
      hard = jax.nn.one_hot(codes, self.entries, dtype=jnp.float32)
      # Straight-through: the forward value is exactly one-hot, the gradient the soft sample's.
      probs = hard + (soft - jax.lax.stop_gradient(soft))
      marginal_of = jax.nn.softmax(logits, axis=-1)
    else:
      codes = jnp.argmax(logits, axis=-1)
      probs = jax.nn.one_hot(codes, self.entries, dtype=jnp.float32)
      marginal_of = probs
    weight = (jnp.ones((batch, length), jnp.float32) if mask is None
              else mask.astype(jnp.float32))
    marginal = (jnp.einsum('btgv,bt->gv', marginal_of, weight)
                / jnp.maximum(jnp.sum(weight), 1.0))
    entropy = -jnp.sum(marginal * jnp.log(marginal + PERPLEXITY_EPS), axis=-1)
    perplexity = jnp.sum(jnp.exp(entropy))
    book = self.codevectors[...].astype(jnp.float32).reshape(self.groups, self.entries, -1)
    vectors = jnp.einsum('btgv,gvd->btgd', probs, book).reshape(batch, length, -1)
    return Quantized(vectors=vectors, codes=codes.astype(jnp.int32), perplexity=perplexity)


@struct.dataclass
class PretrainingOutput:
  hidden: jax.Array                 # [B, T, hidden] last encoder states
  projected_states: jax.Array       # [B, T, P] float32: project_hid(hidden)
  projected_quantized: jax.Array    # [B, T, P] float32: project_q(quantized)
  codes: jax.Array                  # [B, T, G] int32
  perplexity: jax.Array             # scalar
  features_penalty: jax.Array       # scalar: mean squared feature-encoder output (valid frames)
  frame_mask: jax.Array             # [B, T] bool
  logits: jax.Array | None = None   # [B, T, 1 + K] float32, target at 0; -inf where a
                                    # distractor has the target's codes
  contrastive_loss: jax.Array | None = None  # scalar: summed over masked frames
  diversity_loss: jax.Array | None = None    # scalar: (GV - perplexity) / GV
  num_masked: jax.Array | None = None        # scalar float: masked valid frames
  correct: jax.Array | None = None           # scalar float: masked frames whose target
                                             # scores strictly above every distractor


class Wav2Vec2ForPreTraining(nnx.Module):
  """wav2vec 2.0 with its quantizer and contrastive heads."""

  def __init__(self, config: Wav2Vec2Config, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, precision: jax.lax.PrecisionLike = None,
               rngs: nnx.Rngs):
    self.config = config
    opts = _Options(config, dtype, param_dtype, precision)
    self.wav2vec2 = Wav2Vec2Model(config, dtype=dtype, param_dtype=param_dtype,
                                  precision=precision, rngs=rngs)
    self.quantizer = GumbelVectorQuantizer(opts, rngs=rngs)
    self.project_hid = opts.dense(config.hidden_size, config.proj_codevector_dim, ('embed', None),
                                  kernel_init=torch_linear_init, dtype=jnp.float32, rngs=rngs)
    self.project_q = opts.dense(config.codevector_dim, config.proj_codevector_dim, (None, None),
                                kernel_init=torch_linear_init, dtype=jnp.float32, rngs=rngs)

  def __call__(self, audio: jax.Array, lengths: jax.Array | None = None,
               mask_time: jax.Array | None = None, negatives: jax.Array | None = None, *,
               temperature: float | jax.Array = 2.0, feature_grad_mult: float = 1.0,
               train: bool = False, rngs: nnx.Rngs | None = None) -> PretrainingOutput:
    """`mask_time` [B, T] bool: masked frames (targets of the contrastive task); `negatives`
    [B, T, K] int: for each masked frame, K frame indices of the same utterance whose
    quantized vectors are its distractors (see `sample_negatives`). Without them only the
    projections and the perplexity are computed."""
    c = self.config
    encoded = self.wav2vec2(audio, lengths, mask_time, feature_grad_mult=feature_grad_mult,
                            train=train, rngs=rngs)
    frame_mask = encoded.frame_mask
    projected = self.project_hid(encoded.hidden.astype(jnp.float32))
    quantizer_input = _dropout(encoded.normed_features, c.feat_quantizer_dropout, train, rngs)
    targets_mask = frame_mask if mask_time is None else (mask_time & frame_mask)
    quantized = self.quantizer(quantizer_input, temperature=temperature, mask=targets_mask,
                               train=train, key=rngs.gumbel() if train else None)
    projected_q = self.project_q(quantized.vectors)
    features = encoded.features.astype(jnp.float32)
    valid = frame_mask.astype(jnp.float32)[..., None]
    penalty = jnp.sum(features * features * valid) / jnp.maximum(
        jnp.sum(valid) * features.shape[-1], 1.0)
    output = PretrainingOutput(
        hidden=encoded.hidden, projected_states=projected, projected_quantized=projected_q,
        codes=quantized.codes, perplexity=quantized.perplexity, features_penalty=penalty,
        frame_mask=frame_mask)
    if negatives is None or mask_time is None:
      return output
    logits = contrastive_logits(projected, projected_q, quantized.codes, negatives,
                                c.contrastive_temperature)
    weight = targets_mask.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    contrastive = -jnp.sum(log_probs[..., 0] * weight)
    best_distractor = jnp.max(logits[..., 1:], axis=-1)
    # Ties count as wrong: a distractor with the target's codes scores exactly the target's
    # cosine, so a collapsed codebook scores 0, not 1 (fairseq's accuracy counts it right).
    tied = _distractor_codes_match(quantized.codes, negatives).any(-1)
    correct = jnp.sum(weight * ((logits[..., 0] > best_distractor) & ~tied))
    diversity = (c.num_codevectors - quantized.perplexity) / c.num_codevectors
    return output.replace(logits=logits, contrastive_loss=contrastive, diversity_loss=diversity,
                          num_masked=jnp.sum(weight), correct=correct)


def _distractor_codes_match(codes: jax.Array, negatives: jax.Array) -> jax.Array:
  """[B, T, K] bool: distractor k of frame t has exactly frame t's codes."""
  batch, length, k = negatives.shape
  gathered = jnp.take_along_axis(codes, negatives.reshape(batch, length * k, 1), axis=1)
  gathered = gathered.reshape(batch, length, k, -1)
  return jnp.all(gathered == codes[:, :, None, :], axis=-1)


def contrastive_logits(context: jax.Array, targets: jax.Array, codes: jax.Array,
                       negatives: jax.Array, temperature: float) -> jax.Array:
  """[B, T, 1 + K] cosine similarities / temperature of each context vector with its own
  target (index 0) and its K distractors; -inf where a distractor's codes equal the target's.

  The cosines of every (context, target) pair of an utterance are one [T, T] matmul, and the
  distractors are gathered from it: no [B, T, K, D] gather of vectors.
  """
  def unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), COSINE_EPS)
  context, targets = unit(context.astype(jnp.float32)), unit(targets.astype(jnp.float32))
  similarity = jnp.einsum('btd,bsd->bts', context, targets, precision=jax.lax.Precision.HIGHEST)
  positive = jnp.diagonal(similarity, axis1=1, axis2=2)[..., None]
  distractors = jnp.take_along_axis(similarity, negatives.astype(jnp.int32), axis=2)
  identical = _distractor_codes_match(codes, negatives)
  distractors = jnp.where(identical, -jnp.inf, distractors / temperature)
  return jnp.concatenate([positive / temperature, distractors], axis=-1)


# -- CTC --------------------------------------------------------------------------------------

class Wav2Vec2ForCTC(nnx.Module):
  """wav2vec 2.0 with a linear CTC head over characters (blank = index 0)."""

  def __init__(self, config: Wav2Vec2Config, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, precision: jax.lax.PrecisionLike = None,
               rngs: nnx.Rngs):
    self.config = config
    opts = _Options(config, dtype, param_dtype, precision)
    self.wav2vec2 = Wav2Vec2Model(config, dtype=dtype, param_dtype=param_dtype,
                                  precision=precision, rngs=rngs)
    self.lm_head = opts.dense(config.hidden_size, config.vocab_size, ('embed', 'vocab'),
                              dtype=jnp.float32, rngs=rngs)

  def __call__(self, audio: jax.Array, lengths: jax.Array | None = None,
               mask_time: jax.Array | None = None, mask_channels: jax.Array | None = None, *,
               feature_grad_mult: float = 0.0, freeze_encoder: jax.Array | bool = False,
               train: bool = False, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """(float32 logits [B, T, vocab], frame mask [B, T]). `freeze_encoder` (a traced bool is
    fine) stops the gradient below the head: fairseq's ``freeze_finetune_updates``."""
    encoded = self.wav2vec2(audio, lengths, mask_time, mask_channels,
                            feature_grad_mult=feature_grad_mult, train=train, rngs=rngs)
    hidden = encoded.hidden
    if freeze_encoder is not False:
      hidden = jnp.where(freeze_encoder, jax.lax.stop_gradient(hidden), hidden)
    hidden = _dropout(hidden, self.config.final_dropout, train, rngs)
    logits = self.lm_head(hidden.astype(jnp.float32))
    return layers.with_logical_constraint(logits, ('batch', 'length', 'vocab')), encoded.frame_mask


# -- the random inputs of training ------------------------------------------------------------

def span_mask(key: jax.Array, lengths: jax.Array, size: int, *, mask_prob: float,
              mask_length: int, min_masks: int = 0) -> jax.Array:
  """[B, size] bool: random spans of `mask_length` (fairseq's ``compute_mask_indices``).

  Each row of `lengths[b]` valid steps gets ``int(mask_prob * length / mask_length + u)``
  spans (``u ~ U[0, 1)``: probabilistic rounding), at least `min_masks`, with distinct start
  steps drawn uniformly from those whose span fits; spans may overlap. With ``mask_prob=0.65``
  and ``mask_length=10`` that is the paper's "p = 0.065 of all time steps are starting
  indices", masking about 49% of the steps.
  """
  lengths = jnp.asarray(lengths, jnp.int32)
  batch = lengths.shape[0]
  u_key, score_key = jax.random.split(key)
  u = jax.random.uniform(u_key, (batch,))
  num = jnp.floor(mask_prob * lengths / mask_length + u).astype(jnp.int32)
  num = jnp.maximum(num, min_masks)
  num = jnp.where(num * mask_length > size, size // mask_length, num)
  num = jnp.minimum(num, jnp.maximum(lengths - (mask_length - 1), 0))
  steps = jnp.arange(size)
  startable = steps[None, :] < (lengths - mask_length + 1)[:, None]
  scores = jnp.where(startable, jax.random.uniform(score_key, (batch, size)), -1.0)
  rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
  starts = (rank < num[:, None]) & startable
  counts = jnp.cumsum(starts.astype(jnp.int32), axis=-1)
  before = jnp.pad(counts, ((0, 0), (mask_length, 0)))[:, :size]
  return (counts - before) > 0


def sample_negatives(key: jax.Array, mask: jax.Array, num_negatives: int) -> jax.Array:
  """[B, T, K] int32: for each masked frame, K frames drawn uniformly with replacement from the
  *other* masked frames of its utterance (fairseq / Hugging Face ``_sample_negative_indices``).
  Unmasked frames get their own index (unused)."""
  mask = jnp.asarray(mask, bool)
  batch, length = mask.shape
  count = jnp.sum(mask, axis=-1).astype(jnp.int32)
  rank = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
  high = jnp.maximum(count - 1, 1)[:, None, None]
  draw = jax.random.uniform(key, (batch, length, num_negatives))
  picked = jnp.minimum(jnp.floor(draw * high).astype(jnp.int32), high - 1)
  picked = picked + (picked >= rank[..., None]).astype(jnp.int32)   # skip the frame itself
  order = jnp.argsort(~mask, axis=-1, stable=True)                    # masked frames first
  frames = jnp.take_along_axis(order, picked.reshape(batch, -1), axis=-1).reshape(picked.shape)
  own = jnp.broadcast_to(jnp.arange(length)[None, :, None], picked.shape)
  return jnp.where(mask[..., None], frames, own).astype(jnp.int32)


def gumbel_temperature(step: jax.Array, *, max_temperature: float, min_temperature: float,
                       decay: float) -> jax.Array:
  """``max(max_t * decay ** step, min_t)``: fairseq's latent_temp annealing, per update."""
  # exp(step * log(decay)) with the log taken in float64: float32's decay ** step is off by
  # ~0.5% after 100k steps (0.999995 is not exact in float32).
  step = jnp.asarray(step, jnp.float32)
  return jnp.maximum(max_temperature * jnp.exp(step * math.log(decay)), min_temperature)


def pretraining_model(config: Wav2Vec2Config | str, *, dtype: Any = jnp.float32, rngs: nnx.Rngs,
                      **overrides: Any) -> Wav2Vec2ForPreTraining:
  return Wav2Vec2ForPreTraining(_config(config, overrides), dtype=dtype, rngs=rngs)


def ctc_model(config: Wav2Vec2Config | str, *, dtype: Any = jnp.float32, rngs: nnx.Rngs,
              **overrides: Any) -> Wav2Vec2ForCTC:
  return Wav2Vec2ForCTC(_config(config, overrides), dtype=dtype, rngs=rngs)


def _config(config, overrides) -> Wav2Vec2Config:
  if isinstance(config, str):
    if config not in WAV2VEC2_CONFIGS:
      raise ValueError(f'Unknown wav2vec 2.0 model {config!r}; registered: '
                       f'{sorted(WAV2VEC2_CONFIGS)}')
    config = WAV2VEC2_CONFIGS[config]
  return dataclasses.replace(config, **overrides) if overrides else config
