"""The ImageNet-format writer and the digits data set, checked by reading the files back."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines import digits
from input_pipelines import image_records
from input_pipelines.image_records import ImageExample


def read_examples(path):
  out = []
  for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
    example = tf.train.Example.FromString(raw)
    out.append({k: (v.bytes_list.value or v.int64_list.value)[0]
                for k, v in example.features.feature.items()})
  return out


def make_examples(n, size=(12, 10)):
  rng = np.random.default_rng(0)
  for i in range(n):
    shape = size if i % 2 else size + (3,)  # every other image grayscale
    yield ImageExample(image=rng.integers(0, 256, shape, dtype=np.uint8), label=i % 5,
                       synset=f'n{i % 5:08d}', filename=f'img_{i}.JPEG', text=f'class {i % 5}')


def test_format_matches_imagenet_to_gcs(tmp_path):
  manifest = image_records.write_image_classification_split(
      str(tmp_path), 'train', make_examples(10), num_shards=4, num_classes=5)
  names = sorted(os.listdir(tmp_path))
  assert names == ['podium_dataset.json'] + [f'train-0000{i}-of-00004' for i in range(4)]
  # Round-robin: example i in shard i % 4.
  shard0 = read_examples(tmp_path / 'train-00000-of-00004')
  assert [e['image/filename'] for e in shard0] == [b'img_0.JPEG', b'img_4.JPEG', b'img_8.JPEG']
  first, second = shard0[0], shard0[1]
  assert first['image/class/label'] == 1  # 0-based 0 stored 1-based
  assert second['image/class/label'] == 5
  assert first['image/class/synset'] == b'n00000000'
  assert first['image/class/text'] == b'class 0'
  assert first['image/format'] == b'JPEG' and first['image/colorspace'] == b'RGB'
  assert (first['image/height'], first['image/width']) == (12, 10)
  for example in shard0:  # grayscale or not, the metadata says 3 channels, as ImageNet's does
    assert example['image/channels'] == 3
  assert tf.image.extract_jpeg_shape(first['image/encoded']).numpy().tolist() == [12, 10, 3]
  gray = read_examples(tmp_path / 'train-00001-of-00004')[0]
  assert tf.image.extract_jpeg_shape(gray['image/encoded']).numpy().tolist() == [12, 10, 1]
  assert tf.io.decode_jpeg(gray['image/encoded'], channels=3).shape == (12, 10, 3)
  assert manifest == json.loads((tmp_path / 'podium_dataset.json').read_text())
  assert manifest == {
      'format': 'imagenet_tfrecord', 'num_classes': 5, 'label_offset': 1,
      'splits': {'train': {'num_examples': 10, 'files': {
          'train-00000-of-00004': 3, 'train-00001-of-00004': 3, 'train-00002-of-00004': 2,
          'train-00003-of-00004': 2}}}}


def test_jpeg_bytes_are_kept_as_they_are(tmp_path):
  jpeg, _, _ = image_records.encode_jpeg(np.full((7, 9, 3), 99, np.uint8))
  image_records.write_image_classification_split(
      str(tmp_path), 'validation', [ImageExample(image=jpeg, label=0)], num_shards=1,
      num_classes=1)
  (example,) = read_examples(tmp_path / 'validation-00000-of-00001')
  assert example['image/encoded'] == jpeg
  assert (example['image/height'], example['image/width']) == (7, 9)
  assert example['image/filename'] == b'validation_00000000.JPEG'
  with pytest.raises(ValueError, match='not a readable JPEG'):
    image_records.write_image_classification_split(
        str(tmp_path), 'validation', [ImageExample(image=b'not a jpeg', label=0)],
        num_shards=1, num_classes=1)


def test_splits_accumulate_and_rewrites_replace_old_shards(tmp_path):
  out = str(tmp_path)
  image_records.write_image_classification_split(out, 'train', make_examples(8), 4, 5)
  image_records.write_image_classification_split(out, 'validation', make_examples(3), 1, 5)
  manifest = image_records.write_image_classification_split(out, 'train', make_examples(6), 2, 5)
  assert sorted(manifest['splits']) == ['train', 'validation']
  assert manifest['splits']['train']['num_examples'] == 6
  assert sorted(os.listdir(tmp_path)) == [
      'podium_dataset.json', 'train-00000-of-00002', 'train-00001-of-00002',
      'validation-00000-of-00001']
  with pytest.raises(Exception, match='num_classes=5'):
    image_records.write_image_classification_split(out, 'train', make_examples(6), 2, 7)


def test_failed_write_leaves_no_files(tmp_path):
  with pytest.raises(ValueError, match='cannot fill 4 shards'):
    image_records.write_image_classification_split(
        str(tmp_path), 'train', make_examples(3), num_shards=4, num_classes=5)
  assert [n for n in os.listdir(tmp_path) if n != 'podium_dataset.json'] == []

  def examples_then_crash():
    yield from make_examples(5)
    raise RuntimeError('source died')
  with pytest.raises(RuntimeError):
    image_records.write_image_classification_split(
        str(tmp_path), 'train', examples_then_crash(), num_shards=2, num_classes=5)
  assert [n for n in os.listdir(tmp_path) if n != 'podium_dataset.json'] == []
  with pytest.raises(ValueError, match=r'label 5; labels are 0-based and must lie in \[0, 5\)'):
    image_records.write_image_classification_split(
        str(tmp_path), 'train', [ImageExample(np.zeros((4, 4), np.uint8), 5)], 1, 5)


def test_digits(tmp_path):
  out = str(tmp_path / 'digits')
  manifest = digits.write_digits(out, image_size=16, num_train_shards=3, num_eval_shards=2)
  train, val = manifest['splits']['train'], manifest['splits']['validation']
  assert (train['num_examples'], val['num_examples']) == (1500, 297)
  assert manifest['num_classes'] == 10 and manifest['label_offset'] == 1
  assert len(train['files']) == 3 and len(val['files']) == 2
  records = [e for name in sorted(train['files']) + sorted(val['files'])
             for e in read_examples(os.path.join(out, name))]
  assert len(records) == 1797
  files = [e['image/filename'] for e in records]
  assert len(set(files)) == 1797  # every sklearn digit exactly once over both splits
  val_files = {e['image/filename'] for e in records[1500:]}
  expected_val = {f'digit_{i:04d}.jpeg'.encode() for i in digits.split_indices()['validation']}
  assert val_files == expected_val
  labels = np.array([e['image/class/label'] for e in records])
  assert labels.min() == 1 and labels.max() == 10  # 1-based on disk
  assert np.bincount(labels - 1).min() > 150
  assert all(e['image/class/synset'] == f'digit_{e["image/class/label"] - 1}'.encode()
             for e in records)
  jpeg = records[0]['image/encoded']
  assert tf.image.extract_jpeg_shape(jpeg).numpy().tolist() == [16, 16, 1]  # grayscale
  pixels = tf.io.decode_jpeg(jpeg, channels=3).numpy()
  assert pixels.shape == (16, 16, 3) and pixels.max() > 150

  # Idempotent: a complete set with the same parameters is not rewritten.
  mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  assert digits.write_digits(out, image_size=16, num_train_shards=3,
                             num_eval_shards=2) == manifest
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == mtimes
  # Other parameters rewrite it, leaving no shards of the old sharding behind.
  manifest = digits.write_digits(out, image_size=16, num_train_shards=2, num_eval_shards=2)
  assert sorted(n for n in os.listdir(out) if n.startswith('train')) == [
      'train-00000-of-00002', 'train-00001-of-00002']
  assert manifest['source']['num_train_shards'] == 2
