"""Word error rate: greedy CTC decoding and word-level edit distance, on device and in Python.

WER = (substitutions + deletions + insertions) / reference words, summed over a data set
(not averaged per utterance), with words separated by the word delimiter and compared
exactly. The eval step computes the edit distances on device (`word_errors`) so that eval
sums stay scalars; `python_word_errors` is the plain reference implementation the tests hold
it to.

On device a word is packed into integers: each character id + 1 takes `bits` bits,
``31 // bits`` characters per int32 limb, `limbs` limbs, plus the word's length; two words
are equal when all of these are. Words longer than ``limbs * chars_per_limb`` characters
(40 with the 32-symbol LibriSpeech vocabulary and the default 8 limbs; its longest word has
17) are compared on that prefix and their length.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def python_word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
  """(edit distance in words, reference words) of two whitespace-separated strings."""
  ref, hyp = reference.split(), hypothesis.split()
  row = list(range(len(hyp) + 1))
  for i, r in enumerate(ref, 1):
    previous, row[0] = row[0], i
    for j, h in enumerate(hyp, 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
  return row[-1], len(ref)


def python_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
  errors = words = 0
  for ref, hyp in zip(references, hypotheses):
    e, n = python_word_errors(ref, hyp)
    errors, words = errors + e, words + n
  return errors / max(words, 1)


def ctc_greedy(logits: jax.Array, frame_mask: jax.Array, blank: int) -> tuple[jax.Array, jax.Array]:
  """Best path decoding: argmax per frame, repeats collapsed, blanks removed.

  Returns (tokens [B, T] int32 left-aligned, zero beyond, lengths [B] int32).
  """
  best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  previous = jnp.pad(best, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  keep = frame_mask & (best != blank) & (best != previous)
  position = jnp.cumsum(keep, axis=-1) - 1
  batch, length = best.shape
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], best.shape)
  target = jnp.where(keep, position, length)  # out of range: dropped
  tokens = jnp.zeros_like(best).at[rows, target].set(best, mode='drop')
  return tokens, jnp.sum(keep, axis=-1).astype(jnp.int32)


def pack_words(tokens: jax.Array, lengths: jax.Array, *, delimiter: int, vocab_size: int,
               max_words: int, limbs: int = 8) -> tuple[jax.Array, jax.Array]:
  """Words of token sequences as exact integer codes.

  Returns (codes [B, max_words, limbs + 1] int32, word counts [B] int32). Runs of the
  delimiter (and leading or trailing ones) separate words and are not words themselves;
  words past `max_words` are dropped (size it to the longest sequence).
  """
  bits = max(int(vocab_size).bit_length(), 1)
  per_limb = 31 // bits
  batch, length = tokens.shape
  steps = jnp.arange(length)[None, :]
  is_char = (steps < lengths[:, None]) & (tokens != delimiter)
  previous = jnp.pad(is_char, ((0, 0), (1, 0)))[:, :-1]
  starts = is_char & ~previous
  word = jnp.cumsum(starts, axis=-1) - 1
  start_at = jax.lax.cummax(jnp.where(starts, steps, 0), axis=1)
  offset = steps - start_at
  limb = offset // per_limb
  value = (tokens + 1) << (bits * (offset % per_limb))
  usable = is_char & (limb < limbs) & (word < max_words)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], tokens.shape)
  word_at = jnp.where(usable, word, max_words)
  codes = jnp.zeros((batch, max_words, limbs + 1), jnp.int32)
  codes = codes.at[rows, word_at, jnp.where(usable, limb, 0)].add(value, mode='drop')
  counted = is_char & (word < max_words)
  codes = codes.at[rows, jnp.where(counted, word, max_words), limbs].add(1, mode='drop')
  count = jnp.minimum(jnp.sum(starts, axis=-1), max_words).astype(jnp.int32)
  return codes, count


def edit_distances(ref: jax.Array, ref_count: jax.Array, hyp: jax.Array,
                   hyp_count: jax.Array) -> jax.Array:
  """[B] Levenshtein distances between word-code sequences (unit costs).

  The dynamic program runs over reference words (a scan of `ref.shape[1]` steps); each row
  over the hypothesis is vectorised: with ``a[j] = min(prev[j] + 1, prev[j-1] + sub[j])``,
  the row is ``row[j] = min_k<=j (a[k] + j - k) = j + cummin(a - k)``.
  """
  equal = jnp.all(ref[:, :, None, :] == hyp[:, None, :, :], axis=-1)   # [B, R, H]
  batch, _, width = equal.shape
  columns = jnp.arange(width + 1)
  first = jnp.broadcast_to(columns, (batch, width + 1)).astype(jnp.int32)

  def step(row, inputs):
    i, same = inputs                       # i: 1-based reference word; same: [B, H]
    substitute = row[:, :-1] + (~same).astype(jnp.int32)
    a = jnp.concatenate([jnp.full((batch, 1), i, jnp.int32),
                         jnp.minimum(row[:, 1:] + 1, substitute)], axis=1)
    new = columns + jax.lax.cummin(a - columns, axis=1)
    return jnp.where((i <= ref_count)[:, None], new, row), None

  indices = jnp.arange(1, equal.shape[1] + 1, dtype=jnp.int32)
  last, _ = jax.lax.scan(step, first, (indices, jnp.swapaxes(equal, 0, 1)))
  return jnp.take_along_axis(last, hyp_count[:, None], axis=1)[:, 0]


def word_errors(hyp_tokens: jax.Array, hyp_lengths: jax.Array, ref_tokens: jax.Array,
                ref_lengths: jax.Array, *, delimiter: int, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """([B] word edit distances, [B] reference word counts) of token sequences."""
  ref_words = ref_tokens.shape[1] // 2 + 1
  hyp_words = hyp_tokens.shape[1] // 2 + 1
  ref, ref_count = pack_words(ref_tokens, ref_lengths, delimiter=delimiter,
                              vocab_size=vocab_size, max_words=ref_words)
  hyp, hyp_count = pack_words(hyp_tokens, hyp_lengths, delimiter=delimiter,
                              vocab_size=vocab_size, max_words=hyp_words)
  return edit_distances(ref, ref_count, hyp, hyp_count), ref_count


def tokens_of(texts: Sequence[str], encode, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Padded [N, width] token ids and lengths of `texts` under `encode` (tests, tools)."""
  ids = [np.asarray(encode(t), np.int32) for t in texts]
  out = np.zeros((len(ids), width), np.int32)
  for i, x in enumerate(ids):
    out[i, :x.size] = x
  return out, np.asarray([x.size for x in ids], np.int32)
