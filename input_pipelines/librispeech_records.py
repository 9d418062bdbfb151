"""Speech TFRecords: 16 kHz audio and transcripts, written once, read by random access.

Each split (``train-clean-100``, ``dev-clean``, ...) is written as shards
``<split>-00000-of-00016`` of ``tf.train.Example`` protos::

    audio/pcm16     bytes   little-endian int16 samples, mono, 16 kHz
    audio/num_samples  int64
    audio/sample_rate  int64 (16000)
    text            bytes   the transcript (LibriSpeech: upper case, apostrophes, spaces)
    id              bytes   the utterance id (``1272-128104-0000``)
    speaker, chapter  bytes

Beside the shards, ``podium_dataset.json`` holds an index of every record: its byte offset
and size in its shard, its number of samples and its transcript length::

    {"format": "speech_tfrecord", "sample_rate": 16000,
     "splits": {"dev-clean": {"num_examples": 2703, "max_num_samples": 522320,
                              "max_text_length": 516,
                              "files": {"dev-clean-00000-of-00004": {
                                  "offsets": [...], "sizes": [...], "num_samples": [...],
                                  "text_lengths": [...]}, ...}}}}

Why an index: batching speech by length wants to know every utterance's length before
reading it, and a global shuffle of utterances (not a shuffle buffer over a stream) wants to
read any record at any time. A TFRecord is ``uint64 length, uint32 crc, data, uint32 crc``,
so a record is one ranged read of ``16 + size`` bytes at its offset (local disk or GCS alike).
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from input_pipelines import manifest as manifest_lib
from input_pipelines import shard_writer
from input_pipelines.errors import DataError
from input_pipelines.manifest import MANIFEST_NAME

MANIFEST_FORMAT = 'speech_tfrecord'
SAMPLE_RATE = 16_000
_HEADER = 12   # uint64 length + uint32 masked crc of the length
_FOOTER = 4    # uint32 masked crc of the data


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One utterance: int16 samples at 16 kHz and its transcript."""

  id: str
  audio: np.ndarray
  text: str
  speaker: str = ''
  chapter: str = ''


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}'


def shard_pattern(split: str) -> re.Pattern[str]:
  return re.compile(rf'^{re.escape(split)}-(\d{{5}})-of-(\d{{5}})$')


def to_tf_example(utterance: Utterance) -> tf.train.Example:
  audio = np.asarray(utterance.audio)
  if audio.dtype != np.int16 or audio.ndim != 1:
    raise ValueError(f'utterance {utterance.id}: audio must be 1-D int16 samples, got '
                     f'{audio.dtype} of shape {audio.shape}')

  def b(value: str | bytes) -> tf.train.Feature:
    value = value.encode() if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def i(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

  return tf.train.Example(features=tf.train.Features(feature={
      'audio/pcm16': b(audio.astype('<i2').tobytes()),
      'audio/num_samples': i(audio.size),
      'audio/sample_rate': i(SAMPLE_RATE),
      'text': b(utterance.text),
      'id': b(utterance.id),
      'speaker': b(utterance.speaker),
      'chapter': b(utterance.chapter),
  }))


def parse_example(data: bytes, where: str) -> Utterance:
  """An Utterance from serialized Example bytes; DataError naming `where` if malformed."""
  try:
    example = tf.train.Example.FromString(data)
    feature = example.features.feature
    pcm = feature['audio/pcm16'].bytes_list.value[0]
    num_samples = feature['audio/num_samples'].int64_list.value[0]
    rate = feature['audio/sample_rate'].int64_list.value[0]
    text = feature['text'].bytes_list.value[0].decode()
    uid = feature['id'].bytes_list.value[0].decode()
    speaker = feature['speaker'].bytes_list.value[0].decode()
    chapter = feature['chapter'].bytes_list.value[0].decode()
  except Exception as e:  # protobuf's DecodeError, IndexError, KeyError, UnicodeDecodeError
    raise DataError(f'{where}: not a speech record ({type(e).__name__}: {e}); expected the '
                    f'features audio/pcm16, audio/num_samples, audio/sample_rate, text, id') from e
  audio = np.frombuffer(pcm, '<i2')
  if audio.size != num_samples or rate != SAMPLE_RATE:
    raise DataError(f'{where}: record says {num_samples} samples at {rate} Hz but holds '
                    f'{audio.size} samples (expected {SAMPLE_RATE} Hz); re-write the data set')
  return Utterance(uid, audio, text, speaker, chapter)


def read_manifest(data_dir: str) -> dict[str, Any] | None:
  return manifest_lib.read_manifest(data_dir, MANIFEST_FORMAT)


def write_split(out_dir: str, split: str, utterances: Iterable[Utterance],
                num_shards: int) -> dict[str, Any]:
  """Writes one split as TFRecord shards plus its index in the manifest; returns the manifest.

  Utterance ``i`` goes to shard ``i % num_shards``. Shards are written under temporary
  names and renamed when all are complete; the split is dropped from the manifest while its
  files change, so a crash leaves it absent, never wrong. Shards of an earlier write of the
  split with another shard count are removed.
  """
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  if not re.fullmatch(r'[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*', split):
    raise ValueError(f'split name {split!r}: use letters, digits, dots, underscores and '
                     'single dashes (e.g. train-clean-100)')
  tf.io.gfile.makedirs(out_dir)
  manifest = read_manifest(out_dir) or {'format': MANIFEST_FORMAT, 'sample_rate': SAMPLE_RATE,
                                        'splits': {}}
  manifest['splits'] = {k: v for k, v in manifest['splits'].items() if k != split}
  manifest_lib.write_manifest(out_dir, manifest)
  names = [shard_name(split, i, num_shards) for i in range(num_shards)]
  index = [{'offsets': [], 'sizes': [], 'num_samples': [], 'text_lengths': []} for _ in names]
  offsets = [0] * num_shards
  with shard_writer.write_shards([os.path.join(out_dir, n) for n in names]) as shards:
    for i, utterance in enumerate(utterances):
      shard = i % num_shards
      data = to_tf_example(utterance).SerializeToString()
      shards.writers[shard].write(data)
      entry = index[shard]
      entry['offsets'].append(offsets[shard])
      entry['sizes'].append(len(data))
      entry['num_samples'].append(int(np.asarray(utterance.audio).size))
      entry['text_lengths'].append(len(utterance.text))
      offsets[shard] += _HEADER + len(data) + _FOOTER
    shards.close()
    if not index[-1]['offsets']:
      total = sum(len(e['offsets']) for e in index)
      raise ValueError(f'{split}: {total} utterances cannot fill {num_shards} shards; use '
                       f'num_shards <= {max(total, 1)}')
    for path, size in zip(shards.tmp_paths, offsets):
      written = tf.io.gfile.stat(path).length
      if written != size:
        raise DataError(f'{path}: wrote {written} bytes, the index says {size}: the TFRecord '
                        'writer compressed or framed records unexpectedly')
  shard_writer.remove_stale_shards(out_dir, shard_pattern(split), names)
  manifest = read_manifest(out_dir)
  manifest['splits'][split] = {
      'num_examples': sum(len(e['offsets']) for e in index),
      'max_num_samples': max(max(e['num_samples']) for e in index),
      'max_text_length': max(max(e['text_lengths']) for e in index),
      'files': dict(zip(names, index)),
  }
  manifest_lib.write_manifest(out_dir, manifest)
  return manifest


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Every record of one split, in shard order: which file, where, how long."""

  files: tuple[str, ...]           # absolute paths, shard order
  file_index: np.ndarray           # [N] int32: position in `files`
  offsets: np.ndarray              # [N] int64: byte offset of the record in its file
  sizes: np.ndarray                # [N] int64: bytes of the serialized Example
  num_samples: np.ndarray          # [N] int64
  text_lengths: np.ndarray         # [N] int64

  def __len__(self) -> int:
    return int(self.offsets.size)


class SpeechSource:
  """The splits of a speech TFRecord directory and random access to their records."""

  def __init__(self, data_dir: str, manifest: Mapping[str, Any]):
    self.data_dir = data_dir
    self.manifest = manifest
    self._indexes: dict[str, SplitIndex] = {}

  @classmethod
  def from_dir(cls, data_dir: str | os.PathLike[str]) -> 'SpeechSource':
    """Checks the manifest against the files; DataError naming what is wrong."""
    data_dir = os.fspath(data_dir)
    if not tf.io.gfile.isdir(data_dir):
      raise DataError(f'{data_dir}: no such directory. Expected speech TFRecords written by '
                      'input_pipelines.librispeech (shards <split>-00000-of-0000N and '
                      f'{MANIFEST_NAME})')
    manifest = read_manifest(data_dir)
    if manifest is None:
      raise DataError(f'{data_dir} has no {MANIFEST_NAME}: write the data set with '
                      '`python -m input_pipelines.librispeech` (its index of every record is '
                      'what length bucketing reads)')
    names = set(n.rstrip('/') for n in tf.io.gfile.listdir(data_dir))
    for split, info in manifest.get('splits', {}).items():
      for name, entry in info['files'].items():
        path = os.path.join(data_dir, name)
        if name not in names:
          raise DataError(f'{path}: listed in {MANIFEST_NAME} for {split} but absent (an '
                          'incomplete copy?)')
        expected = int(entry['offsets'][-1]) + _HEADER + int(entry['sizes'][-1]) + _FOOTER
        size = tf.io.gfile.stat(path).length
        if size != expected:
          raise DataError(f'{path}: {size} bytes, but its index in {MANIFEST_NAME} ends at '
                          f'{expected}: the file was truncated or changed after writing; '
                          're-copy or re-write it')
    return cls(data_dir, manifest)

  @property
  def splits(self) -> list[str]:
    return sorted(self.manifest.get('splits', {}))

  def _info(self, split: str) -> Mapping[str, Any]:
    splits = self.manifest.get('splits', {})
    if split not in splits:
      raise DataError(f'{self.data_dir} has no split {split!r}; it has '
                      f'{", ".join(sorted(splits)) or "none"}')
    return splits[split]

  def num_examples(self, split: str) -> int:
    return int(self._info(split)['num_examples'])

  def max_num_samples(self, split: str) -> int:
    return int(self._info(split)['max_num_samples'])

  def max_text_length(self, split: str) -> int:
    return int(self._info(split)['max_text_length'])

  def index(self, split: str) -> SplitIndex:
    if split not in self._indexes:
      info = self._info(split)
      names = sorted(info['files'])
      cols = {k: [] for k in ('file_index', 'offsets', 'sizes', 'num_samples', 'text_lengths')}
      for i, name in enumerate(names):
        entry = info['files'][name]
        n = len(entry['offsets'])
        cols['file_index'].append(np.full(n, i, np.int32))
        for key in ('offsets', 'sizes', 'num_samples', 'text_lengths'):
          cols[key].append(np.asarray(entry[key], np.int64))
      self._indexes[split] = SplitIndex(
          files=tuple(os.path.join(self.data_dir, n) for n in names),
          **{k: np.concatenate(v) for k, v in cols.items()})
    return self._indexes[split]

  def read(self, split: str, position: int) -> Utterance:
    """Record `position` of `split` (its index in `index(split)`), by one ranged read."""
    index = self.index(split)
    path = index.files[index.file_index[position]]
    offset, size = int(index.offsets[position]), int(index.sizes[position])
    where = f'{path} (record at byte {offset})'
    try:
      with tf.io.gfile.GFile(path, 'rb') as f:
        f.seek(offset)
        raw = f.read(_HEADER + size)
    except tf.errors.NotFoundError as e:
      raise DataError(f'{path}: file vanished while being read; restore it') from e
    if len(raw) != _HEADER + size or struct.unpack('<Q', raw[:8])[0] != size:
      raise DataError(f'{where}: the TFRecord header does not match the index in '
                      f'{MANIFEST_NAME} (the file changed after writing); re-write the data set')
    utterance = parse_example(raw[_HEADER:], where)
    if utterance.audio.size != index.num_samples[position]:
      raise DataError(f'{where}: {utterance.audio.size} samples, the index says '
                      f'{index.num_samples[position]}; re-write the data set')
    return utterance
