"""LibriSpeech input: the corpus layout, its TFRecords, characters, and length-bucketed batches.

Layout read (the corpus as openslr.org ships it, and what `speech_corpus` writes)::

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   ("<id> <TRANSCRIPT>" lines)

`write_dataset` converts splits of it into speech TFRecords with an index of every record
(`librispeech_records`); ``python -m input_pipelines.librispeech --source DIR --out DIR``
does it from the command line.

Batches. Utterances are grouped by length into a few buckets so that a batch holds
utterances of similar length: every batch has the same shape ``[B, max bucket length]``
plus its bucket index, and the model runs on the bucket's length only (a static slice per
bucket; see benchmarks/wav2vec2.py): a handful of static shapes, compiled once. Two ways:

* ``crop`` (pretraining, as fairseq crops each batch to its shortest utterance): bucket i
  holds utterances of ``[L_i, L_{i+1})`` samples, each cropped at a random offset to
  exactly ``L_i``; shorter than ``L_0`` is dropped (fairseq's min_sample_size), longer than
  the last bucket is cropped to it (max_sample_size);
* ``pad`` (fine-tuning and every eval): bucket i holds ``(L_{i-1}, L_i]``, padded to ``L_i``
  with the true lengths in ``length``; the last bucket is widened to hold the longest
  utterance, so nothing is cropped or dropped.

Order and sharding. Each input shard reads whole files (``files[shard::shards]``). An epoch's
plan is a function of (seed, epoch) only: each shard shuffles its utterances within each
bucket, every shard contributes the same number of batches per bucket (the smallest
shard's, so all hosts agree on the bucket of every step), and the sequence of buckets is
shuffled. Step k is batch ``k mod steps_per_epoch`` of epoch ``k // steps_per_epoch``, so a
run resumed at ``start_step`` reads exactly the batches it would have read. Eval visits every
utterance once, in padded batches with a ``mask``; every shard yields the same number.

Audio is scaled to [-1, 1) (int16 / 32768) and, with ``normalize`` (fairseq's
``task.normalize``, used by the LARGE models; the paper's BASE runs without), each utterance
is normalised to zero mean and unit variance over its own samples before cropping.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from input_pipelines import librispeech_records as records
from input_pipelines.errors import DataError

# The character vocabulary of the published LibriSpeech CTC models (fairseq's dict.ltr.txt in
# frequency order after the special symbols, as transformers' facebook/wav2vec2-base-960h
# vocab.json has it): index 0 is the CTC blank, '|' separates words.
VOCABULARY = ('<pad>', '<s>', '</s>', '<unk>', '|', 'E', 'T', 'A', 'O', 'N', 'I', 'H', 'S', 'R',
              'D', 'L', 'U', 'M', 'W', 'C', 'F', 'G', 'Y', 'P', 'B', 'V', 'K', "'", 'X', 'J', 'Q',
              'Z')
BLANK = 0
UNKNOWN = 3
WORD_DELIMITER = 4
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCABULARY) if len(c) == 1}
NORMALIZE_EPSILON = 1e-5  # fairseq's F.layer_norm over the waveform
MODES = ('crop', 'pad')


def normalize_transcript(text: str) -> str:
  """Upper case, single spaces, no leading or trailing space (LibriSpeech's own form)."""
  return ' '.join(text.upper().split())


def encode_transcript(text: str) -> np.ndarray:
  """Character ids; spaces become '|', characters outside the vocabulary '<unk>'."""
  text = normalize_transcript(text)
  return np.asarray([_CHAR_TO_ID.get('|' if c == ' ' else c, UNKNOWN) for c in text], np.int32)


def decode_tokens(ids: Sequence[int]) -> str:
  """The text of character ids (no CTC collapsing; blanks are skipped, '|' is a space)."""
  return ''.join(' ' if i == WORD_DELIMITER else VOCABULARY[i] for i in ids if i != BLANK).strip()


# -- the LibriSpeech layout -------------------------------------------------------------------

def _numeric_sort(names):
  return sorted(names, key=lambda n: (0, int(n)) if n.isdigit() else (1, n))


def read_librispeech_split(root: str, split: str) -> Iterator[records.Utterance]:
  """The utterances of ``<root>/<split>`` in speaker, chapter, utterance order.

  FLAC (or WAV) is decoded with soundfile; anything not 16 kHz mono, a transcript line
  without audio or audio without a transcript line is a DataError naming the file.
  """
  import soundfile  # A PyPI wheel with libsndfile inside: FLAC without system packages.

  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataError(f'{split_dir}: no such directory; expected the LibriSpeech layout '
                    '<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt')
  found = False
  for speaker in _numeric_sort(os.listdir(split_dir)):
    speaker_dir = os.path.join(split_dir, speaker)
    if not os.path.isdir(speaker_dir):
      continue
    for chapter in _numeric_sort(os.listdir(speaker_dir)):
      chapter_dir = os.path.join(speaker_dir, chapter)
      if not os.path.isdir(chapter_dir):
        continue
      trans = os.path.join(chapter_dir, f'{speaker}-{chapter}.trans.txt')
      if not os.path.isfile(trans):
        raise DataError(f'{trans}: missing; every chapter directory holds its transcripts')
      audio_files = {os.path.splitext(n)[0]: os.path.join(chapter_dir, n)
                     for n in os.listdir(chapter_dir) if n.endswith(('.flac', '.wav'))}
      with open(trans, encoding='utf-8') as f:
        lines = [line.rstrip('\n') for line in f if line.strip()]
      listed = set()
      for number, line in enumerate(lines, 1):
        uid, _, text = line.partition(' ')
        if not text.strip():
          raise DataError(f'{trans}:{number}: expected "<id> <TRANSCRIPT>", got {line!r}')
        if uid not in audio_files:
          raise DataError(f'{trans}:{number}: no audio {uid}.flac in {chapter_dir}')
        listed.add(uid)
        path = audio_files[uid]
        try:
          audio, rate = soundfile.read(path, dtype='int16', always_2d=True)
        except Exception as e:  # soundfile.LibsndfileError and friends
          raise DataError(f'{path}: cannot decode ({e})') from e
        if rate != records.SAMPLE_RATE or audio.shape[1] != 1:
          raise DataError(f'{path}: {rate} Hz, {audio.shape[1]} channel(s); LibriSpeech is '
                          f'{records.SAMPLE_RATE} Hz mono')
        found = True
        yield records.Utterance(uid, audio[:, 0], normalize_transcript(text), speaker, chapter)
      unlisted = sorted(set(audio_files) - listed)
      if unlisted:
        raise DataError(f'{chapter_dir}: audio without a transcript line in {trans}: '
                        f'{", ".join(unlisted[:5])}')
  if not found:
    raise DataError(f'{split_dir}: no utterances found')


def write_dataset(source_root: str, out_dir: str, splits: Sequence[str], *,
                  num_shards: int | dict[str, int] = 8) -> dict:
  """Converts LibriSpeech-layout splits to speech TFRecords in `out_dir`; returns the manifest."""
  manifest = None
  for split in splits:
    shards = num_shards[split] if isinstance(num_shards, dict) else num_shards
    manifest = records.write_split(out_dir, split, read_librispeech_split(source_root, split),
                                   shards)
  return manifest


# -- buckets and batches ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bucketing:
  """Bucket lengths in samples (ascending) and how utterances fit them (`MODES`)."""

  lengths: tuple[int, ...]
  mode: str

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'bucketing mode {self.mode!r}; valid: {", ".join(MODES)}')
    if not self.lengths or list(self.lengths) != sorted(set(self.lengths)) or self.lengths[0] < 1:
      raise ValueError(f'bucket lengths {self.lengths} must be positive and strictly increasing')

  def covering(self, longest: int) -> 'Bucketing':
    """Pad mode: the same buckets, the last widened (or one added) to hold `longest` samples."""
    if self.mode != 'pad' or longest <= self.lengths[-1]:
      return self
    return Bucketing(self.lengths + (_round_up(longest, 1600),), self.mode)

  def assign(self, num_samples: np.ndarray) -> np.ndarray:
    """The bucket of each utterance; -1 for dropped (shorter than the first, crop mode)."""
    lengths = np.asarray(self.lengths)
    n = np.asarray(num_samples)
    if self.mode == 'crop':
      return np.searchsorted(lengths, n, side='right') - 1
    bucket = np.searchsorted(lengths, n, side='left')
    return np.where(bucket < len(lengths), bucket, -1)


def _round_up(n: int, multiple: int) -> int:
  return -(-int(n) // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class _Examples:
  """Utterances of one or more splits, in file order, with their input shard."""

  splits: tuple[str, ...]
  split_of: np.ndarray      # [N] index into splits
  position: np.ndarray      # [N] record position within its split
  num_samples: np.ndarray   # [N]
  shard: np.ndarray         # [N] input shard (by file)

  @classmethod
  def gather(cls, source: records.SpeechSource, splits: Sequence[str], num_shards: int,
             *, allow_empty_shards: bool) -> '_Examples':
    split_of, position, num_samples, file_order = [], [], [], []
    files = 0
    for s, split in enumerate(splits):
      index = source.index(split)
      split_of.append(np.full(len(index), s, np.int32))
      position.append(np.arange(len(index), dtype=np.int64))
      num_samples.append(index.num_samples)
      file_order.append(index.file_index.astype(np.int64) + files)
      files += len(index.files)
    if files < num_shards and not allow_empty_shards:
      raise DataError(f'{source.data_dir}: {", ".join(splits)} have {files} files but there '
                      f'are {num_shards} input shards; each shard reads whole files: re-write '
                      'the data with more shards')
    return cls(tuple(splits), np.concatenate(split_of), np.concatenate(position),
               np.concatenate(num_samples), np.concatenate(file_order) % num_shards)


def _seed(*parts: int) -> np.random.Generator:
  return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


class SpeechBatches:
  """Length-bucketed, sharded, deterministic batches of one speech data set (module docstring).

  `shards` are the input shards this process reads (each contributes `batch_per_shard`
  rows, concatenated in shard order); `num_shards` is the total. Batches are dicts of numpy
  arrays: ``audio`` float32 [B, last bucket length], ``length`` int32 [B], ``bucket`` int32 [B],
  ``step`` int32 [B] (train: the global step, for schedules inside the loss), with
  ``labels`` int32 [B, max_label_length] and ``label_length`` int32 [B] when `labels`, and
  ``mask`` int32 [B] and ``index`` int32 [B] (the utterance's eval position) for eval.
  """

  def __init__(self, source: records.SpeechSource, *, train_splits: Sequence[str],
               eval_split: str, train_bucketing: Bucketing, eval_bucketing: Bucketing,
               batch_per_shard: int, eval_batch_per_shard: int, shards: Sequence[int],
               num_shards: int, seed: int, normalize: bool, labels: bool,
               max_label_length: int = 0, workers: int = 4):
    if batch_per_shard < 1 or eval_batch_per_shard < 1:
      raise ValueError(f'batch sizes per shard must be >= 1, got {batch_per_shard}, '
                       f'{eval_batch_per_shard}')
    if eval_bucketing.mode != 'pad':
      raise ValueError('eval batches pad (every utterance is seen whole, exactly once)')
    self.source = source
    self.seed = int(seed)
    self.shards = tuple(shards)
    self.num_shards = int(num_shards)
    self.batch = int(batch_per_shard)
    self.eval_batch = int(eval_batch_per_shard)
    self.normalize = normalize
    self.labels = labels
    self.workers = workers
    self.train = _Examples.gather(source, train_splits, num_shards, allow_empty_shards=False)
    self.eval = _Examples.gather(source, [eval_split], num_shards, allow_empty_shards=True)
    longest_train = int(self.train.num_samples.max())
    self.train_bucketing = train_bucketing.covering(longest_train)
    self.eval_bucketing = eval_bucketing.covering(int(self.eval.num_samples.max()))
    # Crop mode puts utterances longer than the last bucket into it (cropped: fairseq's
    # max_sample_size); pad mode's last bucket holds the longest.
    self.train_bucket = self.train_bucketing.assign(self.train.num_samples)
    self.eval_bucket = self.eval_bucketing.assign(self.eval.num_samples)
    longest_text = max(source.max_text_length(s) for s in (*train_splits, eval_split))
    self.max_label_length = int(max_label_length or longest_text)
    if labels and longest_text > self.max_label_length:
      raise DataError(f'{source.data_dir}: a transcript has {longest_text} characters, more '
                      f'than data.max_label_length={self.max_label_length}; raise it (or set 0: '
                      'the longest transcript)')
    self.train_width = self.train_bucketing.lengths[-1]
    self.eval_width = self.eval_bucketing.lengths[-1]
    self._per_bucket = self._batches_per_bucket()
    self.steps_per_epoch = int(self._per_bucket.sum())
    if self.steps_per_epoch == 0:
      counts = np.bincount(self.train_bucket[self.train_bucket >= 0],
                           minlength=len(self.train_bucketing.lengths))
      raise DataError(f'{source.data_dir}: no full batch of {self.batch} utterances in any '
                      f'bucket of {self.train_bucketing.lengths} samples in every shard '
                      f'(utterances per bucket: {counts.tolist()}); use a smaller batch or '
                      'fewer input shards')
    self._epoch_cache: tuple[int, list] | None = None
    self._eval_plan = self._plan_eval()

  # -- counts ------------------------------------------------------------------------------

  @property
  def train_examples(self) -> int:
    """Utterances one epoch trains on (all shards)."""
    return self.steps_per_epoch * self.batch * self.num_shards

  @property
  def eval_examples(self) -> int:
    return len(self.eval.num_samples)

  @property
  def num_buckets(self) -> int:
    return len(self.train_bucketing.lengths)

  def _batches_per_bucket(self) -> np.ndarray:
    per_shard = np.zeros((self.num_shards, self.num_buckets), np.int64)
    kept = self.train_bucket >= 0
    np.add.at(per_shard, (self.train.shard[kept], self.train_bucket[kept]), 1)
    return (per_shard // self.batch).min(axis=0)

  # -- plans -------------------------------------------------------------------------------

  def _epoch(self, epoch: int) -> list:
    """[(bucket, {shard: example ids}) per step] of one epoch (cached: the current one)."""
    if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
      return self._epoch_cache[1]
    members = {}
    for shard in self.shards:
      for bucket in range(self.num_buckets):
        ids = np.flatnonzero((self.train.shard == shard) & (self.train_bucket == bucket))
        members[shard, bucket] = _seed(self.seed, epoch, shard, bucket, 1).permutation(ids)
    order = np.repeat(np.arange(self.num_buckets), self._per_bucket)
    order = _seed(self.seed, epoch, 2).permutation(order)
    seen = np.zeros(self.num_buckets, np.int64)
    plan = []
    for bucket in order:
      r = seen[bucket]
      seen[bucket] += 1
      plan.append((int(bucket), {s: members[s, bucket][r * self.batch:(r + 1) * self.batch]
                                 for s in self.shards}))
    self._epoch_cache = (epoch, plan)
    return plan

  def bucket_sequence(self, start_step: int, count: int) -> list[int]:
    """The bucket of each of `count` steps from `start_step` (no audio is read)."""
    return [self._epoch(k // self.steps_per_epoch)[k % self.steps_per_epoch][0]
            for k in range(start_step, start_step + count)]

  def _plan_eval(self) -> list:
    """[(bucket, {shard: example ids (maybe fewer than the batch)})], identical step count on
    every shard: each bucket gets the batches its largest shard needs."""
    plan = []
    for bucket in range(len(self.eval_bucketing.lengths)):
      ids = {s: np.flatnonzero((self.eval.shard == s) & (self.eval_bucket == bucket))
             for s in range(self.num_shards)}
      steps = max(-(-len(v) // self.eval_batch) for v in ids.values())
      for j in range(steps):
        plan.append((bucket, {s: ids[s][j * self.eval_batch:(j + 1) * self.eval_batch]
                              for s in self.shards}))
    return plan

  @property
  def eval_steps(self) -> int:
    return len(self._eval_plan)

  # -- batches -----------------------------------------------------------------------------

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    def make(step: int) -> dict:
      epoch = step // self.steps_per_epoch
      bucket, rows = self._epoch(epoch)[step % self.steps_per_epoch]
      ids = np.concatenate([rows[s] for s in self.shards])
      batch = self._assemble(self.train, ids, self.train_bucketing, bucket, len(ids),
                             self.train_width, epoch=epoch)
      batch['step'] = np.full(len(ids), step, np.int32)
      return batch
    yield from _ordered(make, start_step, None, self.workers)

  def eval_batches(self) -> Iterator[dict]:
    size = self.eval_batch * len(self.shards)

    def make(j: int) -> dict:
      bucket, rows = self._eval_plan[j]
      parts = []
      for s in self.shards:
        ids = rows[s]
        parts.append(np.concatenate([ids, np.full(self.eval_batch - len(ids), -1)]))
      ids = np.concatenate(parts).astype(np.int64)
      batch = self._assemble(self.eval, ids, self.eval_bucketing, bucket, size, self.eval_width,
                             epoch=0)
      batch['mask'] = (ids >= 0).astype(np.int32)
      batch['index'] = np.where(ids >= 0, ids, 0).astype(np.int32)
      return batch
    yield from _ordered(make, 0, self.eval_steps, self.workers)

  def _assemble(self, examples: _Examples, ids: np.ndarray, bucketing: Bucketing, bucket: int,
                size: int, width: int, *, epoch: int) -> dict:
    """One batch [size, width]: rows of `ids` (-1: an empty padding row) cut or padded to the
    bucket's length, zeros beyond it."""
    length = bucketing.lengths[bucket]
    audio = np.zeros((size, width), np.float32)
    lengths = np.zeros((size,), np.int32)
    labels = np.zeros((size, self.max_label_length), np.int32)
    label_lengths = np.zeros((size,), np.int32)
    for row, example in enumerate(ids):
      if example < 0:
        continue
      split = examples.splits[examples.split_of[example]]
      utterance = self.source.read(split, int(examples.position[example]))
      wave = utterance.audio.astype(np.float32) / 32768.0
      if self.normalize:
        wave = (wave - wave.mean()) / np.sqrt(wave.var() + NORMALIZE_EPSILON)
      if bucketing.mode == 'crop':
        start = _seed(self.seed, epoch, int(example), 3).integers(0, wave.size - length + 1)
        wave = wave[start:start + length]
      audio[row, :wave.size] = wave
      lengths[row] = wave.size
      if self.labels:
        tokens = encode_transcript(utterance.text)
        if tokens.size > self.max_label_length:
          raise DataError(f'utterance {utterance.id}: {tokens.size} characters, more than '
                          f'data.max_label_length={self.max_label_length}')
        labels[row, :tokens.size] = tokens
        label_lengths[row] = tokens.size
    batch = {'audio': audio, 'length': lengths, 'bucket': np.full((size,), bucket, np.int32)}
    if self.labels:
      batch.update(labels=labels, label_length=label_lengths)
    return batch


def _ordered(make, start: int, stop: int | None, workers: int) -> Iterator[dict]:
  """make(start), make(start + 1), ... built by `workers` threads ahead, yielded in order."""
  depth = max(2 * workers, 2)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = []
    k = start
    try:
      while True:
        while len(pending) < depth and (stop is None or k < stop):
          pending.append(pool.submit(make, k))
          k += 1
        if not pending:
          return
        yield pending.pop(0).result()
    finally:
      for future in pending:
        future.cancel()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m input_pipelines.librispeech',
      description='Convert LibriSpeech-layout splits (FLAC + trans.txt) to podium speech '
                  'TFRecords with their index.')
  parser.add_argument('--source', required=True, help='the LibriSpeech root (holds the splits)')
  parser.add_argument('--out', required=True, help='output directory (local or gs://)')
  parser.add_argument('--splits', required=True,
                      help='comma-separated, e.g. train-clean-100,dev-clean')
  parser.add_argument('--shards', type=int, default=64, help='shards per split (default 64)')
  args = parser.parse_args(argv)
  splits = [s for s in args.splits.split(',') if s]
  try:
    manifest = write_dataset(args.source, args.out, splits, num_shards=args.shards)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for split in splits:
    info = manifest['splits'][split]
    print(f'{split}: {info["num_examples"]} utterances, longest '
          f'{info["max_num_samples"] / records.SAMPLE_RATE:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
