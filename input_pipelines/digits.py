"""The real handwritten digits that scikit-learn ships, written as ImageNet TFRecords.

This is the offline data set of the default benchmark: real images with real labels, no
download, in exactly the format (and through exactly the reader) of real ImageNet.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from input_pipelines import image_records

NUM_CLASSES = 10
NUM_TRAIN = 1500
NUM_VALIDATION = 297  # Deliberately divides no usual batch size: exercises eval padding.
SPLIT_SEED = 0
SOURCE = 'sklearn.datasets.load_digits'


def digit_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 [N, image_size, image_size] and labels [N].

  The 8x8 originals hold 0..16; they are scaled to 0..255 and upscaled bilinearly.
  """
  from sklearn.datasets import load_digits  # Imported here: only the writer needs it.

  digits = load_digits()
  small = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  if image_size == small.shape[1]:
    images = small
  else:
    images = np.stack([
        np.asarray(Image.fromarray(im, mode='L').resize((image_size, image_size),
                                                        Image.Resampling.BILINEAR))
        for im in small])
  return images, digits.target.astype(np.int64)


def split_indices() -> dict[str, np.ndarray]:
  """The fixed held-out split: ``RandomState(0).permutation(1797)``; first 1,500 train.

  ``RandomState`` streams are frozen by NumPy's compatibility policy, so the split is the
  same on every machine and NumPy version.
  """
  perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_TRAIN + NUM_VALIDATION)
  return {'train': perm[:NUM_TRAIN], 'validation': perm[NUM_TRAIN:]}


def _is_complete(out_dir: str, params: dict[str, Any]) -> dict[str, Any] | None:
  manifest = image_records.read_manifest(out_dir)
  if not manifest or manifest.get('source') != params:
    return None
  expected = {'train': NUM_TRAIN, 'validation': NUM_VALIDATION}
  for split, count in expected.items():
    info = manifest['splits'].get(split)
    if not info or info['num_examples'] != count:
      return None
    for name in info['files']:
      path = os.path.join(out_dir, name)
      if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length == 0:
        return None
  return manifest


def write_digits(out_dir: str, *, image_size: int = 32, num_train_shards: int = 4,
                 num_eval_shards: int = 2) -> dict[str, Any]:
  """Writes the digits (1,500 train / 297 validation) and returns the manifest.

  Images are grayscale JPEGs, like some real ImageNet images: the reader must decode them
  with ``channels=3``. Labels 0..9 are stored 1-based, synsets are ``digit_0``..``digit_9``
  and file names ``digit_0042.jpeg`` carry the index into scikit-learn's array. When
  ``out_dir`` already holds a complete set written with the same parameters, its manifest
  is returned and nothing is rewritten; the ``source`` entry of the manifest is written
  last, so it marks a complete set.
  """
  params = {'name': SOURCE, 'image_size': image_size, 'num_train_shards': num_train_shards,
            'num_eval_shards': num_eval_shards, 'split_seed': SPLIT_SEED}
  done = _is_complete(out_dir, params)
  if done is not None:
    return done
  tf.io.gfile.makedirs(out_dir)
  if image_records.read_manifest(out_dir) is not None:
    image_records.update_manifest(out_dir, NUM_CLASSES, source=None)
  images, labels = digit_images(image_size)
  shards = {'train': num_train_shards, 'validation': num_eval_shards}
  for split, indices in split_indices().items():
    examples = (
        image_records.ImageExample(
            image=images[i], label=int(labels[i]), synset=f'digit_{labels[i]}',
            filename=f'digit_{i:04d}.jpeg', text=f'handwritten digit {labels[i]}')
        for i in indices)
    image_records.write_image_classification_split(
        out_dir, split, examples, num_shards=shards[split], num_classes=NUM_CLASSES)
  return image_records.update_manifest(out_dir, NUM_CLASSES, source=params)
