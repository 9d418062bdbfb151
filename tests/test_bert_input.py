"""The MLPerf BERT record reader: shapes, per-shard files, deterministic order and resumption,
exactly-once padded eval, and one clear message for records that do not fit."""

import pytest
import tensorflow as tf

from input_pipelines import bert_corpus, bert_pretraining, bert_records, bert_tokenizer
from input_pipelines.errors import DataError

SEQ, PREDS = 32, 5


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """4 training files and an eval file of 37 records, with a manifest, from podium's writer."""
  root = tmp_path_factory.mktemp('bert_data')
  docs = bert_corpus.counting_documents(120, seed=3)
  train_text, eval_text = root / 'train.txt', root / 'eval.txt'
  bert_corpus.write_text(train_text, docs[:100])
  bert_corpus.write_text(eval_text, docs[100:])
  vocab_path = root / 'vocab.txt'
  bert_tokenizer.write_vocab(vocab_path, bert_tokenizer.build_vocab(open(train_text), 100))
  tokenizer = bert_tokenizer.FullTokenizer(str(vocab_path))
  opts = bert_records.MaskingOptions(max_seq_length=SEQ, max_predictions_per_seq=PREDS,
                                     dupe_factor=2)
  data = root / 'data'
  data.mkdir()
  names = [bert_records.shard_name(i, 4) for i in range(4)]
  counts = bert_records.write_records([train_text], [data / n for n in names], tokenizer, opts)
  bert_records.write_records([eval_text], [root / 'eval_all'], tokenizer, opts)
  bert_records.pick_eval_examples([root / 'eval_all'], data / 'eval_10k', 37)
  bert_records.write_manifest(str(data), opts, {'train': dict(zip(names, counts)),
                                                'eval': {'eval_10k': 37}},
                              vocab_path=vocab_path, vocab_size=len(tokenizer))
  return str(data), counts


def source(data, **kwargs):
  return bert_pretraining.BertSource.from_dirs(data, max_seq_length=SEQ,
                                               max_predictions_per_seq=PREDS, **kwargs)


def take(ds, n):
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_train_batches_have_mlperf_shapes_and_types(dataset):
  data, counts = dataset
  src = source(data)
  assert src.num_examples('train') == sum(counts) and src.num_examples('eval') == 37
  batch = take(bert_pretraining.train_dataset(src, local_batch_size=8, seed=0), 1)[0]
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      'input_ids': ((8, SEQ), 'int32'), 'input_mask': ((8, SEQ), 'int32'),
      'segment_ids': ((8, SEQ), 'int32'), 'masked_lm_positions': ((8, PREDS), 'int32'),
      'masked_lm_ids': ((8, PREDS), 'int32'), 'masked_lm_weights': ((8, PREDS), 'float32'),
      'next_sentence_labels': ((8,), 'int32')}
  assert (batch['input_ids'][:, 0] == 2).all()  # [CLS] of the built vocabulary


def _ids(batches):
  return [tuple(row) for b in batches for row in b['input_ids']]


def test_order_is_a_function_of_the_seed_and_resumes_by_step(dataset):
  data, counts = dataset
  src = source(data)
  per_epoch = sum(counts) // 8
  first = take(bert_pretraining.train_dataset(src, local_batch_size=8, seed=0), per_epoch + 5)
  again = take(bert_pretraining.train_dataset(src, local_batch_size=8, seed=0), per_epoch + 5)
  other = take(bert_pretraining.train_dataset(src, local_batch_size=8, seed=1), 5)
  assert _ids(first) == _ids(again) and _ids(first[:5]) != _ids(other)
  # One epoch sees every record once.
  epoch = _ids(first)[:sum(counts)]
  all_records = [tuple(e.features.feature['input_ids'].int64_list.value)
                 for f in src.train_files
                 for e in map(tf.train.Example.FromString,
                              (bytes(r.numpy()) for r in tf.data.TFRecordDataset(f)))]
  assert sorted(epoch) == sorted(all_records)
  # Resuming at step k (also past an epoch boundary) gives what a fresh stream gives there.
  for k in (3, per_epoch + 2):
    resumed = take(bert_pretraining.train_dataset(src, local_batch_size=8, seed=0, start_step=k), 3)
    assert _ids(resumed) == _ids(first[k:k + 3])


def test_shards_read_disjoint_whole_files(dataset):
  data, _ = dataset
  src = source(data)
  assert bert_pretraining.host_files(src, 0, 2) == list(src.train_files[0::2])
  assert bert_pretraining.host_files(src, 1, 2) == list(src.train_files[1::2])
  with pytest.raises(DataError, match='4 training files for 8 input shards'):
    bert_pretraining.host_files(src, 0, 8)


@pytest.mark.parametrize('num_shards,batch', [(1, 10), (2, 8), (3, 5)])
def test_eval_sees_every_example_exactly_once(dataset, num_shards, batch):
  data, _ = dataset
  src = source(data)
  total = bert_pretraining.eval_count(src)
  seen, batches = [], []
  for shard in range(num_shards):
    out = list(bert_pretraining.eval_dataset(src, local_batch_size=batch, total=total,
                                             shard=shard, num_shards=num_shards).as_numpy_iterator())
    batches.append(len(out))
    for b in out:
      real = b['mask'] == 1
      assert (b['input_ids'][~real] == 0).all() and (b['masked_lm_weights'][~real] == 0).all()
      seen += [tuple(r) for r in b['input_ids'][real]]
  assert len(set(batches)) == 1  # every host runs the same number of eval steps
  expected = [tuple(e.features.feature['input_ids'].int64_list.value)
              for e in map(tf.train.Example.FromString,
                           (bytes(r.numpy()) for r in tf.data.TFRecordDataset(src.eval_files)))]
  assert sorted(seen) == sorted(expected) and len(seen) == 37


def _write(path, features):
  with tf.io.TFRecordWriter(str(path)) as w:
    w.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def _ints(n):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[1] * n))


def _record(seq=SEQ, preds=PREDS, drop=()):
  f = {'input_ids': _ints(seq), 'input_mask': _ints(seq), 'segment_ids': _ints(seq),
       'masked_lm_positions': _ints(preds), 'masked_lm_ids': _ints(preds),
       'masked_lm_weights': tf.train.Feature(float_list=tf.train.FloatList(value=[1.0] * preds)),
       'next_sentence_labels': _ints(1)}
  return {k: v for k, v in f.items() if k not in drop}


def _read_all(src):
  ds = bert_pretraining.train_dataset(src, local_batch_size=1, seed=0)
  return next(bert_pretraining.iterate(ds, list(src.train_files), SEQ, PREDS))


def test_wrong_sequence_length_names_the_file_and_the_lengths(tmp_path):
  _write(tmp_path / 'part-00000-of-00001', _record(seq=128))
  _write(tmp_path / 'eval_10k', _record())
  with pytest.raises(DataError) as error:
    _read_all(source(str(tmp_path)))
  message = str(error.value)
  assert 'part-00000-of-00001' in message
  assert 'input_ids has 128 values, expected 32 (max_seq_length)' in message


def test_missing_features_are_named(tmp_path):
  _write(tmp_path / 'part-00000-of-00001', _record(drop=('masked_lm_weights', 'next_sentence_labels')))
  _write(tmp_path / 'eval_10k', _record())
  with pytest.raises(DataError, match=r"part-00000-of-00001: record 0 .*missing features "
                                      r"\['masked_lm_weights', 'next_sentence_labels'\]"):
    _read_all(source(str(tmp_path)))


def test_image_records_are_not_bert_records(tmp_path):
  _write(tmp_path / 'part-00000-of-00001', {'image/encoded': tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[b'x']))})
  _write(tmp_path / 'eval_10k', _record())
  with pytest.raises(DataError, match=r"missing features \['input_ids', .*it has features \['image/encoded'\]"):
    _read_all(source(str(tmp_path)))


def test_layout_problems_are_named_before_reading(tmp_path, dataset):
  data, _ = dataset
  with pytest.raises(DataError, match='no such directory'):
    source(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match="no training files match 'part-\\*'"):
    source(str(tmp_path / 'empty'))
  with pytest.raises(DataError, match='max_seq_length=32 but the recipe asks for 128'):
    bert_pretraining.BertSource.from_dirs(data, max_seq_length=128, max_predictions_per_seq=PREDS)
  (tmp_path / 'zero').mkdir()
  (tmp_path / 'zero' / 'part-00000-of-00001').write_bytes(b'')
  with pytest.raises(DataError, match='zero-byte file'):
    source(str(tmp_path / 'zero'))
