"""Word error rate: known examples, the on-device edit distance against the Python one, and
greedy CTC decoding."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks import wer
from input_pipelines import librispeech

# (reference, hypothesis, word edits): textbook cases, each counted by hand.
KNOWN = [
    ('THE CAT SAT ON THE MAT', 'THE CAT SAT ON THE MAT', 0),
    ('THE CAT SAT ON THE MAT', 'THE CAT SIT ON THE MAT', 1),          # one substitution
    ('THE CAT SAT ON THE MAT', 'THE CAT SAT ON MAT', 1),              # one deletion
    ('THE CAT SAT ON THE MAT', 'THE FAT CAT SAT ON THE MAT', 1),      # one insertion
    ('HELLO WORLD', 'HELLO DUCK', 1),
    ('HELLO WORLD', '', 2),                                           # everything deleted
    ('A B C', 'X Y Z W', 4),                                          # 3 subs + 1 insertion
    ('WHAT A BRIGHT DAY', 'WHAT A LIGHT DAY', 1),
    ('I LOVE YOU', 'YOU LOVE I', 2),                                  # swap = 2 substitutions
    ("IT'S A DOG", 'ITS A DOG', 1),                                   # apostrophes count
    ('ONE TWO THREE FOUR FIVE', 'ONE THREE FOUR SIX FIVE SEVEN', 3),  # del + ins + ins
]


@pytest.mark.parametrize('reference,hypothesis,edits', KNOWN)
def test_python_word_errors_on_known_examples(reference, hypothesis, edits):
  assert wer.python_word_errors(reference, hypothesis) == (edits, len(reference.split()))


def test_corpus_wer_sums_errors_over_words():
  refs = [r for r, _, _ in KNOWN]
  hyps = [h for _, h, _ in KNOWN]
  assert wer.python_wer(refs, hyps) == pytest.approx(
      sum(e for _, _, e in KNOWN) / sum(len(r.split()) for r in refs))
  assert wer.python_wer(['THE CAT SAT ON THE MAT'], ['THE CAT SIT ON MAT']) == pytest.approx(2 / 6)


def device_errors(references, hypotheses, width=64):
  ref, ref_len = wer.tokens_of(references, librispeech.encode_transcript, width)
  hyp, hyp_len = wer.tokens_of(hypotheses, librispeech.encode_transcript, width)
  errors, words = wer.word_errors(jnp.asarray(hyp), jnp.asarray(hyp_len), jnp.asarray(ref),
                                  jnp.asarray(ref_len), delimiter=librispeech.WORD_DELIMITER,
                                  vocab_size=len(librispeech.VOCABULARY))
  return np.asarray(errors), np.asarray(words)


def test_device_word_errors_on_known_examples():
  errors, words = device_errors([r for r, _, _ in KNOWN], [h for _, h, _ in KNOWN])
  assert errors.tolist() == [e for _, _, e in KNOWN]
  assert words.tolist() == [len(r.split()) for r, _, _ in KNOWN]


def test_extra_spaces_do_not_make_words_and_long_words_compare_exactly():
  # Runs of delimiters (a CTC output can have several) separate words, they are no words.
  ref, ref_len = wer.tokens_of(['AB CD'], librispeech.encode_transcript, 16)
  hyp = np.zeros((1, 16), np.int32)
  d = librispeech.WORD_DELIMITER
  seq = [d, d] + list(librispeech.encode_transcript('AB')) + [d, d, d] + list(
      librispeech.encode_transcript('CD')) + [d]
  hyp[0, :len(seq)] = seq
  errors, words = wer.word_errors(jnp.asarray(hyp), jnp.asarray([len(seq)]), jnp.asarray(ref),
                                  jnp.asarray(ref_len), delimiter=d, vocab_size=32)
  assert (int(errors[0]), int(words[0])) == (0, 2)
  # Two long words that differ only in their 30th character are different words.
  a, b = 'X' * 29 + 'A', 'X' * 29 + 'B'
  assert device_errors([a], [b])[0].tolist() == [1]
  assert device_errors([a + ' ' + a], [a + ' ' + a])[0].tolist() == [0]


WORDS = st.sampled_from(['A', 'AN', 'THE', 'CAT', 'CATS', "CAT'S", 'DOG', 'QUIZ', 'X', 'JAZZ'])
SENTENCES = st.lists(WORDS, max_size=9).map(' '.join)


@settings(max_examples=20, deadline=None)  # each example compiles its own shapes
@given(st.lists(st.tuples(SENTENCES, SENTENCES), min_size=1, max_size=6))
def test_device_edit_distance_equals_python(pairs):
  errors, words = device_errors([r for r, _ in pairs], [h for _, h in pairs])
  expected = [wer.python_word_errors(r, h) for r, h in pairs]
  assert errors.tolist() == [e for e, _ in expected]
  assert words.tolist() == [n for _, n in expected]


def test_ctc_greedy_collapses_repeats_and_drops_blanks_and_padding():
  # frames:  A A _ A B B _ _ | C   (then two padding frames that would say Z)
  ids = {c: librispeech.VOCABULARY.index(c) for c in 'ABCZ|'}
  path = ['A', 'A', None, 'A', 'B', 'B', None, None, '|', 'C', 'Z', 'Z']
  best = [librispeech.BLANK if c is None else ids[c] for c in path]
  logits = np.full((1, len(best), 32), -5.0, np.float32)
  logits[0, np.arange(len(best)), best] = 5.0
  mask = np.arange(len(best))[None] < 10
  tokens, length = wer.ctc_greedy(jnp.asarray(logits), jnp.asarray(mask), librispeech.BLANK)
  decoded = librispeech.decode_tokens(np.asarray(tokens)[0, :int(length[0])])
  assert decoded == 'AAB C'
