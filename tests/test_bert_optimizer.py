"""LAMB and the learning-rate schedule of MLPerf BERT, against the TF reference's formulas."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks import optimizers
from models import bert as bert_lib


def reference_lr(step, *, base, train_steps, warmup, start, power=1.0):
  """optimization.py: tf.train.polynomial_decay(global_step), then the warmup override."""
  decayed = base * (1 - min(step, train_steps) / train_steps) ** power
  if warmup:
    local = step - start
    if local < warmup:
      return base * local / warmup
  return decayed


@pytest.mark.parametrize('rcp', [
    dict(base=0.00288293, train_steps=600, warmup=287, start=-76),   # bert_ref_8192
    dict(base=0.0029293, train_steps=700, warmup=0, start=-700),     # bert_ref_6144
    dict(base=0.002, train_steps=1141, warmup=100, start=0),         # bert_ref_3072
])
def test_schedule_matches_the_reference(rcp):
  schedule = optimizers.bert_warmup_polynomial_decay(
      base_lr=rcp['base'], train_steps=rcp['train_steps'], warmup_steps=rcp['warmup'],
      start_warmup_step=rcp['start'])
  steps = np.arange(0, rcp['train_steps'] + 20)
  ours = np.asarray(jax.vmap(schedule)(steps))
  expected = np.array([reference_lr(int(s), **rcp) for s in steps])
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-9)
  if rcp['warmup']:
    first_decay = rcp['warmup'] + rcp['start']  # warmup ends early when it started before 0
    assert ours[first_decay - 1] < rcp['base'] and ours[first_decay] == pytest.approx(
        rcp['base'] * (1 - first_decay / rcp['train_steps']), rel=1e-5)
  assert ours[-1] == 0.0


def reference_lamb(params, grads_seq, *, lr, b1, b2, eps, wd, excluded, clip=1.0):
  """lamb_optimizer_v1.py, one variable at a time, after clip_by_global_norm."""
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  params = {k: p.copy() for k, p in params.items()}
  for t, grads in enumerate(grads_seq, start=1):
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    scale = clip / max(norm, clip)
    for k in params:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      ratio = 1.0
      if k not in excluded:
        update = update + wd * params[k]
        w_norm, u_norm = np.linalg.norm(params[k]), np.linalg.norm(update)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
      params[k] = params[k] - ratio * lr * update
  return params


def test_lamb_matches_the_reference_with_its_exclusions():
  rng = np.random.default_rng(0)
  params = {'layers': {'0': {'kernel': rng.standard_normal((4, 3)).astype(np.float32),
                             'bias': rng.standard_normal((3,)).astype(np.float32),
                             'norm': {'scale': np.ones(3, np.float32)}}},
            'mlm_bias': np.zeros(5, np.float32),
            'embedding': rng.standard_normal((5, 3)).astype(np.float32)}
  grads_seq = [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32) * 3, params)
               for _ in range(4)]
  tx = optimizers.lamb(lambda step: 0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6,
                       weight_decay=0.1)
  state = tx.init(params)
  ours = params
  for grads in grads_seq:
    updates, state = tx.update(grads, state, ours)
    ours = optax.apply_updates(ours, updates)
  flat = lambda tree: {'/'.join(str(k.key) for k in path): np.asarray(v)
                       for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  expected = reference_lamb(flat(params), [flat(g) for g in grads_seq], lr=0.01, b1=0.8, b2=0.95,
                            eps=1e-6, wd=0.1,
                            excluded={'layers/0/bias', 'layers/0/norm/scale', 'mlm_bias'})
  for key, value in flat(ours).items():
    np.testing.assert_allclose(value, expected[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_bert_exclusions_are_layer_norms_and_biases():
  model = bert_lib.BertForPreTraining(bert_lib.BertConfig(
      vocab_size=11, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
      max_position_embeddings=8), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  mask = optimizers.name_mask(optimizers.BERT_EXCLUDE_FROM_WEIGHT_DECAY)(params)
  decayed = sorted('/'.join(str(k.key) for k in path)
                   for path, v in jax.tree_util.tree_flatten_with_path(mask)[0] if v)
  assert decayed == sorted([
      'embeddings/word/embedding', 'embeddings/position/embedding',
      'embeddings/token_type/embedding', 'layers/0/attention/query/kernel',
      'layers/0/attention/key/kernel', 'layers/0/attention/value/kernel',
      'layers/0/attention/output/kernel', 'layers/0/intermediate/kernel',
      'layers/0/output/kernel', 'pooler/kernel', 'mlm_transform/kernel', 'nsp/kernel'])
