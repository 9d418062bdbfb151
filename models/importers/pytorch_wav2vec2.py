"""Loads PyTorch wav2vec 2.0 weights into ``models.wav2vec2``: transformers' or fairseq's names.

Accepted state dicts:

* transformers ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` (``wav2vec2.encoder.layers.0.
  attention.q_proj.weight``, ...), the positional convolution's weight norm either as
  ``parametrizations.weight.original0/1`` (current PyTorch) or ``weight_g/weight_v``;
* fairseq ``Wav2Vec2Model`` pretraining checkpoints (``encoder.layers.0.self_attn.q_proj.weight``,
  ``post_extract_proj``, ``quantizer.vars``, ``final_proj``, ...) and ``wav2vec_ctc``
  fine-tuned ones (``w2v_encoder.w2v_model.*``, ``w2v_encoder.proj``): their keys are renamed to
  transformers' first (the table of transformers' own conversion script,
  ``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py``).

``encoder_only=True`` loads only the shared ``wav2vec2.*`` part and leaves the heads as they
are: a pretrained checkpoint into a CTC model (its quantizer and projections are dropped, the
CTC head keeps its fresh initialisation), the way fine-tuning starts.

Every key and shape is checked before anything is written (``pytorch.copy_state_dict``): a
mismatch raises one ValueError listing all problems and leaves the model unchanged.
tests/test_wav2vec2_parity.py builds transformers' models with random weights and requires
matching outputs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from models import wav2vec2 as w2v
from models.importers import pytorch


@dataclasses.dataclass(frozen=True)
class _Target(pytorch.Target):
  """A Target whose PyTorch shape is given (reshaped attention and 1-D conv layouts)."""
  shape: tuple[int, ...] = ()

  @property
  def torch_shape(self) -> tuple[int, ...]:
    return self.shape


def _target(key: str, variable, transform: Callable[[np.ndarray], np.ndarray],
            shape: tuple[int, ...]) -> _Target:
  return _Target(key, variable, transform, tuple(int(d) for d in shape))


def _same(variable, key):
  return _target(key, variable, pytorch.same, variable.shape)


def _linear(module, prefix):
  kernel = module.kernel
  return [_target(f'{prefix}.weight', kernel, pytorch.linear_kernel, kernel.shape[::-1]),
          _same(module.bias, f'{prefix}.bias')]


def _conv1d(module, prefix, bias: bool):
  kernel = module.conv.kernel  # (k, in, out) <- PyTorch (out, in, k)
  k, cin, cout = kernel.shape
  out = [_target(f'{prefix}.conv.weight', kernel, lambda w: np.transpose(w, (2, 1, 0)),
                 (cout, cin, k))]
  if bias:
    out.append(_same(module.conv.bias, f'{prefix}.conv.bias'))
  return out


def _norm(norm, prefix):
  return [_same(norm.scale, f'{prefix}.weight'), _same(norm.bias, f'{prefix}.bias')]


def _attention(attention, prefix):
  out = []
  for name, torch_name in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
    dense = getattr(attention, name)
    hidden, heads, head_dim = dense.kernel.shape
    out.append(_target(f'{prefix}.{torch_name}.weight', dense.kernel,
                       lambda w, s=(hidden, heads, head_dim): w.T.reshape(s), (hidden, hidden)))
    out.append(_target(f'{prefix}.{torch_name}.bias', dense.bias,
                       lambda b, s=(heads, head_dim): b.reshape(s), (hidden,)))
  heads, head_dim, hidden = attention.out.kernel.shape
  out.append(_target(f'{prefix}.out_proj.weight', attention.out.kernel,
                     lambda w: w.T.reshape(heads, head_dim, hidden), (hidden, hidden)))
  out.append(_same(attention.out.bias, f'{prefix}.out_proj.bias'))
  return out


def _encoder_targets(model: w2v.Wav2Vec2Model, pos_conv_names: tuple[str, str]) -> list[_Target]:
  c = model.config
  p = 'wav2vec2'
  targets = []
  for i, layer in enumerate(model.feature_encoder.layers):
    prefix = f'{p}.feature_extractor.conv_layers.{i}'
    targets += _conv1d(layer, prefix, c.conv_bias)
    if layer.norm is not None:
      targets += _norm(layer.norm, f'{prefix}.layer_norm')
  targets += _norm(model.feature_projection.norm, f'{p}.feature_projection.layer_norm')
  targets += _linear(model.feature_projection.projection, f'{p}.feature_projection.projection')
  targets.append(_same(model.masked_spec_embed, f'{p}.masked_spec_embed'))
  enc = model.encoder
  pos = enc.pos_conv
  k, cin, cout = pos.weight_v.shape
  g_name, v_name = pos_conv_names
  targets.append(_target(f'{p}.encoder.pos_conv_embed.conv.{g_name}', pos.weight_g,
                         lambda g: g.reshape(-1), (1, 1, k)))
  targets.append(_target(f'{p}.encoder.pos_conv_embed.conv.{v_name}', pos.weight_v,
                         lambda v: np.transpose(v, (2, 1, 0)), (cout, cin, k)))
  targets.append(_same(pos.bias, f'{p}.encoder.pos_conv_embed.conv.bias'))
  targets += _norm(enc.norm, f'{p}.encoder.layer_norm')
  for i, layer in enumerate(enc.layers):
    prefix = f'{p}.encoder.layers.{i}'
    targets += _attention(layer.attention, f'{prefix}.attention')
    targets += _norm(layer.layer_norm, f'{prefix}.layer_norm')
    targets += _linear(layer.intermediate, f'{prefix}.feed_forward.intermediate_dense')
    targets += _linear(layer.output, f'{prefix}.feed_forward.output_dense')
    targets += _norm(layer.final_layer_norm, f'{prefix}.final_layer_norm')
  return targets


def _head_targets(model) -> list[_Target]:
  if isinstance(model, w2v.Wav2Vec2ForPreTraining):
    q = model.quantizer
    return [
        _target('quantizer.codevectors', q.codevectors, lambda v: v.reshape(v.shape[-2:]),
                (1,) + tuple(q.codevectors.shape)),
        *_linear(q.weight_proj, 'quantizer.weight_proj'),
        *_linear(model.project_hid, 'project_hid'),
        *_linear(model.project_q, 'project_q'),
    ]
  if isinstance(model, w2v.Wav2Vec2ForCTC):
    return _linear(model.lm_head, 'lm_head')
  raise TypeError(f'cannot load wav2vec 2.0 weights into a {type(model).__name__}; expected '
                  'Wav2Vec2ForPreTraining or Wav2Vec2ForCTC')


_PARAMETRIZED = ('parametrizations.weight.original0', 'parametrizations.weight.original1')
_WEIGHT_NORM = ('weight_g', 'weight_v')
_HEAD_PREFIXES = ('quantizer.', 'project_hid.', 'project_q.', 'lm_head.')

# fairseq -> transformers, applied to the key after the w2v_encoder.w2v_model. prefix is gone.
_FAIRSEQ_RENAMES = (
    (r'^feature_extractor\.conv_layers\.(\d+)\.0\.', r'wav2vec2.feature_extractor.conv_layers.\1.conv.'),
    (r'^feature_extractor\.conv_layers\.(\d+)\.2\.1\.', r'wav2vec2.feature_extractor.conv_layers.\1.layer_norm.'),
    (r'^feature_extractor\.conv_layers\.(\d+)\.2\.', r'wav2vec2.feature_extractor.conv_layers.\1.layer_norm.'),
    (r'^layer_norm\.', 'wav2vec2.feature_projection.layer_norm.'),
    (r'^post_extract_proj\.', 'wav2vec2.feature_projection.projection.'),
    (r'^mask_emb$', 'wav2vec2.masked_spec_embed'),
    (r'^encoder\.pos_conv\.0\.', 'wav2vec2.encoder.pos_conv_embed.conv.'),
    (r'^encoder\.layer_norm\.', 'wav2vec2.encoder.layer_norm.'),
    (r'^encoder\.layers\.(\d+)\.self_attn\.', r'wav2vec2.encoder.layers.\1.attention.'),
    (r'^encoder\.layers\.(\d+)\.self_attn_layer_norm\.', r'wav2vec2.encoder.layers.\1.layer_norm.'),
    (r'^encoder\.layers\.(\d+)\.fc1\.', r'wav2vec2.encoder.layers.\1.feed_forward.intermediate_dense.'),
    (r'^encoder\.layers\.(\d+)\.fc2\.', r'wav2vec2.encoder.layers.\1.feed_forward.output_dense.'),
    (r'^encoder\.layers\.(\d+)\.final_layer_norm\.', r'wav2vec2.encoder.layers.\1.final_layer_norm.'),
    (r'^quantizer\.vars$', 'quantizer.codevectors'),
    (r'^quantizer\.weight_proj\.', 'quantizer.weight_proj.'),
    (r'^project_q\.', 'project_q.'),
    (r'^final_proj\.', 'project_hid.'),
)


def is_fairseq(state_dict: Mapping[str, Any]) -> bool:
  return any(k.startswith('w2v_encoder.') or k in ('post_extract_proj.weight', 'mask_emb')
             for k in state_dict)


def fairseq_to_transformers(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames a fairseq wav2vec2 / wav2vec_ctc state dict to transformers' keys.

  A key with no counterpart is an error naming it (with the keys that were understood), so a
  checkpoint of another architecture (HuBERT, data2vec) is not half-loaded.
  """
  renamed, unknown = {}, []
  for key, value in state_dict.items():
    if key == 'w2v_encoder.proj.weight' or key == 'w2v_encoder.proj.bias':
      renamed['lm_head.' + key.rsplit('.', 1)[1]] = value
      continue
    inner = key[len('w2v_encoder.w2v_model.'):] if key.startswith('w2v_encoder.w2v_model.') else key
    for pattern, replacement in _FAIRSEQ_RENAMES:
      new, n = re.subn(pattern, replacement, inner)
      if n:
        renamed[new] = value
        break
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f'fairseq wav2vec 2.0 state dict: {len(unknown)} keys have no counterpart '
                     f'in transformers\' Wav2Vec2 ({", ".join(unknown[:8])}'
                     f'{", ..." if len(unknown) > 8 else ""}); is it another architecture?')
  return renamed


def load_pytorch_wav2vec2(model, state_dict: Mapping[str, Any], *, encoder_only: bool = False):
  """Copies a PyTorch wav2vec 2.0 state dict into `model` (Wav2Vec2ForPreTraining or
  Wav2Vec2ForCTC) in place and returns it. See the module docstring for accepted names."""
  if is_fairseq(state_dict):
    state_dict = fairseq_to_transformers(state_dict)
  state_dict = dict(state_dict)
  if not any(k.startswith('wav2vec2.') for k in state_dict):
    # A bare Wav2Vec2Model (transformers' base model class, no heads).
    state_dict = {('wav2vec2.' + k if not k.startswith(_HEAD_PREFIXES) else k): v
                  for k, v in state_dict.items()}
  pos_prefix = 'wav2vec2.encoder.pos_conv_embed.conv.'
  names = (_PARAMETRIZED if f'{pos_prefix}{_PARAMETRIZED[0]}' in state_dict else _WEIGHT_NORM)
  targets = _encoder_targets(model.wav2vec2, names)
  if encoder_only:
    ignore = lambda key: key.startswith(_HEAD_PREFIXES)
  else:
    targets += _head_targets(model)
    own = {t.key for t in targets}
    # A fine-tuned checkpoint may keep pretraining heads; a CTC model has no place for them.
    ignore = lambda key: (isinstance(model, w2v.Wav2Vec2ForCTC) and key not in own
                          and key.startswith(_HEAD_PREFIXES[:3]))
  pytorch.copy_state_dict(targets, state_dict, ignore=ignore,
                          what=f'{type(model).__name__} ({_describe(model.config)})')
  return model


def load_pytorch_wav2vec2_file(model, path: str | os.PathLike, *, encoder_only: bool = False):
  """:func:`load_pytorch_wav2vec2` from a ``.bin``/``.pt``/``.safetensors`` file (fairseq
  checkpoints keep the weights under ``'model'``, which `read_state_dict` unwraps)."""
  return load_pytorch_wav2vec2(model, pytorch.read_state_dict(path), encoder_only=encoder_only)


def _describe(c: w2v.Wav2Vec2Config) -> str:
  return (f'{c.num_layers} layers, hidden {c.hidden_size}, feature_norm={c.feature_norm!r}, '
          f'stable_layer_norm={c.stable_layer_norm}')


def config_from_transformers(hf_config: Any) -> w2v.Wav2Vec2Config:
  """The podium ``Wav2Vec2Config`` of a transformers ``Wav2Vec2Config``; settings podium does
  not implement (adapters, other activations) are refused by name."""
  if getattr(hf_config, 'add_adapter', False) or getattr(hf_config, 'adapter_attn_dim', None):
    raise ValueError('transformers Wav2Vec2Config with adapters (add_adapter / adapter_attn_dim) '
                     'has no podium counterpart')
  for name in ('hidden_act', 'feat_extract_activation'):
    if getattr(hf_config, name) != 'gelu':
      raise ValueError(f'transformers Wav2Vec2Config {name}={getattr(hf_config, name)!r}; podium '
                       "implements 'gelu' (exact), what every published wav2vec 2.0 uses")
  return w2v.Wav2Vec2Config(
      conv_dim=tuple(hf_config.conv_dim), conv_kernel=tuple(hf_config.conv_kernel),
      conv_stride=tuple(hf_config.conv_stride), conv_bias=bool(hf_config.conv_bias),
      feature_norm=hf_config.feat_extract_norm,
      stable_layer_norm=bool(hf_config.do_stable_layer_norm),
      hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
      num_heads=hf_config.num_attention_heads, intermediate_size=hf_config.intermediate_size,
      layer_norm_eps=hf_config.layer_norm_eps,
      num_conv_pos_embeddings=hf_config.num_conv_pos_embeddings,
      num_conv_pos_embedding_groups=hf_config.num_conv_pos_embedding_groups,
      num_codevector_groups=hf_config.num_codevector_groups,
      num_codevectors_per_group=hf_config.num_codevectors_per_group,
      codevector_dim=hf_config.codevector_dim, proj_codevector_dim=hf_config.proj_codevector_dim,
      contrastive_temperature=hf_config.contrastive_logits_temperature,
      hidden_dropout=hf_config.hidden_dropout, attention_dropout=hf_config.attention_dropout,
      activation_dropout=hf_config.activation_dropout,
      feat_proj_dropout=hf_config.feat_proj_dropout,
      feat_quantizer_dropout=hf_config.feat_quantizer_dropout,
      final_dropout=hf_config.final_dropout, layerdrop=hf_config.layerdrop,
      vocab_size=hf_config.vocab_size or 32, initializer_range=hf_config.initializer_range)
