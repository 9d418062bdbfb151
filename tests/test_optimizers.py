"""MLPerf schedule and optimizer semantics: the LARS polynomial schedule and the exclusion of
BatchNorm parameters and biases from weight decay and layer-wise adaptation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import optimizers


def test_warmup_polynomial_decay_matches_the_mlperf_formula():
  base, end, warmup, decay = 10.0, 1e-4, 5, 20
  schedule = optimizers.warmup_polynomial_decay(base_lr=base, end_lr=end, warmup_steps=warmup,
                                                decay_steps=decay, power=2.0)
  for step in range(0, 40):
    if step < warmup:
      expected = base * step / warmup
    else:
      t = min((step - warmup) / decay, 1.0)
      expected = (base - end) * (1 - t) ** 2 + end
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, atol=1e-7)
  assert float(schedule(warmup)) == base
  assert float(schedule(warmup + decay + 100)) == np.float32(end)


def _params():
  return {'conv': {'kernel': jnp.ones((3, 3, 4, 8))},
          'bn': {'scale': jnp.ones((8,)), 'bias': jnp.ones((8,))},
          'head': {'kernel': jnp.ones((8, 10)), 'bias': jnp.ones((10,))}}


def test_lars_leaves_batchnorm_and_biases_unadapted_and_undecayed():
  params = _params()
  grads = jax.tree.map(jnp.zeros_like, params)  # zero gradient: only weight decay moves things
  tx = optimizers.lars(lambda _: 1.0, momentum=0.0, weight_decay=0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates['bn']['scale']).max()) == 0.0
  assert float(jnp.abs(updates['head']['bias']).max()) == 0.0
  assert float(jnp.abs(updates['conv']['kernel']).max()) > 0.0
  # With a gradient, a bias moves by exactly lr * grad (no trust ratio), a kernel by the
  # trust ratio 0.001 * |w| / |g + wd w|.
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['head']['bias'], -0.5 * np.ones(10), rtol=1e-6)
  w, g = params['conv']['kernel'], grads['conv']['kernel'] + 0.1 * params['conv']['kernel']
  trust = 0.001 * jnp.linalg.norm(w) / jnp.linalg.norm(g)
  np.testing.assert_allclose(updates['conv']['kernel'], -trust * g, rtol=1e-5)


def test_sgd_decays_kernels_only():
  params = _params()
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = optimizers.sgd_momentum(lambda _: 1.0, momentum=0.9, weight_decay=0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * np.ones((3, 3, 4, 8)), rtol=1e-6)
  assert float(jnp.abs(updates['bn']['bias']).max()) == 0.0
  new = optax.apply_updates(params, updates)
  assert float(new['head']['bias'][0]) == 1.0


def _random_tree(seed, params):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)


def _optax_lamb(clip_norm):
  decay = optimizers.name_mask(optimizers.BERT_EXCLUDE_FROM_WEIGHT_DECAY)
  return optax.chain(
      optax.clip_by_global_norm(clip_norm), optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
      optax.add_decayed_weights(0.01, mask=decay), optax.masked(optax.scale_by_trust_ratio(), decay),
      optax.scale_by_learning_rate(lambda _: 0.05))


def test_lars_and_lamb_equal_optaxs_own_with_the_same_state_layout():
  """podium's chains compute their norms as dot products on CPU (`layers.sum_of_squares`);
  the updates are optax's, and so is the state tree (checkpoints restore either way). The
  gradients are large enough that LAMB's clipping is active."""
  params = dict(_params(), LayerNorm={'scale': jnp.ones((8,))}, zero={'kernel': jnp.zeros((4, 4))})
  params = jax.tree.map(lambda p, r: p + 0.1 * r if p.any() else p, params, _random_tree(0, params))
  pairs = {
      'lars': (optimizers.lars(lambda _: 0.5, momentum=0.9, weight_decay=0.05),
               optax.lars(lambda _: 0.5, weight_decay=0.05, weight_decay_mask=optimizers.is_matrix_like,
                          trust_coefficient=0.001, trust_ratio_mask=optimizers.is_matrix_like,
                          momentum=0.9)),
      'lamb': (optimizers.lamb(lambda _: 0.05, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                               weight_decay=0.01, clip_norm=1.0), _optax_lamb(1.0)),
  }
  for name, (ours, theirs) in pairs.items():
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state), name
    ours_params = theirs_params = params
    for step in range(3):
      grads = jax.tree.map(lambda g: 3 * g, _random_tree(step + 1, params))
      u, ours_state = jax.jit(ours.update)(grads, ours_state, ours_params)
      ours_params = optax.apply_updates(ours_params, u)
      u, theirs_state = jax.jit(theirs.update)(grads, theirs_state, theirs_params)
      theirs_params = optax.apply_updates(theirs_params, u)
    for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(theirs_params)):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6, err_msg=name)


def test_norms_are_matrix_vector_products_on_cpu():
  """XLA:CPU rewrites a full reduction into a tree of reduce-windows (the norms were a third
  of LAMB's update over BERT-base); podium's sum of squares is a matrix-vector product there,
  leaving a reduction over rows only."""
  from models import layers
  x = _random_tree(0, {'w': jnp.ones((256, 64))})['w']
  hlo = jax.jit(layers.sum_of_squares).lower(x).compile().as_text()
  assert ' dot(' in hlo
  windows = [int(n) for n in re.findall(r'= f32\[(\d+)\]\S* reduce-window\(', hlo)]
  assert all(n * 32 <= 256 for n in windows), windows  # over the 256 row sums, not 16,384
  np.testing.assert_allclose(layers.sum_of_squares(x), np.sum(np.square(np.asarray(x))),
                             rtol=1e-5)
