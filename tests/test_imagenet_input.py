"""The ImageNet reader on real TFRecords written by the project's writer (and a real TFDS
directory): label offsets, determinism, per-host sharding, exactly-once eval, MLPerf
preprocessing, and bad data named in DataErrors."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from input_pipelines import image_records
from input_pipelines import imagenet
from input_pipelines.errors import DataError
from input_pipelines.image_records import ImageExample

NUM_TRAIN, NUM_VAL = 40, 23  # 23 divides no batch size used here
PP = imagenet.ImagePreprocessing(image_size=16, eval_resize=20)


def make_image(rng, i):
  height, width = (24, 32) if i % 3 else (30, 20)
  if i % 4 == 1:
    return rng.integers(0, 256, (height, width), dtype=np.uint8)  # grayscale JPEG
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_records(out_dir, seed=0):
  """Train labels 0..39 and validation labels 0..22: each label names one example."""
  rng = np.random.default_rng(seed)
  for split, n, shards in (('train', NUM_TRAIN, 4), ('validation', NUM_VAL, 3)):
    examples = [ImageExample(image=make_image(rng, i), label=i, synset=f'n{i:08d}',
                             filename=f'{split}_{i}.JPEG') for i in range(n)]
    image_records.write_image_classification_split(str(out_dir), split, examples,
                                                   num_shards=shards, num_classes=64)
  return str(out_dir)


@pytest.fixture(scope='module')
def records_dir(tmp_path_factory):
  return write_records(tmp_path_factory.mktemp('imagenet'))


@pytest.fixture(scope='module')
def unlisted_dir(records_dir, tmp_path_factory):
  """The same shards without the manifest: counts unknown, so they must be read."""
  out = tmp_path_factory.mktemp('unlisted')
  for name in os.listdir(records_dir):
    if name != image_records.MANIFEST_NAME:
      shutil.copy(os.path.join(records_dir, name), out / name)
  return str(out)


@pytest.fixture
def copy_dir(records_dir, tmp_path):
  out = tmp_path / 'copy'
  shutil.copytree(records_dir, out)
  return out


def train_batches(source, n, **kwargs):
  kwargs = {'local_batch_size': 8, 'seed': 0, 'preprocessing': PP, **kwargs}
  ds = imagenet.train_dataset(source, **kwargs)
  return list(ds.take(n).as_numpy_iterator())


def labels_of(batches):
  return np.concatenate([b['label'] for b in batches]).tolist()


def eval_labels(source, process_count=1, batch=8):
  counts = [imagenet.local_eval_count(source, p, process_count) for p in range(process_count)]
  num_batches = imagenet.eval_num_batches(counts, batch)
  seen = []
  for p in range(process_count):
    ds = imagenet.eval_dataset(source, local_batch_size=batch, num_batches=num_batches,
                               process_index=p, process_count=process_count, preprocessing=PP)
    batches = list(imagenet.iterate(ds, imagenet.host_files(
        source, 'validation', p, process_count, allow_fewer_files=True)))
    assert len(batches) == num_batches  # every host runs the same number of steps
    for b in batches:
      assert b['image'].shape == (batch, 16, 16, 3) and b['mask'].dtype == np.int32
      real = b['mask'] == 1
      seen += b['label'][real].tolist()
      assert not b['image'][~real].any() and not b['label'][~real].any()
    assert sum(int(b['mask'].sum()) for b in batches) == counts[p]
  return seen, counts, num_batches


def test_tfrecord_dir(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  assert source.layout == 'imagenet_tfrecord' and source.label_offset == 1
  assert source.num_classes == 64
  assert [os.path.basename(f) for f in source.files('train')] == [
      f'train-0000{i}-of-00004' for i in range(4)]
  assert source.num_examples('train') == NUM_TRAIN
  assert source.num_examples('validation') == NUM_VAL
  assert sorted(source.file_counts('validation').values()) == [7, 8, 8]
  assert source.filename_key == 'image/filename'
  # 1-based on disk, 0-based out.
  assert sorted(labels_of(train_batches(source, 5))) == list(range(NUM_TRAIN))
  assert sorted(eval_labels(source)[0]) == list(range(NUM_VAL))


def test_tfds_dir(tmp_path):
  import tensorflow_datasets as tfds

  data_dir = tmp_path / 'imagenet2012' / '5.1.0'
  data_dir.mkdir(parents=True)
  features = tfds.features.FeaturesDict({  # imagenet2012's feature spec
      'image': tfds.features.Image(encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(num_classes=12),
      'file_name': tfds.features.Text(),
  })
  rng = np.random.default_rng(1)
  for split, n, shards in (('train', 12, 2), ('validation', 5, 2)):
    for s in range(shards):
      name = f'imagenet2012-{split}.tfrecord-{s:05d}-of-{shards:05d}'
      with tf.io.TFRecordWriter(str(data_dir / name)) as writer:
        for i in range(s, n, shards):
          jpeg, _, _ = image_records.encode_jpeg(make_image(rng, i))
          writer.write(features.serialize_example(
              {'image': jpeg, 'label': i, 'file_name': f'{split}_{i}.JPEG'}))
  tfds.folder_dataset.write_metadata(data_dir=str(data_dir), features=features)

  source = imagenet.ImageNetSource.from_dir(data_dir)
  assert source.layout == 'tfds' and source.label_offset == 0 and source.num_classes == 12
  assert source.num_examples('train') == 12 and source.num_examples('validation') == 5
  assert sorted(source.file_counts('validation').values()) == [2, 3]
  assert sorted(labels_of(train_batches(source, 3, local_batch_size=4))) == list(range(12))
  assert sorted(eval_labels(source, batch=4)[0]) == list(range(5))
  with pytest.raises(DataError, match='did you mean .*5.1.0'):
    imagenet.ImageNetSource.from_dir(tmp_path / 'imagenet2012')


def test_stream_is_a_function_of_the_seed(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  first = train_batches(source, 10)  # two epochs of 5 batches
  again = train_batches(source, 10)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other = train_batches(source, 10, seed=1)
  assert labels_of(other) != labels_of(first)
  epoch0, epoch1 = labels_of(first[:5]), labels_of(first[5:])
  assert sorted(epoch0) == sorted(epoch1) == list(range(NUM_TRAIN))
  assert epoch0 != epoch1
  # A run resumed at epoch 1 sees exactly what the first run saw in epoch 1.
  resumed = train_batches(source, 5, start_epoch=1)
  for a, b in zip(first[5:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  # Augmentation differs between epochs for the same image.
  image_of = lambda batches, label: next(
      b['image'][list(b['label']).index(label)] for b in batches if label in b['label'])
  assert not np.array_equal(image_of(first[:5], 7), image_of(first[5:], 7))


@pytest.mark.parametrize('listed', [True, False], ids=['manifest', 'counted'])
def test_resuming_at_a_step_sees_the_same_stream(records_dir, unlisted_dir, listed):
  source = imagenet.ImageNetSource.from_dir(records_dir if listed else unlisted_dir)
  full = train_batches(source, 9)  # 5 batches per epoch
  for start_step in (3, 7):
    resumed = train_batches(source, 9 - start_step, start_step=start_step)
    for a, b in zip(full[start_step:], resumed, strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])


def test_batches_straddle_epochs(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  labels = labels_of(train_batches(source, 4, local_batch_size=15))  # 60 = 1.5 epochs
  assert sorted(labels[:40]) == list(range(NUM_TRAIN))


@pytest.mark.parametrize('process_count', [2, 4])
def test_hosts_read_disjoint_files_that_cover_the_epoch(records_dir, process_count):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  per_host = NUM_TRAIN // process_count
  seen = [labels_of(train_batches(source, per_host // 5, local_batch_size=5,
                                  process_index=p, process_count=process_count))
          for p in range(process_count)]
  assert sorted(sum(seen, [])) == list(range(NUM_TRAIN))  # disjoint and complete
  for p, labels in enumerate(seen):  # host p reads shards p, p + count, ...
    assert sorted(labels) == sorted(i for i in range(NUM_TRAIN) if i % 4 % process_count == p)


def test_more_processes_than_files(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  with pytest.raises(DataError, match='4 train files but there are 5 processes'):
    imagenet.train_dataset(source, local_batch_size=2, seed=0, process_index=0,
                           process_count=5)


@pytest.mark.parametrize('listed', [True, False], ids=['manifest', 'counted'])
@pytest.mark.parametrize('process_count', [1, 2, 3, 4])
def test_eval_sees_every_example_exactly_once(records_dir, unlisted_dir, listed,
                                              process_count):
  source = imagenet.ImageNetSource.from_dir(records_dir if listed else unlisted_dir)
  assert (source.num_examples('validation') is None) == (not listed)
  seen, counts, num_batches = eval_labels(source, process_count)
  assert sorted(seen) == list(range(NUM_VAL))
  assert sum(counts) == NUM_VAL
  assert num_batches == -(-max(counts) // 8)
  if process_count == 4:  # 3 files: the 4th host sends padding only
    assert counts[3] == 0


def test_eval_dataset_refuses_to_drop_examples(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  with pytest.raises(ValueError, match='23 eval examples, more than 2 batches of 8'):
    imagenet.eval_dataset(source, local_batch_size=8, num_batches=2)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'uint8'])
def test_train_preprocessing_output(records_dir, dtype):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  pp = imagenet.ImagePreprocessing(image_size=16, eval_resize=20, dtype=dtype)
  (batch,) = train_batches(source, 1, preprocessing=pp)
  image = batch['image']
  assert image.shape == (8, 16, 16, 3) and image.dtype == tf.as_dtype(dtype).as_numpy_dtype
  assert batch['label'].dtype == np.int32
  if dtype == 'uint8':  # pixels for the device to normalise
    image = imagenet.normalize_pixels(image, pp)
  image = image.astype(np.float32)
  mean, std = np.array(pp.mean_rgb), np.array(pp.stddev_rgb)
  tol = 0.02 if dtype == 'bfloat16' else 1e-5
  assert (image >= -mean / std - tol).all() and (image <= (255 - mean) / std + tol).all()
  assert image.std() > 0.3  # real pixels, not a constant


def test_fused_crop_matches_decode_then_crop(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  fused = train_batches(source, 2)
  naive = train_batches(source, 2, preprocessing=imagenet.ImagePreprocessing(
      image_size=16, eval_resize=20, fused_crop=False))
  for a, b in zip(fused, naive):
    np.testing.assert_array_equal(a['label'], b['label'])
    # Same crops; pixels differ only where libjpeg's chroma upsampling meets the crop edge
    # (large here: these images are noise).
    assert np.mean(np.abs(a['image'] - b['image']) > 0.05) < 0.05


def test_scaled_decode_of_large_crops(records_dir):
  """Crops at least twice the output are decoded at 1/2 scale: same shape, close pixels."""
  source = imagenet.ImageNetSource.from_dir(records_dir)
  kwargs = dict(image_size=8, eval_resize=8, crop_area_range=(0.9, 1.0), dtype='uint8')
  scaled = train_batches(source, 2, preprocessing=imagenet.ImagePreprocessing(**kwargs))
  full = train_batches(source, 2, preprocessing=imagenet.ImagePreprocessing(
      scaled_decode=False, **kwargs))
  for a, b in zip(scaled, full):
    np.testing.assert_array_equal(a['label'], b['label'])
    assert a['image'].shape == b['image'].shape == (8, 8, 8, 3)
    # Noise images: the 2x2 averaging of the scaled IDCT and bilinear's sampling differ most
    # here; on photographs the bench measures a few levels.
    assert np.mean(np.abs(a['image'].astype(int) - b['image'].astype(int))) < 40


@pytest.mark.parametrize('change, message', [
    ({'dtype': 'int8'}, 'dtype must be one of uint8, float32, bfloat16'),
    ({'dct_method': 'FLOAT'}, 'dct_method must be one of INTEGER_ACCURATE, INTEGER_FAST'),
])
def test_preprocessing_choices_are_checked(change, message):
  with pytest.raises(ValueError, match=message):
    imagenet.ImagePreprocessing(**change)


def test_eval_in_uint8_sees_every_example_once(records_dir):
  source = imagenet.ImageNetSource.from_dir(records_dir)
  pp = imagenet.ImagePreprocessing(image_size=16, eval_resize=20, dtype='uint8')
  batches = list(imagenet.eval_dataset(source, local_batch_size=8, num_batches=3,
                                       preprocessing=pp).as_numpy_iterator())
  labels = np.concatenate([b['label'][b['mask'] == 1] for b in batches])
  assert sorted(labels.tolist()) == list(range(NUM_VAL))
  assert all(b['image'].dtype == np.uint8 for b in batches)


def test_grayscale_jpeg_decodes_to_three_channels():
  gray = np.tile(np.arange(40, dtype=np.uint8)[None, :] * 5, (30, 1))
  jpeg, _, _ = image_records.encode_jpeg(gray)
  assert tf.image.extract_jpeg_shape(jpeg).numpy().tolist() == [30, 40, 1]
  pp = imagenet.ImagePreprocessing(image_size=16, eval_resize=20)
  mean, std = np.array(pp.mean_rgb), np.array(pp.stddev_rgb)
  for image in (imagenet.preprocess_eval(tf.constant(jpeg), pp),
                imagenet.preprocess_train(tf.constant(jpeg), tf.constant([3, 4], tf.int64), pp)):
    assert image.shape == (16, 16, 3)
    pixels = image.numpy() * std + mean
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-3)
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-3)


def test_eval_resizes_shorter_side_then_center_crops():
  rgb = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  jpeg, _, _ = image_records.encode_jpeg(rgb)
  pp = imagenet.ImagePreprocessing(image_size=16, eval_resize=20)
  decoded = tf.io.decode_jpeg(jpeg, **pp.decode_options())  # the train map's libjpeg options
  expected = tf.image.resize(decoded, [20, 33]).numpy()[2:18, 8:24]  # 50 * 20 / 30 = 33.3
  got = imagenet.preprocess_eval(tf.constant(jpeg), pp).numpy() * pp.stddev_rgb + pp.mean_rgb
  np.testing.assert_allclose(got, expected, atol=1e-3)


def test_synthetic_batches():
  batch = imagenet.synthetic_batches(4, 8, 10, seed=0, dtype='bfloat16')
  assert batch['image'].shape == (4, 8, 8, 3) and batch['image'].dtype.name == 'bfloat16'
  assert batch['label'].dtype == np.int32 and batch['label'].max() < 10
  again = imagenet.synthetic_batches(4, 8, 10, seed=0, dtype='bfloat16')
  np.testing.assert_array_equal(batch['label'], again['label'])


# -- bad data: one DataError that names the path ------------------------------------------

def test_missing_and_empty_dirs(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(DataError, match=f'{missing}: no such directory.*train-\\*-of-\\*'):
    imagenet.ImageNetSource.from_dir(missing)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'README').write_text('not data')
  with pytest.raises(DataError, match=f'{empty}: no ImageNet TFRecord.*validation-\\*-of-\\*'
                     '.*dataset_info.json'):
    imagenet.ImageNetSource.from_dir(empty)


def test_zero_byte_file(copy_dir):
  (copy_dir / image_records.MANIFEST_NAME).unlink()
  (copy_dir / 'validation-00001-of-00003').write_bytes(b'')
  with pytest.raises(DataError, match='validation-00001-of-00003: zero-byte file'):
    imagenet.ImageNetSource.from_dir(copy_dir)


def test_incomplete_or_mixed_shards(copy_dir):
  (copy_dir / 'train-00002-of-00004').unlink()
  with pytest.raises(DataError, match='train has 3 of 4 shards; missing train-00002-of-00004'):
    imagenet.ImageNetSource.from_dir(copy_dir)
  shutil.copy(copy_dir / 'train-00001-of-00004', copy_dir / 'train-00002-of-00004')
  shutil.copy(copy_dir / 'train-00001-of-00004', copy_dir / 'train-00000-of-00001')
  with pytest.raises(DataError, match='2 different shardings'):
    imagenet.ImageNetSource.from_dir(copy_dir)


def test_manifest_that_disagrees_with_the_files(copy_dir):
  manifest = json.loads((copy_dir / image_records.MANIFEST_NAME).read_text())
  manifest['splits']['validation']['files']['validation-00000-of-00003'] += 1
  (copy_dir / image_records.MANIFEST_NAME).write_text(json.dumps(manifest))
  source = imagenet.ImageNetSource.from_dir(copy_dir)
  ds = imagenet.eval_dataset(source, local_batch_size=8, num_batches=3, preprocessing=PP)
  with pytest.raises(DataError, match='another number of records'):
    list(imagenet.iterate(ds, source.files('validation')))
  files = manifest['splits']['train']['files']
  files['train-00009-of-00004'] = files.pop('train-00003-of-00004')
  (copy_dir / image_records.MANIFEST_NAME).write_text(json.dumps(manifest))
  with pytest.raises(DataError, match=r"podium_dataset.json does not match the train files.*"
                     r"not in the manifest: \['train-00003-of-00004'\]"):
    imagenet.ImageNetSource.from_dir(copy_dir)


def corrupt(path, how):
  data = bytearray(path.read_bytes())
  if how == 'truncated':
    path.write_bytes(bytes(data[:len(data) * 2 // 3]))
  else:  # flip a byte inside a record's payload: its CRC no longer matches
    data[len(data) * 2 // 3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('how', ['truncated', 'bad_crc'])
def test_corrupt_record_names_the_file(copy_dir, how):
  bad = copy_dir / 'train-00002-of-00004'
  corrupt(bad, how)
  source = imagenet.ImageNetSource.from_dir(copy_dir)
  ds = imagenet.train_dataset(source, local_batch_size=8, seed=0, preprocessing=PP)
  with pytest.raises(DataError, match=f'{bad}: corrupt TFRecord at record [1-9]'):
    for _ in imagenet.iterate(ds, source.files('train')):
      pass
  with pytest.raises(DataError, match=f'{bad}: corrupt TFRecord'):
    imagenet.count_records(str(bad))


def test_corrupt_eval_file_names_the_file(copy_dir):
  bad = copy_dir / 'validation-00001-of-00003'
  corrupt(bad, 'truncated')
  source = imagenet.ImageNetSource.from_dir(copy_dir)
  ds = imagenet.eval_dataset(source, local_batch_size=8, num_batches=3, preprocessing=PP)
  with pytest.raises(DataError, match=f'{bad}: corrupt TFRecord'):
    list(imagenet.iterate(ds, source.files('validation')))


def test_file_vanishing_during_the_run_is_named(copy_dir):
  source = imagenet.ImageNetSource.from_dir(copy_dir)
  ds = imagenet.train_dataset(source, local_batch_size=8, seed=0, preprocessing=PP)
  gone = copy_dir / 'train-00003-of-00004'
  gone.unlink()
  with pytest.raises(DataError, match=f'{gone}: file vanished'):
    next(imagenet.iterate(ds, source.files('train')))
