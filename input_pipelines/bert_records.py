"""Writes BERT pretraining TFRecords exactly as MLPerf's ``create_pretraining_data.py`` does.

Input is plain text, one sentence a line, a blank line between documents. Output records
hold the seven features MLPerf's BERT reads, every integer as int64 and the weights as
float::

  input_ids, input_mask, segment_ids            [max_seq_length]   ([CLS] A [SEP] B [SEP], 0-padded)
  masked_lm_positions, masked_lm_ids            [max_predictions_per_seq]  (0-padded)
  masked_lm_weights                             [max_predictions_per_seq]  (1.0 real, 0.0 padding)
  next_sentence_labels                          [1]   (1: B is a random segment, 0: B follows A)

The semantics are the reference's, decision for decision and in the same order of draws
from ``random.Random(seed)``: documents are shuffled; each is cut into chunks of sentences
up to a target length (the maximum, or with ``short_seq_prob`` a random shorter one); a
chunk splits into A and B at a random sentence boundary, and half the time (always for a
one-sentence chunk) B is taken from a random other document instead, the unused sentences
going back; the pair is truncated from a random end; 15% of the tokens (``masked_lm_prob``,
at most ``max_predictions_per_seq``, never [CLS]/[SEP]) are picked for prediction, and of
those 80% become [MASK], 10% stay, 10% become a random vocabulary token; all of it is
repeated ``dupe_factor`` times with fresh masks, and the instances are shuffled and written
round-robin to the output files. tests/test_bert_records.py runs the reference script
(``bert-tensorflow``) on the same text and requires the same records in the same files and
order (compared as protos: the reference's bytes vary with protobuf's map order; ours are
serialized with sorted keys, so a rewrite gives identical bytes).

MLPerf's data set is this with ``max_seq_length=512``, ``max_predictions_per_seq=76``,
``dupe_factor=10``, ``random_seed=12345``, the uncased 30,522-token vocabulary, one output
per input ``part-XXXXX-of-00500``; its eval set is 10,000 records picked evenly from the
records of ``eval.txt`` (`pick_eval_examples`, as ``pick_eval_samples.py``).

Beside the records, ``podium_dataset.json`` records the counts per file and the parameters,
so the reader knows the eval size and checks the model's sequence length and vocabulary
without reading a record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from input_pipelines.bert_tokenizer import FullTokenizer
from input_pipelines import manifest as manifest_lib
from input_pipelines import shard_writer
from input_pipelines.errors import DataError

MANIFEST_NAME = manifest_lib.MANIFEST_NAME
MANIFEST_FORMAT = 'bert_pretraining_tfrecord'
SPLITS = ('train', 'eval')
FEATURES = ('input_ids', 'input_mask', 'segment_ids', 'masked_lm_positions', 'masked_lm_ids',
            'masked_lm_weights', 'next_sentence_labels')


@dataclasses.dataclass(frozen=True)
class MaskingOptions:
  """The knobs of create_pretraining_data.py; the defaults are MLPerf's."""

  max_seq_length: int = 512
  max_predictions_per_seq: int = 76
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  dupe_factor: int = 10
  random_seed: int = 12345
  do_lower_case: bool = True

  def __post_init__(self):
    if self.max_seq_length < 5:
      raise ValueError(f'max_seq_length={self.max_seq_length}: need room for [CLS] A [SEP] B [SEP]')
    if self.max_predictions_per_seq < 1 or not 0 < self.masked_lm_prob < 1:
      raise ValueError(f'need max_predictions_per_seq >= 1 and 0 < masked_lm_prob < 1, got '
                       f'{self.max_predictions_per_seq}, {self.masked_lm_prob}')
    if self.dupe_factor < 1:
      raise ValueError(f'dupe_factor={self.dupe_factor} must be >= 1')


@dataclasses.dataclass
class Instance:
  """One sentence pair, masked."""

  tokens: list[str]
  segment_ids: list[int]
  masked_lm_positions: list[int]
  masked_lm_labels: list[str]
  is_random_next: bool


def read_documents(paths: Sequence[str | os.PathLike], tokenizer: FullTokenizer) -> list[list[list[str]]]:
  """Tokenized documents: lists of sentences, each a list of WordPiece tokens.

  A blank line ends a document (files do not: text runs on into the next file, as in the
  reference); sentences that tokenize to nothing are dropped, then empty documents.
  """
  documents: list[list[list[str]]] = [[]]
  for path in paths:
    with open(path, encoding='utf-8', errors='ignore') as f:
      for line in f:
        line = line.strip()
        if not line:
          documents.append([])
        tokens = tokenizer.tokenize(line)
        if tokens:
          documents[-1].append(tokens)
  return [d for d in documents if d]


def _truncate_pair(tokens_a: list[str], tokens_b: list[str], max_tokens: int,
                   rng: random.Random) -> None:
  """Drops a token from the front or the back (at random) of the longer side until it fits."""
  while len(tokens_a) + len(tokens_b) > max_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def _mask(tokens: list[str], opts: MaskingOptions, vocab_words: Sequence[str],
          rng: random.Random) -> tuple[list[str], list[int], list[str]]:
  """80/10/10 masking of ``masked_lm_prob`` of the tokens; positions come out sorted."""
  candidates = [i for i, t in enumerate(tokens) if t not in ('[CLS]', '[SEP]')]
  rng.shuffle(candidates)
  budget = min(opts.max_predictions_per_seq,
               max(1, int(round(len(tokens) * opts.masked_lm_prob))))
  output = list(tokens)
  picked: dict[int, str] = {}
  for index in candidates:
    if len(picked) >= budget:
      break
    if rng.random() < 0.8:
      replacement = '[MASK]'
    elif rng.random() < 0.5:
      replacement = tokens[index]
    else:
      replacement = vocab_words[rng.randint(0, len(vocab_words) - 1)]
    output[index] = replacement
    picked[index] = tokens[index]
  positions = sorted(picked)
  return output, positions, [picked[i] for i in positions]


def _document_instances(documents: list[list[list[str]]], index: int, opts: MaskingOptions,
                        vocab_words: Sequence[str], rng: random.Random) -> list[Instance]:
  document = documents[index]
  max_tokens = opts.max_seq_length - 3  # [CLS] A [SEP] B [SEP]
  target = max_tokens
  if rng.random() < opts.short_seq_prob:
    target = rng.randint(2, max_tokens)
  instances = []
  chunk: list[list[str]] = []
  length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    length += len(document[i])
    if i == len(document) - 1 or length >= target:
      a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
      tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
      tokens_b: list[str] = []
      is_random_next = len(chunk) == 1 or rng.random() < 0.5
      if is_random_next:
        target_b = target - len(tokens_a)
        for _ in range(10):  # another document, if one can be found in 10 draws
          other = rng.randint(0, len(documents) - 1)
          if other != index:
            break
        random_document = documents[other]
        for sentence in random_document[rng.randint(0, len(random_document) - 1):]:
          tokens_b.extend(sentence)
          if len(tokens_b) >= target_b:
            break
        i -= len(chunk) - a_end  # the unused sentences of this chunk come round again
      else:
        tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
      _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
      if not tokens_a or not tokens_b:
        raise AssertionError('a sentence pair lost a side to truncation')
      tokens = ['[CLS]', *tokens_a, '[SEP]', *tokens_b, '[SEP]']
      segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
      tokens, positions, labels = _mask(tokens, opts, vocab_words, rng)
      instances.append(Instance(tokens, segment_ids, positions, labels, is_random_next))
      chunk, length = [], 0
    i += 1
  return instances


def create_instances(documents: list[list[list[str]]], tokenizer: FullTokenizer,
                     opts: MaskingOptions, rng: random.Random) -> list[Instance]:
  """Shuffles ``documents`` in place and makes ``dupe_factor`` masked passes over them."""
  rng.shuffle(documents)
  vocab_words = list(tokenizer.vocab)
  instances = []
  for _ in range(opts.dupe_factor):
    for index in range(len(documents)):
      instances.extend(_document_instances(documents, index, opts, vocab_words, rng))
  rng.shuffle(instances)
  return instances


def _ints(values: Iterable[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values: Iterable[float]) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def to_example(instance: Instance, tokenizer: FullTokenizer, opts: MaskingOptions) -> tf.train.Example:
  seq, preds = opts.max_seq_length, opts.max_predictions_per_seq
  ids = tokenizer.convert_tokens_to_ids(instance.tokens)
  if len(ids) > seq:
    raise AssertionError(f'{len(ids)} tokens > max_seq_length {seq}')
  pad = seq - len(ids)
  lm_ids = tokenizer.convert_tokens_to_ids(instance.masked_lm_labels)
  lm_pad = preds - len(lm_ids)
  features = {
      'input_ids': _ints(ids + [0] * pad),
      'input_mask': _ints([1] * len(ids) + [0] * pad),
      'segment_ids': _ints(list(instance.segment_ids) + [0] * pad),
      'masked_lm_positions': _ints(list(instance.masked_lm_positions) + [0] * lm_pad),
      'masked_lm_ids': _ints(lm_ids + [0] * lm_pad),
      'masked_lm_weights': _floats([1.0] * len(lm_ids) + [0.0] * lm_pad),
      'next_sentence_labels': _ints([1 if instance.is_random_next else 0]),
  }
  return tf.train.Example(features=tf.train.Features(feature=features))


def write_records(input_paths: Sequence[str | os.PathLike], output_paths: Sequence[str | os.PathLike],
                  tokenizer: FullTokenizer, opts: MaskingOptions = MaskingOptions()) -> list[int]:
  """create_pretraining_data.py: text files in, records round-robin over the outputs.

  Outputs are written under temporary names and renamed when all are complete. Returns the
  record count of each output.
  """
  documents = read_documents(input_paths, tokenizer)
  if not documents:
    raise DataError(f'{", ".join(map(str, input_paths))}: no text (expected one sentence a line, '
                    'blank lines between documents)')
  instances = create_instances(documents, tokenizer, opts, random.Random(opts.random_seed))
  # Sorted map keys: the same data always gives the same bytes (protobuf's default map order
  # varies from process to process).
  return _write_serialized((to_example(inst, tokenizer, opts).SerializeToString(deterministic=True)
                            for inst in instances), output_paths)


def _write_serialized(records: Iterable[bytes], output_paths: Sequence[str | os.PathLike]) -> list[int]:
  counts = [0] * len(output_paths)
  with shard_writer.write_shards(output_paths) as shards:
    for i, record in enumerate(records):
      shards.writers[i % len(output_paths)].write(record)
      counts[i % len(output_paths)] += 1
  return counts


def pick_eval_examples(input_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike,
                       num_examples: int) -> int:
  """MLPerf's pick_eval_samples.py: record ``floor(i * n / num_examples)`` for each i."""
  records = [bytes(r.numpy()) for p in input_paths
             for r in tf.data.TFRecordDataset(os.fspath(p))]
  if len(records) < num_examples:
    raise DataError(f'{", ".join(map(str, input_paths))} hold {len(records)} records, fewer '
                    f'than the {num_examples} eval examples asked for: use more eval text, a '
                    'larger dupe_factor, or fewer examples')
  ratio = len(records) / num_examples
  return _write_serialized((records[int(i * ratio)] for i in range(num_examples)),
                           [output_path])[0]


def file_sha256(path: str | os.PathLike) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_manifest(data_dir: str) -> dict[str, Any] | None:
  """The manifest of ``data_dir``, or None when there is none."""
  return manifest_lib.read_manifest(data_dir, MANIFEST_FORMAT)


def write_manifest(data_dir: str, opts: MaskingOptions, splits: Mapping[str, Mapping[str, int]],
                   *, vocab_path: str | os.PathLike, vocab_size: int, **extra: Any) -> dict[str, Any]:
  """Writes the manifest atomically: ``splits`` maps split -> {file name: record count}."""
  manifest = {
      'format': MANIFEST_FORMAT,
      **dataclasses.asdict(opts),
      'vocab_size': vocab_size,
      'vocab_sha256': file_sha256(vocab_path),
      'splits': {split: {'num_examples': sum(files.values()), 'files': dict(files)}
                 for split, files in splits.items()},
      **extra,
  }
  manifest_lib.write_manifest(data_dir, manifest)
  return manifest


def shard_name(index: int, total: int) -> str:
  """``part-00003-of-00500``: the MLPerf training file names."""
  return f'part-{index:05d}-of-{total:05d}'
