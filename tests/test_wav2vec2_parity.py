"""wav2vec 2.0 against transformers' PyTorch models with random weights (f32, within 1e-4).

Both variants: BASE (GroupNorm feature encoder, post-LN Transformer) and LARGE (LayerNorm
feature encoder with conv biases, pre-LN "stable layer norm" Transformer). Pretraining gets the
same span mask and the same distractors on both sides (eval mode: the quantizer's argmax
path); CTC runs on a padded batch with an attention mask. The importer reads transformers'
names (both weight-norm spellings) and fairseq's.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jax.numpy as jnp
from flax import nnx
from transformers.models.wav2vec2 import modeling_wav2vec2 as hf

from models import wav2vec2 as w2v
from models.importers import pytorch_wav2vec2 as importer

TOLERANCE = 1e-4
BATCH, SAMPLES = 3, 9000
VARIANTS = {
    'base': dict(feat_extract_norm='group', do_stable_layer_norm=False, conv_bias=False),
    'large': dict(feat_extract_norm='layer', do_stable_layer_norm=True, conv_bias=True),
}


def hf_config(variant, **extra):
  return transformers.Wav2Vec2Config(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
      conv_dim=(24,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
      codevector_dim=20, proj_codevector_dim=12, num_codevectors_per_group=16,
      num_codevector_groups=2, num_negatives=7, vocab_size=32, **VARIANTS[variant], **extra)


def max_diff(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs.detach().numpy())))


def audio_batch(seed=0):
  return np.random.RandomState(seed).randn(BATCH, SAMPLES).astype(np.float32)


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def pretraining_pair(request):
  torch.manual_seed(0)
  config = hf_config(request.param)
  reference = transformers.Wav2Vec2ForPreTraining(config).eval()
  ours = w2v.Wav2Vec2ForPreTraining(importer.config_from_transformers(config), rngs=nnx.Rngs(0))
  importer.load_pytorch_wav2vec2(ours, reference.state_dict())
  return request.param, reference, ours


def test_pretraining_outputs_match_transformers(pretraining_pair):
  variant, reference, ours = pretraining_pair
  audio = audio_batch()
  frames = ours.config.num_frames(SAMPLES)
  np.random.seed(1)
  mask = hf._compute_mask_indices((BATCH, frames), mask_prob=0.3, mask_length=3, min_masks=2)
  negatives = hf._sample_negative_indices((BATCH, frames), 7, mask)
  with torch.no_grad():
    theirs = reference(torch.tensor(audio), mask_time_indices=torch.tensor(mask),
                       sampled_negative_indices=torch.tensor(negatives).long())
    their_hidden = reference.wav2vec2(torch.tensor(audio),
                                      mask_time_indices=torch.tensor(mask)).last_hidden_state
  # transformers indexes distractors in the flattened batch; ours within the utterance.
  local = negatives - (np.arange(BATCH) * frames)[:, None, None]
  out = ours(jnp.asarray(audio), None, jnp.asarray(mask), jnp.asarray(local))
  assert max_diff(out.hidden, their_hidden) < TOLERANCE, variant
  assert max_diff(out.projected_states, theirs.projected_states) < TOLERANCE
  assert max_diff(out.projected_quantized, theirs.projected_quantized_states) < TOLERANCE
  assert abs(float(out.perplexity) - float(theirs.codevector_perplexity)) < TOLERANCE
  # Losses are sums over ~60 masked frames: compare relative to their size.
  assert abs(float(out.contrastive_loss) - float(theirs.contrastive_loss)) < TOLERANCE * float(theirs.contrastive_loss)
  diversity = float(out.diversity_loss) * float(out.num_masked)  # transformers scales by the count
  assert abs(diversity - float(theirs.diversity_loss)) < TOLERANCE * max(1.0, float(theirs.diversity_loss))
  assert float(out.num_masked) == mask.sum()
  assert np.isfinite(np.asarray(out.logits)[..., 0]).all()


def test_pretraining_hidden_states_of_every_layer_match(pretraining_pair):
  _, reference, ours = pretraining_pair
  audio = audio_batch(2)
  with torch.no_grad():
    theirs = reference.wav2vec2(torch.tensor(audio), output_hidden_states=True)
  # Our encoder, run layer by layer, must give the states transformers records after each layer.
  model = ours.wav2vec2
  encoded = model(jnp.asarray(audio))
  assert max_diff(encoded.hidden, theirs.last_hidden_state) < TOLERANCE
  features = model.feature_encoder(jnp.asarray(audio))
  x, normed = model.feature_projection(features, train=False, rngs=None)
  assert max_diff(normed, theirs.extract_features) < TOLERANCE
  enc = model.encoder
  x = x + enc.pos_conv(x)
  if not enc.pre_norm:
    x = enc.norm(x)
  bias = jnp.zeros((BATCH, 1, 1, x.shape[1]))
  for i, layer in enumerate(enc.layers):
    x = layer(x, bias, train=False, rngs=None)
    assert max_diff(x, theirs.hidden_states[i + 1]) < TOLERANCE, f'layer {i}'


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_ctc_logits_match_transformers_on_a_padded_batch(variant):
  torch.manual_seed(1)
  config = hf_config(variant)
  reference = transformers.Wav2Vec2ForCTC(config).eval()
  ours = w2v.Wav2Vec2ForCTC(importer.config_from_transformers(config), rngs=nnx.Rngs(1))
  importer.load_pytorch_wav2vec2(ours, reference.state_dict())
  lengths = np.array([SAMPLES, 7000, 4321])
  valid = (np.arange(SAMPLES)[None] < lengths[:, None])
  audio = audio_batch(3) * valid
  with torch.no_grad():
    theirs = reference(torch.tensor(audio.astype(np.float32)),
                       attention_mask=torch.tensor(valid.astype(np.int64)))
  logits, frame_mask = ours(jnp.asarray(audio, jnp.float32), jnp.asarray(lengths))
  assert logits.shape == tuple(theirs.logits.shape)
  assert max_diff(logits, theirs.logits) < TOLERANCE
  expected_frames = reference._get_feat_extract_output_lengths(torch.tensor(lengths)).numpy()
  np.testing.assert_array_equal(np.asarray(frame_mask).sum(-1), expected_frames)


def to_fairseq(state_dict, *, group_norm, finetuned):
  """transformers' names -> fairseq's, written out from fairseq's module layout (conv layers
  are Sequential(conv, dropout, norm, GELU), LayerNorm wrapped as (TransposeLast, LayerNorm,
  TransposeLast)); weight norm as weight_g / weight_v, as fairseq's checkpoints store it."""
  out = {}
  for key, value in state_dict.items():
    k = key.replace('wav2vec2.', '')
    if k.startswith('feature_extractor.'):
      k = k.replace('.conv.', '.0.')
      k = k.replace('.layer_norm.', '.2.' if group_norm else '.2.1.')
    k = k.replace('feature_projection.layer_norm', 'layer_norm')
    k = k.replace('feature_projection.projection', 'post_extract_proj')
    k = k.replace('masked_spec_embed', 'mask_emb')
    k = k.replace('encoder.pos_conv_embed.conv.parametrizations.weight.original0',
                  'encoder.pos_conv.0.weight_g')
    k = k.replace('encoder.pos_conv_embed.conv.parametrizations.weight.original1',
                  'encoder.pos_conv.0.weight_v')
    k = k.replace('encoder.pos_conv_embed.conv', 'encoder.pos_conv.0')
    k = k.replace('.attention.', '.self_attn.')
    if '.layers.' in k:
      k = k.replace('.layer_norm.', '.self_attn_layer_norm.')
    k = k.replace('feed_forward.intermediate_dense', 'fc1')
    k = k.replace('feed_forward.output_dense', 'fc2')
    k = k.replace('quantizer.codevectors', 'quantizer.vars')
    k = k.replace('project_hid', 'final_proj')
    if finetuned:
      k = 'w2v_encoder.proj.' + k.split('.')[-1] if k.startswith('lm_head') else 'w2v_encoder.w2v_model.' + k
    out[k] = value
  return out


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_fairseq_names_load_the_same_weights(variant):
  torch.manual_seed(2)
  config = hf_config(variant)
  reference = transformers.Wav2Vec2ForCTC(config).eval()
  state = reference.state_dict()
  fairseq = to_fairseq(state, group_norm=variant == 'base', finetuned=True)
  assert 'w2v_encoder.w2v_model.post_extract_proj.weight' in fairseq
  assert 'w2v_encoder.w2v_model.encoder.layers.1.self_attn_layer_norm.weight' in fairseq
  a = w2v.Wav2Vec2ForCTC(importer.config_from_transformers(config), rngs=nnx.Rngs(0))
  b = w2v.Wav2Vec2ForCTC(importer.config_from_transformers(config), rngs=nnx.Rngs(1))
  importer.load_pytorch_wav2vec2(a, state)
  importer.load_pytorch_wav2vec2(b, fairseq)
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    np.testing.assert_array_equal(x, y)


def jax_leaves(model):
  import jax
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_pretrained_checkpoint_loads_into_a_ctc_model_encoder_only(pretraining_pair):
  variant, reference, pretrained = pretraining_pair
  ctc = w2v.Wav2Vec2ForCTC(pretrained.config, rngs=nnx.Rngs(5))
  head_before = np.asarray(ctc.lm_head.kernel[...]).copy()
  importer.load_pytorch_wav2vec2(ctc, reference.state_dict(), encoder_only=True)
  np.testing.assert_array_equal(np.asarray(ctc.lm_head.kernel[...]), head_before)
  np.testing.assert_array_equal(jax_leaves(ctc.wav2vec2)[0], jax_leaves(pretrained.wav2vec2)[0])
  for x, y in zip(jax_leaves(ctc.wav2vec2), jax_leaves(pretrained.wav2vec2)):
    np.testing.assert_array_equal(x, y)
  # Without encoder_only the pretraining heads have no place in a CTC model and lm_head is absent.
  with pytest.raises(ValueError, match='missing keys'):
    importer.load_pytorch_wav2vec2(ctc, reference.state_dict())


def test_old_weight_norm_names_load():
  torch.manual_seed(3)
  config = hf_config('base')
  reference = transformers.Wav2Vec2ForCTC(config).eval()
  state = {k.replace('parametrizations.weight.original0', 'weight_g')
            .replace('parametrizations.weight.original1', 'weight_v'): v
           for k, v in reference.state_dict().items()}
  ours = w2v.Wav2Vec2ForCTC(importer.config_from_transformers(config), rngs=nnx.Rngs(0))
  importer.load_pytorch_wav2vec2(ours, state)
  audio = audio_batch(4)
  with torch.no_grad():
    theirs = reference(torch.tensor(audio)).logits
  assert max_diff(ours(jnp.asarray(audio))[0], theirs) < TOLERANCE


def test_mismatched_state_dict_names_every_problem_and_changes_nothing():
  torch.manual_seed(4)
  config = hf_config('base')
  state = dict(transformers.Wav2Vec2ForCTC(config).state_dict())
  ours = w2v.Wav2Vec2ForCTC(importer.config_from_transformers(config), rngs=nnx.Rngs(0))
  before = jax_leaves(ours)
  del state['wav2vec2.encoder.layers.1.final_layer_norm.bias']
  state['wav2vec2.encoder.extra.weight'] = torch.zeros(3)
  state['lm_head.weight'] = torch.zeros(31, 48)
  with pytest.raises(ValueError) as error:
    importer.load_pytorch_wav2vec2(ours, state)
  message = str(error.value)
  assert 'wav2vec2.encoder.layers.1.final_layer_norm.bias' in message
  assert 'wav2vec2.encoder.extra.weight' in message
  assert 'lm_head.weight  expected (32, 48), given (31, 48)' in message
  for x, y in zip(before, jax_leaves(ours)):
    np.testing.assert_array_equal(x, y)


def test_fairseq_state_dict_of_another_architecture_is_refused():
  with pytest.raises(ValueError, match='label_embs_concat'):
    importer.load_pytorch_wav2vec2(
        w2v.Wav2Vec2ForCTC(importer.config_from_transformers(hf_config('base')), rngs=nnx.Rngs(0)),
        {'post_extract_proj.weight': np.zeros((48, 24)), 'label_embs_concat': np.zeros(3)})
