"""MLPerf schedule and optimizer semantics: the LARS polynomial schedule and the exclusion of
BatchNorm parameters and biases from weight decay and layer-wise adaptation."""

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
