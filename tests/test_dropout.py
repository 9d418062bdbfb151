"""The dropout BERT and wav2vec 2.0 share (`models.layers.dropout`): its mask statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import bert as bert_lib
from models import layers
from models import wav2vec2 as w2v_lib

SITES = {'BERT': bert_lib._dropout, 'wav2vec 2.0': w2v_lib._dropout}


@pytest.mark.parametrize('model', SITES)
def test_dropout_keeps_one_minus_rate_from_sixteen_bits_per_element(model):
  """Keep probability 1 - rate, the two 16-bit halves of each random word independent, an
  odd size handled, kept values scaled by 1 / (1 - rate), a new mask for every call of the
  dropout stream, the identity outside training -- through each model's dropout sites."""
  dropout = SITES[model]
  rngs = nnx.Rngs(dropout=jax.random.key(0))
  x = jnp.ones((1001, 999))  # odd size: the last word's second half is unused
  first = np.asarray(dropout(x, 0.1, True, rngs))
  second = np.asarray(dropout(x, 0.1, True, rngs))
  kept = first != 0
  sigma = np.sqrt(0.9 * 0.1 / kept.size)
  assert abs(kept.mean() - 0.9) < 5 * sigma
  np.testing.assert_allclose(first[kept], 1 / 0.9, rtol=1e-6)
  flat = kept.reshape(-1)
  pairs = flat[0:-1:2] & flat[1::2]  # the two halves of one word
  assert abs(pairs.mean() - 0.81) < 5 * np.sqrt(0.81 * 0.19 / pairs.size)
  assert (second != first).any() and abs((second != 0).mean() - 0.9) < 5 * sigma
  np.testing.assert_array_equal(dropout(x, 0.1, False, rngs), x)
  np.testing.assert_array_equal(dropout(x, 0.0, True, rngs), x)


def test_dropout_keeps_the_input_dtype():
  rngs = nnx.Rngs(dropout=jax.random.key(1))
  y = layers.dropout(jnp.ones((64, 64), jnp.bfloat16), 0.25, train=True, rngs=rngs)
  assert y.dtype == jnp.bfloat16
  scaled = float(jnp.asarray(1 / 0.75, jnp.bfloat16))
  assert set(np.unique(np.asarray(y, np.float32)).tolist()) == {0.0, scaled}


@pytest.mark.parametrize('model', SITES)
def test_dropout_in_training_without_rngs_names_the_model(model):
  with pytest.raises(ValueError, match=f'{model} in train mode needs rngs with a dropout stream'):
    SITES[model](jnp.ones((2, 2)), 0.1, True, None)
