"""Writes image classification data in the exact on-disk format of real ImageNet TFRecords.

The format is the one tensorflow/tpu's ``tools/datasets/imagenet_to_gcs.py`` produces and
every TPU ImageNet reader expects: shards named ``train-00000-of-01024`` /
``validation-00000-of-00128`` holding ``tf.train.Example`` protos with a JPEG in
``image/encoded`` and a **1-based** ``image/class/label``. Writing small data sets (the
digits, test fixtures) in this format means the reader that trains on real ImageNet is the
reader that is tested.

Beside the shards, ``podium_dataset.json`` records the example count of every file, so a
reader knows the eval size (and can plan per-host padding) without a pass over the data::

    {"format": "imagenet_tfrecord", "num_classes": 1000, "label_offset": 1,
     "splits": {"train": {"num_examples": N, "files": {"train-00000-of-00004": n0, ...}}}}
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from input_pipelines import manifest as manifest_lib
from input_pipelines import shard_writer
from input_pipelines.errors import DataError

MANIFEST_NAME = manifest_lib.MANIFEST_NAME
MANIFEST_FORMAT = 'imagenet_tfrecord'
LABEL_OFFSET = 1  # ImageNet TFRecords store labels 1..1000; 0 was 'background' in TF-slim.
SPLITS = ('train', 'validation')
JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class ImageExample:
  """One labelled image.

  ``image`` is either encoded JPEG bytes (written as they are, like imagenet_to_gcs does
  for JPEG originals) or a uint8 array, HxWx3 (RGB JPEG) or HxW / HxWx1 (grayscale JPEG).
  ``label`` is 0-based here; the writer stores ``label + 1`` as real ImageNet does.
  """

  image: bytes | np.ndarray
  label: int
  synset: str = ''
  filename: str = ''
  text: str = ''


def shard_name(split: str, index: int, num_shards: int) -> str:
  """``train-00003-of-01024``: imagenet_to_gcs's naming, which readers glob for."""
  return f'{split}-{index:05d}-of-{num_shards:05d}'


def shard_pattern(split: str) -> re.Pattern[str]:
  """Matches the shard file names of ``split`` (group 1: index, group 2: total)."""
  return re.compile(rf'^{re.escape(split)}-(\d{{5}})-of-(\d{{5}})$')


def encode_jpeg(image: np.ndarray) -> tuple[bytes, int, int]:
  """JPEG-encodes a uint8 array; 2-D or one-channel arrays become grayscale JPEGs.

  Grayscale stays grayscale on purpose: real ImageNet holds such JPEGs while its metadata
  says 3 channels, and readers must decode with ``channels=3``.
  """
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'image array must be uint8, got {array.dtype}')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    mode = 'L'
  elif array.ndim == 3 and array.shape[-1] == 3:
    mode = 'RGB'
  else:
    raise ValueError(f'image array must be HxW, HxWx1 or HxWx3, got shape {array.shape}')
  buffer = io.BytesIO()
  Image.fromarray(array, mode=mode).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue(), array.shape[0], array.shape[1]


def _jpeg_size(data: bytes) -> tuple[int, int]:
  """Height and width from the JPEG header (PIL reads the header only, no decode)."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      if img.format != 'JPEG':
        raise ValueError(f'expected JPEG bytes, got {img.format}')
      width, height = img.size
  except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError.
    raise ValueError(f'image bytes are not a readable JPEG: {e}') from e
  return height, width


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def to_tf_example(example: ImageExample, default_filename: str) -> tf.train.Example:
  """Builds the proto imagenet_to_gcs writes (plus ``image/class/text``)."""
  if isinstance(example.image, (bytes, bytearray)):
    encoded = bytes(example.image)
    height, width = _jpeg_size(encoded)
  else:
    encoded, height, width = encode_jpeg(example.image)
  features = {
      'image/encoded': _bytes_feature(encoded),
      'image/format': _bytes_feature(b'JPEG'),
      'image/class/label': _int64_feature(int(example.label) + LABEL_OFFSET),
      'image/class/synset': _bytes_feature(example.synset.encode()),
      'image/class/text': _bytes_feature(example.text.encode()),
      'image/height': _int64_feature(height),
      'image/width': _int64_feature(width),
      'image/colorspace': _bytes_feature(b'RGB'),
      # Always 3, as in real ImageNet, even for grayscale JPEGs: decode with channels=3.
      'image/channels': _int64_feature(3),
      'image/filename': _bytes_feature((example.filename or default_filename).encode()),
  }
  return tf.train.Example(features=tf.train.Features(feature=features))


def read_manifest(data_dir: str) -> dict[str, Any] | None:
  """The manifest of ``data_dir``, or None when there is none."""
  return manifest_lib.read_manifest(data_dir, MANIFEST_FORMAT)


write_manifest = manifest_lib.write_manifest


def update_manifest(data_dir: str, num_classes: int, **fields: Any) -> dict[str, Any]:
  """Reads, updates top-level ``fields`` (None deletes a key) and rewrites the manifest."""
  path = os.path.join(data_dir, MANIFEST_NAME)
  manifest = read_manifest(data_dir) or {
      'format': MANIFEST_FORMAT, 'num_classes': num_classes, 'label_offset': LABEL_OFFSET,
      'splits': {}}
  if manifest.get('num_classes') != num_classes:
    raise DataError(
        f'{path} says num_classes={manifest.get("num_classes")} but {num_classes} were '
        'asked for: this directory holds another data set; write into an empty directory')
  for key, value in fields.items():
    if value is None:
      manifest.pop(key, None)
    else:
      manifest[key] = value
  write_manifest(data_dir, manifest)
  return manifest


def write_image_classification_split(
    out_dir: str,
    split: str,
    examples: Iterable[ImageExample],
    num_shards: int,
    num_classes: int,
) -> dict[str, Any]:
  """Writes one split as ImageNet-format TFRecord shards and records it in the manifest.

  Example ``i`` goes to shard ``i % num_shards`` (round-robin: deterministic, streams any
  iterable, and keeps shard sizes within one of each other). Shards are written under
  temporary names and renamed only when all are complete, so a crash never leaves a half
  file under a final name; then shards of an earlier write of this split with another shard
  count are removed, so readers never see two generations. Returns the updated manifest.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  tf.io.gfile.makedirs(out_dir)
  # Check the manifest before the (long) write, and drop this split from it while its files
  # change: a crash in between then leaves counts unknown, never wrong.
  manifest = read_manifest(out_dir)
  splits = {k: v for k, v in (manifest or {}).get('splits', {}).items() if k != split}
  update_manifest(out_dir, num_classes, splits=splits)
  names = [shard_name(split, i, num_shards) for i in range(num_shards)]
  counts = [0] * num_shards
  with shard_writer.write_shards([os.path.join(out_dir, n) for n in names]) as shards:
    for i, example in enumerate(examples):
      if not 0 <= int(example.label) < num_classes:
        raise ValueError(f'{split} example {i} has label {example.label}; labels are '
                         f'0-based and must lie in [0, {num_classes})')
      shard = i % num_shards
      proto = to_tf_example(example, default_filename=f'{split}_{i:08d}.JPEG')
      shards.writers[shard].write(proto.SerializeToString())
      counts[shard] += 1
    if counts[-1] == 0:
      raise ValueError(f'{split}: {sum(counts)} examples cannot fill {num_shards} shards; '
                       f'use num_shards <= {max(sum(counts), 1)} (empty shards are invalid)')
  shard_writer.remove_stale_shards(out_dir, shard_pattern(split), names)
  splits = dict(read_manifest(out_dir)['splits'])
  splits[split] = {'num_examples': sum(counts), 'files': dict(zip(names, counts))}
  return update_manifest(out_dir, num_classes, splits=splits)
