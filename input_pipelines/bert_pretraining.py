"""MLPerf BERT pretraining input on tf.data: per-host files, deterministic order, exactly-once eval.

Reads the records of ``create_pretraining_data.py`` (MLPerf's 500 ``part-XXXXX-of-00500``
training files and its 10,000-record ``eval_10k``; or what `bert_records` writes) and
yields host-local numpy batches::

  input_ids, input_mask, segment_ids             int32 [B, max_seq_length]
  masked_lm_positions, masked_lm_ids             int32 [B, max_predictions_per_seq]
  masked_lm_weights                              float32 [B, max_predictions_per_seq]
  next_sentence_labels                           int32 [B]
  mask (eval only)                               int32 [B]: 1 for a real example, 0 for padding

Training: each input shard reads whole files (``files[shard::num_shards]``); epoch ``e``
visits them in an order and shuffles their records with seeds from (seed, e, shard), so the
stream is a function of the seed, and ``start_step`` resumes by skipping raw records before
any parsing. Eval: every host reads the eval file(s) and keeps every ``num_shards``-th
record (MLPerf's eval set is one file), then pads with masked examples, so each eval
example counts exactly once and every host runs the same number of batches.

Records that do not fit (a missing feature, another sequence length) fail with a DataError
naming the file and the features; this module knows nothing of JAX.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from input_pipelines import bert_records
from input_pipelines.errors import DataError

TRAIN_PATTERN = 'part-*'
EVAL_PATTERN = 'eval*'
_READ_BUFFER_BYTES = 8 << 20
_MAX_PARALLEL_FILES = 16


def feature_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, tuple[int, str]]:
  """Feature -> (length, kind) of one record: kind is 'int64' or 'float'."""
  seq, preds = max_seq_length, max_predictions_per_seq
  return {'input_ids': (seq, 'int64'), 'input_mask': (seq, 'int64'),
          'segment_ids': (seq, 'int64'), 'masked_lm_positions': (preds, 'int64'),
          'masked_lm_ids': (preds, 'int64'), 'masked_lm_weights': (preds, 'float'),
          'next_sentence_labels': (1, 'int64')}


def _tf_features(max_seq_length: int, max_predictions_per_seq: int):
  return {name: tf.io.FixedLenFeature([length], tf.int64 if kind == 'int64' else tf.float32)
          for name, (length, kind) in feature_spec(max_seq_length, max_predictions_per_seq).items()}


def record_problems(record: bytes, max_seq_length: int, max_predictions_per_seq: int) -> list[str]:
  """What keeps one serialized record from being an MLPerf BERT example; empty if fine."""
  try:
    example = tf.train.Example.FromString(record)
  except Exception as e:  # protobuf's DecodeError
    return [f'not a tf.train.Example ({e})']
  found = example.features.feature
  spec = feature_spec(max_seq_length, max_predictions_per_seq)
  problems = []
  missing = [name for name in spec if name not in found]
  if missing:
    problems.append(f'missing features {missing}')
  for name, (length, kind) in spec.items():
    if name not in found:
      continue
    feature = found[name]
    values = feature.int64_list.value if kind == 'int64' else feature.float_list.value
    has = feature.WhichOneof('kind')
    expected_kind = 'int64_list' if kind == 'int64' else 'float_list'
    if has != expected_kind:
      problems.append(f'{name} is a {has}, expected {expected_kind}')
    elif len(values) != length:
      what = ('max_seq_length' if length == max_seq_length and name in ('input_ids', 'input_mask',
                                                                      'segment_ids')
              else 'max_predictions_per_seq' if length == max_predictions_per_seq else 'length')
      problems.append(f'{name} has {len(values)} values, expected {length} ({what})')
  extra = sorted(set(found) - set(spec))
  if extra and missing:
    problems.append(f'it has features {extra}')
  return problems


def check_files(paths: Sequence[str], max_seq_length: int, max_predictions_per_seq: int,
                records_per_file: int = 1) -> list[str]:
  """One message per file whose first records are not MLPerf BERT examples of this shape."""
  def check(path: str) -> str | None:
    try:
      for i, record in enumerate(tf.data.TFRecordDataset(path).take(records_per_file)):
        problems = record_problems(bytes(record.numpy()), max_seq_length, max_predictions_per_seq)
        if problems:
          return (f'{path}: record {i} does not fit MLPerf BERT pretraining with '
                  f'max_seq_length={max_seq_length}, max_predictions_per_seq='
                  f'{max_predictions_per_seq}: {"; ".join(problems)}')
    except tf.errors.DataLossError as e:
      return f'{path}: not a readable TFRecord file ({e.message.strip()})'
    except tf.errors.NotFoundError:
      return f'{path}: file not found'
    return None
  if not paths:
    return []
  with concurrent.futures.ThreadPoolExecutor(min(len(paths), _MAX_PARALLEL_FILES)) as ex:
    return [m for m in ex.map(check, paths) if m]


@dataclasses.dataclass(frozen=True)
class BertSource:
  """The train and eval files, their record counts when known, and the record shape."""

  train_files: tuple[str, ...]
  eval_files: tuple[str, ...]
  counts: Mapping[str, Mapping[str, int] | None]
  max_seq_length: int
  max_predictions_per_seq: int
  manifest: Mapping[str, Any] | None = None

  @classmethod
  def from_dirs(cls, data_dir: str, *, eval_dir: str = '', train_pattern: str = TRAIN_PATTERN,
                eval_pattern: str = EVAL_PATTERN, max_seq_length: int = 512,
                max_predictions_per_seq: int = 76) -> BertSource:
    """Finds the files; checks them against the manifest when there is one (no record read)."""
    eval_dir = eval_dir or data_dir
    train = _list(data_dir, train_pattern, 'training')
    evals = _list(eval_dir, eval_pattern, 'eval')
    overlap = sorted(set(train) & set(evals))
    if overlap:
      raise DataError(f'{overlap[0]} matches both data.train_pattern={train_pattern!r} and '
                      f'data.eval_pattern={eval_pattern!r}: make the patterns disjoint')
    counts: dict[str, dict[str, int] | None] = {'train': None, 'eval': None}
    manifest = None
    for split, directory, files in (('train', data_dir, train), ('eval', eval_dir, evals)):
      found = bert_records.read_manifest(directory)
      if found is None:
        continue
      manifest = manifest or found
      path = os.path.join(directory, bert_records.MANIFEST_NAME)
      for key, want in (('max_seq_length', max_seq_length),
                        ('max_predictions_per_seq', max_predictions_per_seq)):
        if found.get(key) != want:
          raise DataError(f'{path}: the records have {key}={found.get(key)} but the recipe asks '
                          f'for {want}: set data.{key}={found.get(key)} or use records written '
                          f'with {key}={want}')
      info = found.get('splits', {}).get(split)
      if info is None:
        continue
      listed = {os.path.join(directory, n): int(c) for n, c in info['files'].items()}
      if set(listed) != set(files):
        raise DataError(
            f'{path} does not match the {split} files in {directory} (not in the manifest: '
            f'{sorted(os.path.basename(f) for f in set(files) - set(listed)) or "none"}; '
            f'listed but absent: {sorted(os.path.basename(f) for f in set(listed) - set(files)) or "none"}): '
            'rewrite the data set, or delete the manifest')
      counts[split] = listed
    return cls(tuple(train), tuple(evals), counts, max_seq_length, max_predictions_per_seq,
               manifest)

  def num_examples(self, split: str) -> int | None:
    counts = self.counts.get(split)
    return sum(counts.values()) if counts is not None else None


def _list(directory: str, pattern: str, what: str) -> list[str]:
  if not tf.io.gfile.isdir(directory):
    exists = tf.io.gfile.exists(directory)
    raise DataError(f'{directory}: {"a file, not a directory" if exists else "no such directory"}; '
                    f'expected a directory of BERT pretraining TFRecords ({what} files '
                    f'{pattern!r})')
  names = sorted(n.rstrip('/') for n in tf.io.gfile.listdir(directory))
  files = [os.path.join(directory, n) for n in names
           if fnmatch.fnmatch(n, pattern) and not n.startswith('.') and n != bert_records.MANIFEST_NAME]
  if not files:
    raise DataError(f'{directory}: no {what} files match {pattern!r} (found: '
                    f'{", ".join(names[:8]) or "nothing"}). MLPerf names them part-00000-of-00500 '
                    '... and eval_10k; set data.train_pattern / data.eval_pattern otherwise')
  empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
  if empty:
    raise DataError(f'{empty[0]}: zero-byte file; every {what} file must hold records '
                    '(an interrupted copy leaves such files)')
  return files


def _parse_batch(serialized: tf.Tensor, max_seq_length: int, max_predictions_per_seq: int):
  parsed = tf.io.parse_example(serialized, _tf_features(max_seq_length, max_predictions_per_seq))
  out = {name: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
         for name, value in parsed.items()}
  out['next_sentence_labels'] = tf.reshape(out['next_sentence_labels'], [-1])
  return out


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options


def host_files(source: BertSource, shard: int, num_shards: int) -> list[str]:
  """The training files input shard ``shard`` reads: ``files[shard::num_shards]``."""
  if not 0 <= shard < num_shards:
    raise ValueError(f'need 0 <= shard < num_shards, got {shard}, {num_shards}')
  if len(source.train_files) < num_shards:
    raise DataError(f'{len(source.train_files)} training files for {num_shards} input shards: '
                    'each shard reads whole files, so there must be at least one per shard '
                    f'(first file: {source.train_files[0]}); write more files or use fewer shards')
  return list(source.train_files[shard::num_shards])


def train_dataset(source: BertSource, *, local_batch_size: int, seed: int, shard: int = 0,
                  num_shards: int = 1, shuffle_buffer: int = 10_000,
                  start_step: int = 0) -> tf.data.Dataset:
  """Endless batches of this shard's records; epochs follow each other without a gap."""
  if local_batch_size < 1:
    raise ValueError(f'local_batch_size must be >= 1, got {local_batch_size}')
  files = host_files(source, shard, num_shards)
  files_t = tf.constant(files)
  root = tf.constant([seed, shard], tf.int64)

  def epoch_records(epoch):
    key = tf.random.experimental.stateless_fold_in(root, epoch)
    order_key, shuffle_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    order = tf.argsort(tf.random.stateless_uniform([len(files)], seed=order_key))
    shuffle_seed = tf.random.stateless_uniform([], seed=shuffle_key, minval=None, maxval=None,
                                               dtype=tf.int64)
    records = tf.data.Dataset.from_tensor_slices(tf.gather(files_t, order)).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER_BYTES),
        cycle_length=min(len(files), _MAX_PARALLEL_FILES), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

  start_epoch, skip = 0, start_step * local_batch_size
  counts = source.counts.get('train')
  if skip and counts is not None:
    start_epoch, skip = divmod(skip, sum(counts[f] for f in files))
  ds = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(epoch_records)
  if skip:
    ds = ds.skip(skip)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = ds.map(lambda r: _parse_batch(r, source.max_seq_length, source.max_predictions_per_seq),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def count_records(paths: Sequence[str]) -> int:
  """Records in ``paths``, by a raw read (no parsing)."""
  def one(path):
    try:
      return int(tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).reduce(
          np.int64(0), lambda n, _: n + 1))
    except tf.errors.DataLossError as e:
      raise DataError(f'{path}: corrupt TFRecord ({e.message.strip()}); re-copy or re-write it') from e
  with concurrent.futures.ThreadPoolExecutor(min(len(paths), _MAX_PARALLEL_FILES)) as ex:
    return sum(ex.map(one, paths))


def eval_count(source: BertSource) -> int:
  """Eval examples: from the manifest, else counted (10,000 for MLPerf's eval_10k)."""
  known = source.num_examples('eval')
  return known if known is not None else count_records(list(source.eval_files))


def eval_num_batches(total: int, local_batch_size: int, num_shards: int) -> int:
  """Batches every shard runs: enough for the shard with the most examples."""
  return max(1, math.ceil(math.ceil(total / num_shards) / local_batch_size))


def eval_dataset(source: BertSource, *, local_batch_size: int, total: int, shard: int = 0,
                 num_shards: int = 1) -> tf.data.Dataset:
  """Every ``num_shards``-th eval record from ``shard`` on, then masked padding.

  All shards yield ``eval_num_batches(total, ...)`` batches; ``total`` is the eval set's
  size (a mismatch fails loudly at the end of the data).
  """
  num_batches = eval_num_batches(total, local_batch_size, num_shards)
  count = len(range(shard, total, num_shards))
  seq, preds = source.max_seq_length, source.max_predictions_per_seq
  records = tf.data.TFRecordDataset(list(source.eval_files), buffer_size=_READ_BUFFER_BYTES)
  records = records.shard(num_shards, shard).apply(tf.data.experimental.assert_cardinality(count))
  real = records.batch(local_batch_size).map(
      lambda r: dict(_parse_batch(r, seq, preds), mask=tf.ones(tf.shape(r)[:1], tf.int32)))
  padding = tf.data.Dataset.from_tensors({
      'input_ids': tf.zeros([seq], tf.int32), 'input_mask': tf.zeros([seq], tf.int32),
      'segment_ids': tf.zeros([seq], tf.int32),
      'masked_lm_positions': tf.zeros([preds], tf.int32),
      'masked_lm_ids': tf.zeros([preds], tf.int32),
      'masked_lm_weights': tf.zeros([preds], tf.float32),
      'next_sentence_labels': tf.constant(0, tf.int32), 'mask': tf.constant(0, tf.int32)})
  ds = real.unbatch().concatenate(padding.repeat(num_batches * local_batch_size - count))
  return ds.batch(local_batch_size, drop_remainder=True).prefetch(2).with_options(_options())


def synthetic_batch(local_batch_size: int, max_seq_length: int, max_predictions_per_seq: int,
                    vocab_size: int, seed: int) -> dict[str, np.ndarray]:
  """One fixed random batch of the real shapes: for measuring the device step alone."""
  rng = np.random.default_rng(seed)
  b, s, p = local_batch_size, max_seq_length, max_predictions_per_seq
  return {
      'input_ids': rng.integers(0, vocab_size, (b, s), dtype=np.int32),
      'input_mask': np.ones((b, s), np.int32),
      'segment_ids': (np.arange(s)[None] >= s // 2).astype(np.int32).repeat(b, 0),
      'masked_lm_positions': np.sort(rng.integers(1, s, (b, p), dtype=np.int32), axis=1),
      'masked_lm_ids': rng.integers(0, vocab_size, (b, p), dtype=np.int32),
      'masked_lm_weights': np.ones((b, p), np.float32),
      'next_sentence_labels': rng.integers(0, 2, (b,), dtype=np.int32),
  }


def iterate(dataset: tf.data.Dataset, files: Sequence[str], max_seq_length: int,
            max_predictions_per_seq: int) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches; read and parse failures become DataErrors that name the file."""
  iterator = dataset.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      found = check_files(list(files), max_seq_length, max_predictions_per_seq)
      if found:
        raise DataError('; '.join(found)) from e
      raise DataError(f'records in one of {len(files)} files do not parse as MLPerf BERT '
                      f'examples (max_seq_length={max_seq_length}, max_predictions_per_seq='
                      f'{max_predictions_per_seq}): {e.message.strip()[:500]}') from e
    except tf.errors.DataLossError as e:
      bad = [m for m in check_files(list(files), max_seq_length, max_predictions_per_seq,
                                    records_per_file=10**9) if 'not a readable' in m]
      raise DataError('; '.join(bad) if bad else f'read error in one of {len(files)} files: '
                      f'{e.message.strip()}') from e
    except tf.errors.NotFoundError as e:
      missing = [f for f in files if not tf.io.gfile.exists(f)]
      if missing:
        raise DataError(f'{", ".join(missing)}: file vanished while being read; the data set '
                        'changed under the run (restore the file)') from e
      raise
    except tf.errors.FailedPreconditionError as e:
      if 'expected to contain' not in e.message:
        raise
      raise DataError(f'the eval files hold another number of records than '
                      f'{bert_records.MANIFEST_NAME} says ({e.message.strip()}): re-write the '
                      'data set or delete the manifest') from e
    yield batch
