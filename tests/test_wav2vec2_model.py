"""wav2vec 2.0's training-only parts: span masks, distractor sampling, the Gumbel quantizer,
gradient scaling, temperature annealing, logical axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import wav2vec2 as w2v

TINY = dataclasses.replace(
    w2v.WAV2VEC2_CONFIGS['tiny'], conv_dim=(16,) * 7, hidden_size=32, num_layers=1,
    num_heads=2, intermediate_size=32, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    codevector_dim=16, proj_codevector_dim=8, num_codevectors_per_group=16)


def spans(row):
  """(start, length) of each run of True."""
  out, start = [], None
  for t, m in enumerate(list(row) + [False]):
    if m and start is None:
      start = t
    elif not m and start is not None:
      out.append((start, t - start))
      start = None
  return out


def test_span_mask_follows_the_minimum_masks_rule_and_stays_inside_each_utterance():
  lengths = jnp.asarray([200, 120, 25, 9, 0])
  masks = np.stack([np.asarray(w2v.span_mask(jax.random.key(s), lengths, 200, mask_prob=0.65,
                                             mask_length=10, min_masks=2)) for s in range(50)])
  for row, length in enumerate(np.asarray(lengths)):
    m = masks[:, row]
    assert not m[:, length:].any()                       # never beyond the utterance
    if length >= 10:
      # At least min_masks spans of 10, or the whole thing where they overlap.
      assert (m.sum(-1) >= 10).all()
      assert all(n % 10 == 0 or n >= 10 for r in m for _, n in spans(r))
    else:
      assert not m.any()                                  # a span of 10 does not fit
  # p = 0.065 starts per step: 0.65 * 200 / 10 = 13 spans, ~49% of the steps once overlaps
  # are counted (1 - (1 - 0.065)^10).
  covered = masks[:, 0].mean()
  assert 0.42 < covered < 0.56, covered
  starts_of_25 = [len(spans(r)) for r in masks[:, 2]]
  assert min(starts_of_25) >= 1 and max(masks[:, 2].sum(-1)) <= 25


def test_span_mask_is_a_function_of_the_key():
  a = w2v.span_mask(jax.random.key(3), jnp.asarray([100]), 100, mask_prob=0.65, mask_length=10)
  b = w2v.span_mask(jax.random.key(3), jnp.asarray([100]), 100, mask_prob=0.65, mask_length=10)
  c = w2v.span_mask(jax.random.key(4), jnp.asarray([100]), 100, mask_prob=0.65, mask_length=10)
  assert (np.asarray(a) == np.asarray(b)).all() and (np.asarray(a) != np.asarray(c)).any()


def test_distractors_come_from_other_masked_frames_of_the_same_utterance_uniformly():
  mask = np.zeros((2, 60), bool)
  mask[0, 5:25] = True
  mask[1, [3, 10, 11, 40, 59]] = True
  negatives = np.asarray(w2v.sample_negatives(jax.random.key(0), jnp.asarray(mask), 100))
  for b in range(2):
    masked = set(np.flatnonzero(mask[b]))
    for t in masked:
      drawn = negatives[b, t]
      assert set(drawn) <= masked - {t}                  # masked frames, never itself
    for t in set(range(60)) - masked:
      assert (negatives[b, t] == t).all()
  # Uniform over the others: 20 masked frames, 20 x 100 draws, each other frame ~ 100 times.
  counts = np.bincount(negatives[0, 5:25].ravel(), minlength=60)[5:25]
  assert counts.sum() == 2000 and counts.min() > 60 and counts.max() < 150


def test_gumbel_quantizer_is_hard_forward_and_differentiable():
  model = w2v.Wav2Vec2ForPreTraining(TINY, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model.quantizer)
  x = jax.random.normal(jax.random.key(1), (2, 30, TINY.conv_dim[-1]))

  @jax.jit
  def quantize(state, temperature):
    return nnx.merge(graphdef, state)(x, temperature=temperature, train=True,
                                      key=jax.random.key(2))

  out = quantize(state, 2.0)
  book = np.asarray(model.quantizer.codevectors[...]).reshape(2, 16, -1)
  codes = np.asarray(out.codes)
  expected = np.concatenate([book[0][codes[..., 0]], book[1][codes[..., 1]]], -1)
  np.testing.assert_array_equal(np.asarray(out.vectors), expected)   # exactly a codeword
  # The straight-through gradient reaches the projection.
  grad = jax.jit(jax.grad(lambda s: jnp.sum(quantize(s, 2.0).vectors ** 2)))(state)
  assert np.abs(np.asarray(grad['weight_proj']['kernel'][...])).sum() > 0
  # Eval mode is the argmax: no key, deterministic, whatever the temperature.
  a = model.quantizer(x, temperature=2.0, train=False)
  b = model.quantizer(x, temperature=0.5, train=False)
  np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
  # Perplexity lies in [1, G * V].
  assert 1.0 <= float(out.perplexity) <= 32.0


def test_diversity_gradient_is_finite_when_a_codeword_probability_underflows():
  """Large projection logits make some codewords' softmax probability exactly 0 in float32;
  the perplexity (and so the diversity loss) must still have a finite gradient, as with
  fairseq's log(p + 1e-7). A plain p log p gave NaN (a 3,000-step CPU run died at step 949)."""
  model = w2v.Wav2Vec2ForPreTraining(TINY, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model.quantizer)
  x = 200.0 * jax.random.normal(jax.random.key(1), (2, 30, TINY.conv_dim[-1]))

  def perplexity(state):
    return nnx.merge(graphdef, state)(x, temperature=2.0, train=True,
                                      key=jax.random.key(2)).perplexity

  logits = model.quantizer.weight_proj(x).reshape(2, 30, 2, -1)
  marginal = jax.nn.softmax(logits, -1).mean((0, 1))
  assert float(jnp.min(marginal)) == 0.0  # the case: an underflowed codeword
  grad = jax.grad(perplexity)(state)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))


def test_gumbel_temperature_anneals_per_update_to_its_floor():
  t = lambda step: float(w2v.gumbel_temperature(step, max_temperature=2.0, min_temperature=0.5,
                                                decay=0.999995))
  assert t(0) == 2.0
  assert t(100_000) == pytest.approx(2.0 * 0.999995 ** 100_000, rel=1e-5)
  assert t(400_000) == 0.5  # 2 * 0.999995^400k = 0.27 < 0.5


def test_scale_gradient_is_identity_forward_and_scales_backward():
  x = jnp.arange(4.0)
  assert (w2v.scale_gradient(x, 0.1) == x).all()
  g = jax.grad(lambda x: jnp.sum(w2v.scale_gradient(x, 0.1) ** 2))(x)
  np.testing.assert_allclose(g, 0.2 * np.arange(4.0), rtol=1e-6)
  model = w2v.Wav2Vec2ForCTC(TINY, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  audio = jax.random.normal(jax.random.key(0), (1, 4000))

  def grads(mult):
    def loss(p):
      logits, _ = nnx.merge(graphdef, p)(audio, feature_grad_mult=mult)
      return jnp.sum(logits ** 2)
    return nnx.to_pure_dict(jax.grad(loss)(params))
  full, tenth, frozen = grads(1.0), grads(0.1), grads(0.0)
  conv = lambda g: np.asarray(g['wav2vec2']['feature_encoder']['layers'][3]['conv']['kernel'])
  np.testing.assert_allclose(conv(tenth), 0.1 * conv(full), rtol=1e-4, atol=1e-7)
  assert not conv(frozen).any() and np.asarray(frozen['lm_head']['kernel']).any()


def test_parameters_carry_logical_axes_only():
  model = w2v.Wav2Vec2ForPreTraining(TINY, rngs=nnx.Rngs(0))
  specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  names = {n for s in flat.values() for n in s if n is not None}
  assert names <= {'conv_in', 'conv_out', 'embed', 'mlp', 'heads', 'kv', 'vocab'}, names
  attention = flat["['wav2vec2']['encoder']['layers'][0]['attention']['query']['kernel']"]
  assert tuple(attention) == ('embed', 'heads', 'kv')
  assert tuple(flat["['wav2vec2']['encoder']['layers'][0]['intermediate']['kernel']"]) == ('embed', 'mlp')


def test_padding_does_not_change_the_valid_frames_of_the_large_variant():
  # LayerNorm feature encoder + attention mask: appending padding leaves the utterance's
  # frames as they were (the GroupNorm BASE encoder normalises over the padded length too).
  config = dataclasses.replace(TINY, feature_norm='layer', stable_layer_norm=True, conv_bias=True)
  model = w2v.Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0))
  audio = jax.random.normal(jax.random.key(0), (1, 6000))
  alone, _ = model(audio)
  padded, mask = model(jnp.pad(audio, ((0, 0), (0, 3000))), jnp.asarray([6000]))
  frames = alone.shape[1]
  assert int(mask.sum()) == frames
  np.testing.assert_allclose(padded[:, :frames], alone, atol=2e-4)
