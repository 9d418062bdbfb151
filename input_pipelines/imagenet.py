"""ImageNet input on tf.data: MLPerf preprocessing, per-host sharding, exactly-once eval.

Reads two on-disk layouts through one `ImageNetSource`: a directory of standard ImageNet
TFRecords (tensorflow/tpu's imagenet_to_gcs.py: ``train-00000-of-01024``, 1-based labels;
also what `image_records` writes) and a prepared TFDS ``imagenet2012`` directory
(0-based labels). Readers always emit 0-based int32 labels.

Everything random is stateless and derived from (seed, epoch, process index, example
position), so the stream is a function of the seed and a run resumed at an epoch boundary
(``start_epoch``) sees the data it would have seen. This module knows nothing of JAX:
process index and count come in as ints, batches go out as host-local numpy arrays.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import tensorflow as tf

from input_pipelines import image_records
from input_pipelines.errors import DataError

SPLITS = ('train', 'validation')
TFRECORD_PATTERNS = ('train-*-of-*', 'validation-*-of-*')
TFDS_PATTERNS = ('dataset_info.json', '<name>-train.tfrecord-*-of-*',
                 '<name>-validation.tfrecord-*-of-*')
EXPECTED_LAYOUTS = (
    f'ImageNet TFRecords ({", ".join(TFRECORD_PATTERNS)}, optionally with '
    f'{image_records.MANIFEST_NAME}) or a prepared TFDS imagenet2012 directory '
    f'({", ".join(TFDS_PATTERNS)})')
IMAGENET_NUM_CLASSES = 1000
_READ_BUFFER_BYTES = 8 << 20  # Per open file; large sequential reads suit GCS and local disk.
_MAX_PARALLEL_FILES = 16
_STAT_THREADS = 32


def _fail(path: str, problem: str) -> DataError:
  return DataError(f'{path}: {problem}. Expected {EXPECTED_LAYOUTS}.')


def _file_sizes(paths: Sequence[str]) -> dict[str, int]:
  """Sizes by path, stat'ed in threads: on GCS each stat is a round trip."""
  def size(path: str) -> int:
    try:
      return tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
      return -1
  with concurrent.futures.ThreadPoolExecutor(min(_STAT_THREADS, max(len(paths), 1))) as ex:
    return dict(zip(paths, ex.map(size, paths)))


def _some(paths: Sequence[str], limit: int = 5) -> str:
  more = f' and {len(paths) - limit} more' if len(paths) > limit else ''
  return ', '.join(paths[:limit]) + more


def _check_nonempty(paths: Sequence[str], lister: str) -> None:
  """Every file exists and holds bytes: a zero-byte shard is an interrupted copy."""
  sizes = _file_sizes(paths)
  missing = [p for p, n in sizes.items() if n < 0]
  if missing:
    raise DataError(f'{lister} lists files that do not exist: {_some(missing)}')
  empty = [p for p, n in sizes.items() if n == 0]
  if empty:
    raise DataError(f'{_some(empty)}: zero-byte file; every shard must hold at least one '
                    'TFRecord. Re-copy or re-write the data set (an interrupted copy leaves '
                    'such files)')


@dataclasses.dataclass(frozen=True)
class ImageNetSource:
  """Where the records of each split are, how many there are, and how to parse them.

  ``split_counts[split]`` maps each file path to its record count, or is None when the
  counts are unknown (plain TFRecords without a manifest).
  """

  data_dir: str
  layout: str  # 'imagenet_tfrecord' or 'tfds'
  split_files: Mapping[str, tuple[str, ...]]
  split_counts: Mapping[str, Mapping[str, int] | None]
  num_classes: int
  label_offset: int
  image_key: str
  label_key: str
  filename_key: str

  @classmethod
  def from_dir(cls, data_dir: str | os.PathLike[str]) -> ImageNetSource:
    """Detects the layout of ``data_dir``; raises DataError naming what is wrong."""
    data_dir = os.fspath(data_dir)
    if not tf.io.gfile.isdir(data_dir):
      exists = tf.io.gfile.exists(data_dir)
      raise _fail(data_dir, 'a file, not a directory' if exists else 'no such directory')
    names = [n.rstrip('/') for n in tf.io.gfile.listdir(data_dir)]
    if 'dataset_info.json' in names:
      return cls._from_tfds_dir(data_dir)
    return cls._from_tfrecord_dir(data_dir, names)

  @classmethod
  def _from_tfrecord_dir(cls, data_dir: str, names: list[str]) -> ImageNetSource:
    split_files: dict[str, tuple[str, ...]] = {}
    for split in SPLITS:
      pattern = re.compile(rf'^{split}-(\d+)-of-(\d+)$')
      matches = sorted((int(m[1]), int(m[2]), n) for n in names if (m := pattern.match(n)))
      if not matches:
        continue
      totals = sorted({total for _, total, _ in matches})
      if len(totals) > 1:
        raise DataError(f'{data_dir}: {split} files of {len(totals)} different shardings '
                        f'(-of-{", -of-".join(str(t) for t in totals)}) are mixed; keep '
                        'one set of shards per split')
      total = totals[0]
      present = {index for index, _, _ in matches}
      absent = [image_records.shard_name(split, i, total) for i in range(total)
                if i not in present]
      if absent:
        raise DataError(f'{data_dir}: {split} has {len(present)} of {total} shards; missing '
                        f'{_some(absent)} (an incomplete copy?)')
      split_files[split] = tuple(os.path.join(data_dir, n) for _, _, n in matches)
    if not split_files:
      hint = _nested_tfds_hint(data_dir)
      raise _fail(data_dir, 'no ImageNet TFRecord or TFDS files found' + hint)

    manifest = image_records.read_manifest(data_dir)
    manifest_path = os.path.join(data_dir, image_records.MANIFEST_NAME)
    split_counts: dict[str, Mapping[str, int] | None] = {s: None for s in split_files}
    for split, files in split_files.items():
      info = (manifest or {}).get('splits', {}).get(split)
      if info is None:
        continue
      listed = {os.path.join(data_dir, n): int(c) for n, c in info['files'].items()}
      if set(listed) != set(files):
        unlisted = sorted(os.path.basename(f) for f in set(files) - set(listed))
        absent = sorted(os.path.basename(f) for f in set(listed) - set(files))
        raise DataError(
            f'{manifest_path} does not match the {split} files in {data_dir} (not in the '
            f'manifest: {unlisted or "none"}; in the manifest but absent: {absent or "none"}); '
            'it belongs to another write of the data: rewrite the data set, or delete the '
            'manifest to count records instead')
      zero = [p for p, c in listed.items() if c == 0]
      if zero:
        raise DataError(f'{manifest_path} says {zero[0]} holds zero records; every shard '
                        'must hold at least one')
      split_counts[split] = listed
    _check_nonempty([p for files in split_files.values() for p in files], data_dir)
    return cls(
        data_dir=data_dir, layout='imagenet_tfrecord', split_files=split_files,
        split_counts=split_counts,
        num_classes=int((manifest or {}).get('num_classes', IMAGENET_NUM_CLASSES)),
        label_offset=int((manifest or {}).get('label_offset', image_records.LABEL_OFFSET)),
        image_key='image/encoded', label_key='image/class/label',
        filename_key='image/filename')

  @classmethod
  def _from_tfds_dir(cls, data_dir: str) -> ImageNetSource:
    import tensorflow_datasets as tfds  # Imported only for TFDS layouts.

    info_path = os.path.join(data_dir, 'dataset_info.json')
    try:
      info = tfds.builder_from_directory(data_dir).info
    except Exception as e:  # TFDS raises many types for a malformed dataset_info.json.
      raise _fail(info_path, f'TFDS cannot read it ({type(e).__name__}: {e})') from e
    if info.file_format is not None and info.file_format.value != 'tfrecord':
      raise _fail(data_dir, f'TFDS files are {info.file_format.value}, only tfrecord is read')
    features = info.features
    missing = [k for k in ('image', 'label') if k not in features]
    if missing:
      raise _fail(info_path, f'features lack {missing}; imagenet2012 has image, label, '
                  'file_name')
    encoding = getattr(features['image'], 'encoding_format', None)
    if encoding not in (None, 'jpeg'):
      raise _fail(info_path, f"images are {encoding}; the train crop needs JPEG ('jpeg')")
    split_files, split_counts = {}, {}
    for split in SPLITS:
      if split not in info.splits:
        continue
      split_info = info.splits[split]
      files = tuple(os.fspath(p) for p in split_info.filepaths)
      lengths = [int(n) for n in split_info.shard_lengths]
      if not files:
        continue
      if len(lengths) != len(files):
        raise _fail(info_path, f'{split} lists {len(files)} files but {len(lengths)} '
                    'shard lengths')
      zero = [f for f, n in zip(files, lengths) if n == 0]
      if zero:
        raise DataError(f'{info_path} says {zero[0]} holds zero records; every shard must '
                        'hold at least one')
      split_files[split] = files
      split_counts[split] = dict(zip(files, lengths))
    if not split_files:
      raise _fail(data_dir, f'dataset_info.json lists none of the splits {SPLITS}')
    _check_nonempty([p for files in split_files.values() for p in files], info_path)
    return cls(
        data_dir=data_dir, layout='tfds', split_files=split_files, split_counts=split_counts,
        num_classes=int(features['label'].num_classes), label_offset=0,
        image_key='image', label_key='label', filename_key='file_name')

  def files(self, split: str) -> list[str]:
    """All files of ``split`` in shard order; DataError when the split is absent."""
    if split not in self.split_files:
      raise DataError(f'{self.data_dir} has no {split} files; it has '
                      f'{sorted(self.split_files) or "no splits"}. Expected {EXPECTED_LAYOUTS}.')
    return list(self.split_files[split])

  def file_counts(self, split: str) -> dict[str, int] | None:
    """Records per file path, or None when unknown without reading the data."""
    self.files(split)
    counts = self.split_counts.get(split)
    return dict(counts) if counts is not None else None

  def num_examples(self, split: str) -> int | None:
    counts = self.file_counts(split)
    return sum(counts.values()) if counts is not None else None


def _nested_tfds_hint(data_dir: str) -> str:
  """Points at a prepared TFDS dir one or two levels down (``imagenet2012/5.1.0``)."""
  for pattern in ('*/dataset_info.json', '*/*/dataset_info.json'):
    found = tf.io.gfile.glob(os.path.join(data_dir, pattern))
    if found:
      return f' (did you mean {os.path.dirname(sorted(found)[-1])}?)'
  return ''


DCT_METHODS = ('INTEGER_ACCURATE', 'INTEGER_FAST')
OUTPUT_DTYPES = ('uint8', 'float32', 'bfloat16')
DECODE_RATIOS = (1, 2, 4, 8)  # libjpeg's scaled IDCT: what tf.io.decode_and_crop_jpeg offers


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
  """MLPerf ResNet preprocessing parameters (the reference's values by default) and how the
  host computes them.

  The crop, flip, resize and normalisation are the reference's; four choices trade host CPU
  for pixel-exactness (measured in benchmarks/bench_pipelines.py, summed up in the README):

  ``fused_crop``       decode only the crop's rows and columns (``decode_and_crop_jpeg``);
                       False decodes the whole JPEG and then crops: the common baseline.
  ``scaled_decode``    decode a crop at least 2x, 4x or 8x the output size at 1/2, 1/4 or
                       1/8 scale in libjpeg's IDCT (never below ``image_size``): an
                       antialiased downscale instead of part of bilinear's, on fewer pixels
                       (with ``fused_crop`` only).
  ``fancy_upscaling``  libjpeg's smooth chroma upsampling; False replicates the 4:2:0 chroma
                       (libjpeg's fast path): chroma edges differ by a pixel.
  ``dct_method``       'INTEGER_ACCURATE' (libjpeg's default) or 'INTEGER_FAST'.
  ``dtype``            'uint8' sends the resized pixels, rounded, for the device to normalise
                       (a quarter of float32's bytes); 'float32' / 'bfloat16' normalise here.
  """

  image_size: int = 224
  eval_resize: int = 256
  crop_area_range: tuple[float, float] = (0.08, 1.0)
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  min_object_covered: float = 0.1
  crop_attempts: int = 10
  random_flip: bool = True
  mean_rgb: tuple[float, float, float] = (123.68, 116.78, 103.94)
  stddev_rgb: tuple[float, float, float] = (58.393, 57.12, 57.375)
  dtype: str = 'float32'
  fused_crop: bool = True
  scaled_decode: bool = True
  fancy_upscaling: bool = False
  dct_method: str = 'INTEGER_ACCURATE'

  def __post_init__(self):
    if self.dtype not in OUTPUT_DTYPES:
      raise ValueError(f'dtype must be one of {", ".join(OUTPUT_DTYPES)}; got {self.dtype!r}')
    if self.dct_method not in DCT_METHODS:
      raise ValueError(f'dct_method must be one of {", ".join(DCT_METHODS)}; got '
                       f'{self.dct_method!r}')
    if not 0 < self.image_size <= self.eval_resize:
      raise ValueError(f'need 0 < image_size <= eval_resize, got image_size='
                       f'{self.image_size}, eval_resize={self.eval_resize}')
    lo, hi = self.crop_area_range
    if not 0 < lo <= hi <= 1:
      raise ValueError(f'crop_area_range must satisfy 0 < lo <= hi <= 1, got '
                       f'{self.crop_area_range}')
    if not 0 < self.aspect_ratio_range[0] <= self.aspect_ratio_range[1]:
      raise ValueError(f'bad aspect_ratio_range {self.aspect_ratio_range}')

  @property
  def tf_dtype(self) -> tf.DType:
    return tf.as_dtype(self.dtype)

  @property
  def normalized(self) -> bool:
    """Whether the host normalises; else the consumer does, with `normalize_pixels`."""
    return self.dtype != 'uint8'

  def decode_options(self) -> dict[str, Any]:
    return {'channels': 3, 'fancy_upscaling': self.fancy_upscaling,
            'dct_method': self.dct_method}


def normalize_pixels(image: np.ndarray, pp: ImagePreprocessing, xp: Any = np) -> Any:
  """(uint8 pixels - mean) / stddev in float32, with ``xp`` (numpy or jax.numpy): what the
  device does to 'uint8' batches, equal to what the host does for 'float32'."""
  mean = xp.asarray(pp.mean_rgb, xp.float32)
  inv_std = xp.asarray(1.0 / np.asarray(pp.stddev_rgb, np.float64), xp.float32)
  return (image.astype(xp.float32) - mean) * inv_std


def _normalize(image: tf.Tensor, pp: ImagePreprocessing) -> tf.Tensor:
  """(image - mean) / stddev, cast to the output dtype; 'uint8' rounds the pixels instead.

  Mean and 1/stddev are constants of the image's full shape: TF's elementwise kernels are
  ~3x slower when they broadcast a [3] vector over an image (measured: 200 vs 560 img/s for
  the whole train map on one core).
  """
  if not pp.normalized:
    # Bilinear weights sum to 1, so resized uint8 pixels stay in [0, 255]: + 0.5 and a
    # truncating cast round them.
    return tf.cast(image + 0.5, tf.uint8)
  shape = (pp.image_size, pp.image_size, 3)
  mean = np.broadcast_to(np.asarray(pp.mean_rgb, np.float32), shape)
  inv_std = np.broadcast_to(1.0 / np.asarray(pp.stddev_rgb, np.float32), shape)
  image = (tf.cast(image, tf.float32) - tf.constant(mean)) * tf.constant(inv_std)
  return tf.cast(image, pp.tf_dtype)


def _center_crop_window(shape: tf.Tensor, pp: ImagePreprocessing) -> tf.Tensor:
  """The reference's fallback: a centred square of side min(h, w) * size / resize."""
  height, width = shape[0], shape[1]
  side = tf.cast(
      pp.image_size / pp.eval_resize * tf.cast(tf.minimum(height, width), tf.float32),
      tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _decode_crop(image_bytes: tf.Tensor, window: tf.Tensor, pp: ImagePreprocessing
                 ) -> tf.Tensor:
  """The crop ``window`` (y, x, h, w) of the JPEG, at the smallest libjpeg scale (1, 1/2, 1/4,
  1/8) that keeps its shorter side at least ``image_size`` when ``pp.scaled_decode``."""
  def decode(ratio: int):
    return lambda: tf.io.decode_and_crop_jpeg(image_bytes, window // ratio, ratio=ratio,
                                              **pp.decode_options())
  if not pp.scaled_decode:
    return decode(1)()
  shorter = tf.minimum(window[2], window[3])
  index = tf.add_n([tf.cast(shorter >= r * pp.image_size, tf.int32) for r in DECODE_RATIOS[1:]])
  return tf.switch_case(index, [decode(r) for r in DECODE_RATIOS])


def crop_window(image_bytes: tf.Tensor, seed: tf.Tensor, pp: ImagePreprocessing
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """The random crop (y, x, h, w), sampled on the JPEG header's shape, and the flip's seed."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=crop_seed,
      min_object_covered=pp.min_object_covered, aspect_ratio_range=pp.aspect_ratio_range,
      area_range=pp.crop_area_range, max_attempts=pp.crop_attempts,
      use_image_if_no_bounding_boxes=True)
  sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  return tf.where(failed, _center_crop_window(shape, pp), sampled), flip_seed


def preprocess_train(image_bytes: tf.Tensor, seed: tf.Tensor,
                     pp: ImagePreprocessing) -> tf.Tensor:
  """MLPerf train preprocessing of one JPEG: random crop, flip, resize, normalize.

  The crop is sampled on the header's shape and decoded with the fused
  ``decode_and_crop_jpeg``, which skips decoding most pixels outside the crop (and, with
  ``scaled_decode``, decodes large crops at a reduced scale). When the sampler finds no crop
  it returns the whole image; then, as the reference does, a centre crop is used instead.
  ``seed`` is a shape-[2] stateless seed.
  """
  window, flip_seed = crop_window(image_bytes, seed, pp)
  if pp.fused_crop:
    image = _decode_crop(image_bytes, window, pp)
  else:
    image = tf.io.decode_jpeg(image_bytes, **pp.decode_options())
    image = tf.slice(image, tf.stack([window[0], window[1], 0]),
                     tf.stack([window[2], window[3], 3]))
  image = tf.image.resize(image, [pp.image_size, pp.image_size], method='bilinear')
  image.set_shape([pp.image_size, pp.image_size, 3])
  image = _normalize(image, pp)  # before the flip: uint8 flips a quarter of the bytes
  if pp.random_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def preprocess_eval(image_bytes: tf.Tensor, pp: ImagePreprocessing) -> tf.Tensor:
  """MLPerf eval: resize the shorter side to ``eval_resize``, centre-crop, normalize.

  Decoded with the train map's libjpeg options, so train and eval pixels agree."""
  image = tf.io.decode_jpeg(image_bytes, **pp.decode_options())
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = pp.eval_resize / tf.minimum(height, width)
  new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), pp.image_size)
  new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), pp.image_size)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear')
  top, left = (new_h - pp.image_size) // 2, (new_w - pp.image_size) // 2
  image = tf.slice(image, tf.stack([top, left, 0]), [pp.image_size, pp.image_size, 3])
  image.set_shape([pp.image_size, pp.image_size, 3])
  return _normalize(image, pp)


def _parse(source: ImageNetSource, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  features = tf.io.parse_single_example(record, {
      source.image_key: tf.io.FixedLenFeature([], tf.string),
      source.label_key: tf.io.FixedLenFeature([], tf.int64),
  })
  label = tf.cast(features[source.label_key] - source.label_offset, tf.int32)
  return features[source.image_key], label


def host_files(source: ImageNetSource, split: str, process_index: int, process_count: int,
               *, allow_fewer_files: bool = False) -> list[str]:
  """This host's files: ``files[process_index::process_count]``.

  Train needs at least one file per host (a host without data would hang the others in
  the step's collectives); eval allows fewer, as hosts without files send only padding.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index < process_count, got {process_index}, '
                     f'{process_count}')
  files = source.files(split)
  if len(files) < process_count and not allow_fewer_files:
    raise DataError(
        f'{source.data_dir} has {len(files)} {split} files but there are {process_count} '
        'processes; each process reads whole files, so the split needs at least as many '
        'files as processes: re-write it with more shards')
  return files[process_index::process_count]


def _interleave_records(files: tf.Tensor | Sequence[str], num_files: int) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(files).interleave(
      lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER_BYTES),
      cycle_length=min(num_files, _MAX_PARALLEL_FILES), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  # Ops inside map run single-threaded: parallelism comes from parallel calls, and nested
  # intra-op threads would oversubscribe the cores.
  options.threading.max_intra_op_parallelism = 1
  return options


def train_dataset(
    source: ImageNetSource,
    *,
    local_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    preprocessing: ImagePreprocessing = ImagePreprocessing(),
    shuffle_buffer: int = 16384,
    start_epoch: int = 0,
    start_step: int = 0,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool = True,
) -> tf.data.Dataset:
  """Endless host-local train batches {'image': [B,H,W,3], 'label': int32 [B], 0-based}.

  Epoch ``e`` (from ``start_epoch`` on) reads this host's files in an order and shuffles
  its records with seeds derived from (seed, e, process_index); crops and flips use seeds
  from those and the example's position in the epoch. Epochs are concatenated before
  batching, so no example is dropped and a batch may straddle two epochs (as in the MLPerf
  references). Each epoch refills its own shuffle buffer (a short stall at the boundary):
  that keeps epochs distinct, which resumption needs.

  ``start_step`` resumes after that many batches: whole epochs are skipped without reading
  (when counts are known), the rest as raw records before decoding, so resuming costs no
  JPEG work. Record shuffling uses tf.data's seeded shuffle, which also mixes in TF's
  global seed: do not call ``tf.random.set_seed`` if streams must match across runs.
  ``deterministic=False`` lets parallel decode reorder (faster, not reproducible).
  """
  if local_batch_size < 1:
    raise ValueError(f'local_batch_size must be >= 1, got {local_batch_size}')
  files = host_files(source, 'train', process_index, process_count)
  files_t = tf.constant(files)
  num_files = len(files)
  pp = preprocessing
  root = tf.constant([seed, process_index], tf.int64)

  def epoch_key(epoch: tf.Tensor) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(root, epoch)

  def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
    key = epoch_key(epoch)
    order_key, shuffle_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    order = tf.argsort(tf.random.stateless_uniform([num_files], seed=order_key))
    shuffle_seed = tf.random.stateless_uniform([], seed=shuffle_key, minval=None,
                                               maxval=None, dtype=tf.int64)
    records = _interleave_records(tf.gather(files_t, order), num_files)
    records = records.shuffle(shuffle_buffer, seed=shuffle_seed,
                              reshuffle_each_iteration=False)
    return records.enumerate().map(lambda position, record: (epoch, position, record))

  def decode(epoch: tf.Tensor, position: tf.Tensor, record: tf.Tensor) -> dict[str, Any]:
    image_bytes, label = _parse(source, record)
    example_seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(epoch_key(epoch), 1), position)
    return {'image': preprocess_train(image_bytes, example_seed, pp), 'label': label}

  skip = start_step * local_batch_size
  counts = source.file_counts('train')
  if skip and counts is not None:
    epochs_done, skip = divmod(skip, sum(counts[f] for f in files))
    start_epoch += epochs_done
  ds = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(epoch_records)
  if skip:
    ds = ds.skip(skip)
  ds = ds.map(decode, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(deterministic))


def count_records(path: str) -> int:
  """Records in one TFRecord file, by a raw read (no parsing or decoding)."""
  try:
    return int(tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).reduce(
        np.int64(0), lambda n, _: n + 1))
  except tf.errors.DataLossError as e:
    raise DataError(_describe_corruption(path, e)) from e
  except tf.errors.NotFoundError as e:
    raise DataError(f'{path}: file not found while counting its records') from e


def local_eval_count(source: ImageNetSource, process_index: int, process_count: int) -> int:
  """Validation examples in this host's files: from the counts when known, else read."""
  files = host_files(source, 'validation', process_index, process_count,
                     allow_fewer_files=True)
  counts = source.file_counts('validation')
  if counts is not None:
    return sum(counts[f] for f in files)
  if not files:
    return 0
  with concurrent.futures.ThreadPoolExecutor(min(len(files), _MAX_PARALLEL_FILES)) as ex:
    return sum(ex.map(count_records, files))


def eval_num_batches(per_host_counts: Iterable[int], local_batch_size: int) -> int:
  """Eval steps every host runs: enough for the host with the most examples."""
  return math.ceil(max(per_host_counts) / local_batch_size)


def eval_dataset(
    source: ImageNetSource,
    *,
    local_batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
    preprocessing: ImagePreprocessing = ImagePreprocessing(),
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
  """Exactly ``num_batches`` batches {'image', 'label', 'mask'} of this host's examples.

  Every example of this host's validation files appears once with ``mask`` 1 (int32), then
  padding (zero image, label 0, ``mask`` 0) fills the batches: all hosts run the same
  number of steps (see `eval_num_batches`) and masked metrics count each example once.
  The dataset can be iterated again for each eval.
  """
  files = host_files(source, 'validation', process_index, process_count,
                     allow_fewer_files=True)
  count = local_eval_count(source, process_index, process_count)
  capacity = num_batches * local_batch_size
  if count > capacity:
    raise ValueError(f'process {process_index} has {count} eval examples, more than '
                     f'{num_batches} batches of {local_batch_size} hold; use '
                     'eval_num_batches() over the counts of all processes')
  pp = preprocessing
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([pp.image_size, pp.image_size, 3], pp.tf_dtype),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0, tf.int32),
  })

  def decode(record: tf.Tensor) -> dict[str, tf.Tensor]:
    image_bytes, label = _parse(source, record)
    return {'image': preprocess_eval(image_bytes, pp), 'label': label,
            'mask': tf.constant(1, tf.int32)}

  if files:
    examples = _interleave_records(files, len(files))
    # Fails loudly if the files hold other counts than the manifest says.
    examples = examples.apply(tf.data.experimental.assert_cardinality(count))
    examples = examples.map(decode, num_parallel_calls=num_parallel_calls)
  else:
    examples = padding.take(0)
  ds = examples.concatenate(padding.repeat(capacity - count))
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(True))


def synthetic_batches(local_batch_size: int, image_size: int, num_classes: int, seed: int,
                      dtype: str = 'float32') -> dict[str, np.ndarray]:
  """One fixed random batch {'image', 'label'} to feed every step: the device step alone.

  Normal images (what normalized inputs look like), or uniform pixels for 'uint8', and
  uniform labels, from ``seed``.
  """
  rng = np.random.default_rng(seed)
  shape = (local_batch_size, image_size, image_size, 3)
  if dtype == 'uint8':
    image = rng.integers(0, 256, shape, dtype=np.uint8)
  else:
    image = rng.standard_normal(shape, dtype=np.float32)
  return {
      'image': image.astype(ml_dtypes.bfloat16 if dtype == 'bfloat16' else dtype),
      'label': rng.integers(0, num_classes, (local_batch_size,), dtype=np.int32),
  }


def _describe_corruption(path: str, error: Exception) -> str:
  """Names the first unreadable record of ``path`` (slow path: only after a failure)."""
  index = 0
  try:
    for _ in tf.data.TFRecordDataset(path):
      index += 1
  except tf.errors.DataLossError:
    pass
  return (f'{path}: corrupt TFRecord at record {index} ({index} records before it read '
          f'fine; {error.message.strip()}). Re-copy or re-write this file (a truncated copy '
          'or a bad disk causes this)')


def find_corrupt_files(files: Sequence[str]) -> list[str]:
  """Messages for each of ``files`` that a raw read cannot get through."""
  def check(path: str) -> str | None:
    try:
      tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).reduce(
          np.int64(0), lambda n, _: n + 1)
    except tf.errors.DataLossError as e:
      return _describe_corruption(path, e)
    except tf.errors.NotFoundError:
      return f'{path}: file not found'
    return None
  if not files:
    return []
  with concurrent.futures.ThreadPoolExecutor(min(len(files), _MAX_PARALLEL_FILES)) as ex:
    return [m for m in ex.map(check, files) if m is not None]


def iterate(dataset: tf.data.Dataset, files: Sequence[str]) -> Iterator[Any]:
  """Numpy batches of ``dataset``; read failures become DataErrors that name the file.

  tf.data's DataLossError (truncated record, bad CRC) usually does not say which file:
  on one, each of ``files`` (those the dataset reads, e.g. `host_files`) is scanned.
  """
  iterator = dataset.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.DataLossError as e:
      found = find_corrupt_files(files)
      if found:
        raise DataError('; '.join(found)) from e
      raise DataError(f'read error in one of {len(files)} files (none is corrupt when read '
                      f'again, so it may be transient): {e.message.strip()}') from e
    except tf.errors.NotFoundError as e:
      missing = [f for f in files if not tf.io.gfile.exists(f)]
      if missing:
        raise DataError(f'{", ".join(missing)}: file vanished while being read; the data '
                        'set changed under the run (restore the file)') from e
      raise
    except tf.errors.FailedPreconditionError as e:
      if 'expected to contain' not in e.message:
        raise
      raise DataError(
          f'the files hold another number of records than their counts say '
          f'({e.message.strip()}); they were changed after '
          f'{image_records.MANIFEST_NAME} or dataset_info.json was written: '
          're-write the data set') from e
    yield batch
