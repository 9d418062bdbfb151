"""Each input pipeline alone, per host core: what `podium bench` reports beside the models.

Every rate is examples per second of process CPU time (all threads), so other load on the
machine does not enter and the number is one core's worth, whatever the thread count:

  ImageNet     the train map (parse, random crop box, JPEG decode, resize, flip, and the
               host's share of normalisation) on real photographs at ImageNet's sizes,
               batched: podium's configuration against the common baseline (decode the
               whole JPEG, then crop, resize and normalise to float32 on the host: tfds's
               default decoding, as the Flax ImageNet example feeds it), rounds alternated,
               medians; the cost of each stage; and how far podium's pixels are from the
               baseline's (the price of its speed).
  BERT         `bert_pretraining.train_dataset` on MLPerf-format records written by
               `bert_records` (seq 512, 76 predictions: BERT-large's).
  LibriSpeech  `librispeech.SpeechBatches` (wav2vec2 pretraining's length buckets, crop
               mode) on FLAC utterances made with soundfile and converted by
               `librispeech.write_dataset`.

`input_bound` says whether a model that trains at some examples/s would wait for its input
with the host's cores, and how many cores a TPU v4 host needs for ImageNet (4 chips x
~3,300 images/s each, MLPerf ResNet-50 rates).
"""

from __future__ import annotations

import io
import os
import statistics
import time
from typing import Any, Callable, Iterable

import numpy as np

TPU_V4_IMAGES_PER_CHIP_S = 3300   # MLPerf ResNet-50 per-chip rate on TPU v4
TPU_V4_CHIPS_PER_HOST = 4
TPU_V4_HOST_VCPUS = 240           # a TPU v4 VM (v4-8 host): 240 vCPUs
# Which pipeline feeds which benchmark model (bench.py's CASES).
PIPELINE_OF_MODEL = {'resnet50': 'imagenet', 'regnet': 'imagenet', 'bert': 'bert',
                     'wav2vec2': 'librispeech'}
UNITS = {'imagenet': 'images', 'bert': 'sequences', 'librispeech': 'utterances'}


def _per_core_rate(consume: Callable[[], int]) -> float:
  """Examples per CPU-second of this process (every thread) while `consume()` runs."""
  start = time.process_time()
  count = consume()
  return count / max(time.process_time() - start, 1e-9)


def _alternate(variants: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
  """Median per-core rate of each variant, rounds alternating the variants."""
  rates: dict[str, list[float]] = {name: [] for name in variants}
  for _ in range(rounds):
    for name, consume in variants.items():
      rates[name].append(_per_core_rate(consume))
  return {name: statistics.median(values) for name, values in rates.items()}


# -- ImageNet ---------------------------------------------------------------------------------

def photo_records(out_dir: str, count: int = 256) -> str:
  """ImageNet-format TFRecords of real photographs at ImageNet's typical sizes.

  scikit-learn ships two real photos (427x640); random crops of them, rescaled so the
  shorter side is 333-800 pixels (ImageNet's range; most are 375-500) and re-encoded as
  JPEG quality 90, stand in for ImageNet here. Written by podium's ImageNet writer.
  """
  from PIL import Image
  from sklearn.datasets import load_sample_images
  from input_pipelines import image_records
  if image_records.read_manifest(out_dir):
    return out_dir
  photos = load_sample_images().images
  rng = np.random.default_rng(0)

  def examples():
    for i in range(count):
      photo = photos[i % len(photos)]
      height, width = photo.shape[:2]
      crop_h, crop_w = rng.integers(height // 2, height + 1), rng.integers(width // 2, width + 1)
      top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
      shorter = rng.choice([333, 375, 375, 400, 500, 500, 800])
      scale = shorter / min(crop_h, crop_w)
      image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize(
          (int(crop_w * scale), int(crop_h * scale)), Image.BILINEAR)
      buffer = io.BytesIO()
      image.save(buffer, format='JPEG', quality=90)
      yield image_records.ImageExample(buffer.getvalue(), label=i % 10)

  image_records.write_image_classification_split(out_dir, 'train', examples(), 4, 10)
  image_records.write_image_classification_split(out_dir, 'validation', examples(), 1, 10)
  return out_dir


def baseline_preprocessing(image_size: int = 224):
  """The common baseline: whole-JPEG decode with libjpeg's defaults, crop, float32 out."""
  from input_pipelines import imagenet
  return imagenet.ImagePreprocessing(
      image_size=image_size, eval_resize=max(256, image_size), fused_crop=False,
      scaled_decode=False, fancy_upscaling=True, dct_method='INTEGER_ACCURATE', dtype='float32')


def podium_preprocessing(image_size: int = 224):
  """podium's defaults (what `data.*` gives a recipe): fused, scaled decode, uint8 out."""
  from input_pipelines import imagenet
  return imagenet.ImagePreprocessing(image_size=image_size, eval_resize=max(256, image_size),
                                     dtype='uint8')


def _example_seed(index):
  import tensorflow as tf
  return tf.stack([index, index * 7 + 1])


def _crop_window(image_bytes, seed, pp):
  from input_pipelines import imagenet
  return imagenet.crop_window(image_bytes, seed, pp)[0]


def _stage_maps(podium_pp, baseline_pp) -> dict[str, Callable]:
  """Maps (image_bytes, seed) -> output that stop after each stage; their costs add up."""
  import tensorflow as tf
  from input_pipelines import imagenet

  def crop_decode(image_bytes, seed):
    return tf.shape(imagenet._decode_crop(image_bytes, _crop_window(image_bytes, seed,
                                                                    podium_pp), podium_pp))

  def full_decode(image_bytes, seed):
    window = _crop_window(image_bytes, seed, baseline_pp)
    image = tf.io.decode_jpeg(image_bytes, **baseline_pp.decode_options())
    return tf.shape(tf.slice(image, tf.stack([window[0], window[1], 0]),
                             tf.stack([window[2], window[3], 3])))

  return {
      'read + parse': lambda image_bytes, seed: tf.strings.length(image_bytes),
      'header + crop box': lambda image_bytes, seed: _crop_window(image_bytes, seed, podium_pp),
      'crop decode (podium)': crop_decode,
      'whole decode + crop (baseline)': full_decode,
      'podium': lambda image_bytes, seed: imagenet.preprocess_train(image_bytes, seed, podium_pp),
      'podium, float32 normalised on the host': lambda image_bytes, seed: imagenet.preprocess_train(
          image_bytes, seed, _replace(podium_pp, dtype='float32')),
      'baseline': lambda image_bytes, seed: imagenet.preprocess_train(image_bytes, seed,
                                                                      baseline_pp),
  }


def _replace(pp, **changes):
  import dataclasses
  return dataclasses.replace(pp, **changes)


def bench_imagenet_pipeline(data_dir: str, *, rounds: int = 3, batch: int = 32,
                            image_size: int = 224) -> dict:
  """Images per second per core of the train map, podium against the baseline, per stage.

  One tf.data thread, batches of `batch` (what the trainer pulls), records cached in memory:
  every variant decodes the same bytes with the same crops. Returns per variant
  ``images_per_core_s`` and ``ms_per_image``; ``stages_ms`` (read + parse, crop box, decode,
  resize + flip + output, for podium and the baseline); ``ratio`` podium / baseline;
  ``pixels`` (`pixel_agreement`); ``tpu_v4_host`` (`tpu_v4_sizing`).
  """
  import tensorflow as tf
  from input_pipelines import imagenet
  source = imagenet.ImageNetSource.from_dir(data_dir)
  records = tf.data.TFRecordDataset(source.files('train')).cache()
  num_records = sum(1 for _ in records)  # read once: every variant then decodes from memory
  podium_pp, baseline_pp = podium_preprocessing(image_size), baseline_preprocessing(image_size)

  def dataset(fn):
    def decode(index, record):
      image_bytes, label = imagenet._parse(source, record)
      return fn(image_bytes, _example_seed(index)), label
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    repeats = max(1, -(-4 * batch // num_records))  # at least a few batches per round
    return (records.repeat(repeats).enumerate().map(decode, num_parallel_calls=1)
            .batch(batch).with_options(options))

  datasets = {name: dataset(fn) for name, fn in _stage_maps(podium_pp, baseline_pp).items()}
  for ds in datasets.values():
    for _ in ds.take(1):  # builds the pipeline and its kernels outside the measurement
      pass

  def consumer(ds):
    return lambda: sum(int(labels.shape[0]) for _, labels in ds)
  rates = _alternate({name: consumer(ds) for name, ds in datasets.items()}, rounds)
  ms = {name: 1e3 / rate for name, rate in rates.items()}
  result: dict[str, Any] = {
      name: {'images_per_core_s': rates[name], 'ms_per_image': ms[name]}
      for name in ('podium', 'podium, float32 normalised on the host', 'baseline')}
  result['stages_ms'] = {
      'podium': {
          'read + parse + batch': ms['read + parse'],
          'header + crop box': ms['header + crop box'] - ms['read + parse'],
          'decode the crop': ms['crop decode (podium)'] - ms['header + crop box'],
          'resize + round to uint8 + flip': ms['podium'] - ms['crop decode (podium)']},
      'baseline': {
          'read + parse + batch': ms['read + parse'],
          'header + crop box': ms['header + crop box'] - ms['read + parse'],
          'decode the whole JPEG + crop': ms['whole decode + crop (baseline)']
                                          - ms['header + crop box'],
          'resize + flip + normalise to float32': ms['baseline']
                                                  - ms['whole decode + crop (baseline)']}}
  result['ratio'] = rates['podium'] / rates['baseline']
  result['config'] = {'records': num_records, 'batch': batch, 'rounds': rounds,
                      'image_size': image_size, 'podium': _describe(podium_pp),
                      'baseline': _describe(baseline_pp)}
  result['pixels'] = pixel_agreement(records.take(min(num_records, 64)), source, podium_pp,
                                     baseline_pp)
  result['tpu_v4_host'] = tpu_v4_sizing(rates['podium'], rates['baseline'])
  return result


def _describe(pp) -> str:
  return (f'fused_crop={pp.fused_crop}, scaled_decode={pp.scaled_decode}, '
          f'fancy_upscaling={pp.fancy_upscaling}, dct_method={pp.dct_method}, dtype={pp.dtype}')


def pixel_agreement(records, source, podium_pp, baseline_pp) -> dict:
  """How far podium's train pixels are from the baseline's, on the same crops and flips.

  Both in pixel levels (0-255): podium's uint8 output against the baseline's float32 output
  un-normalised. ``scaled`` covers the crops decoded at a reduced scale, also compared with
  an antialiased resize of the full-scale crop (what the scaled IDCT approximates, and the
  better reference there: bilinear without antialiasing skips pixels when it shrinks).
  """
  import tensorflow as tf
  from input_pipelines import imagenet
  mean = np.asarray(baseline_pp.mean_rgb, np.float32)
  std = np.asarray(baseline_pp.stddev_rgb, np.float32)
  size = podium_pp.image_size
  all_diffs, scaled_diffs, scaled_aa_diffs = [], [], []
  for index, record in enumerate(records):
    image_bytes, _ = imagenet._parse(source, record)
    seed = _example_seed(tf.constant(index, tf.int64))
    fast = imagenet.preprocess_train(image_bytes, seed, podium_pp).numpy().astype(np.float32)
    reference = imagenet.preprocess_train(image_bytes, seed, baseline_pp).numpy() * std + mean
    diff = np.abs(fast - reference)
    all_diffs.append(diff)
    window = _crop_window(image_bytes, seed, podium_pp).numpy()
    if podium_pp.scaled_decode and min(window[2], window[3]) >= 2 * size:
      scaled_diffs.append(diff)
      crop = tf.io.decode_and_crop_jpeg(image_bytes, window, **baseline_pp.decode_options())
      smooth = tf.image.resize(crop, [size, size], method='bilinear', antialias=True).numpy()
      _, flip_seed = imagenet.crop_window(image_bytes, seed, podium_pp)
      if podium_pp.random_flip:
        smooth = tf.image.stateless_random_flip_left_right(smooth, flip_seed).numpy()
      scaled_aa_diffs.append(np.abs(fast - smooth))

  def summary(diffs):
    if not diffs:
      return None
    d = np.stack(diffs)
    return {'images': len(diffs), 'mean_abs': float(d.mean()),
            'p99_abs': float(np.percentile(d, 99)), 'max_abs': float(d.max())}
  return {'all': summary(all_diffs), 'scaled': summary(scaled_diffs),
          'scaled_vs_antialiased': summary(scaled_aa_diffs)}


def tpu_v4_sizing(podium_per_core: float, baseline_per_core: float | None = None) -> dict:
  """Cores of this CPU a TPU v4 host needs to feed its 4 chips ~3,300 images/s each."""
  need = TPU_V4_IMAGES_PER_CHIP_S * TPU_V4_CHIPS_PER_HOST
  result = {'images_per_s': need, 'host_vcpus': TPU_V4_HOST_VCPUS,
            'podium_cores': need / podium_per_core}
  if baseline_per_core:
    result['baseline_cores'] = need / baseline_per_core
  return result


# -- BERT -------------------------------------------------------------------------------------

def bert_records(out_dir: str, *, max_seq_length: int = 512, max_predictions_per_seq: int = 76,
                 num_documents: int = 400) -> str:
  """MLPerf-format BERT records (podium's writer) of the generated counting corpus.

  Every record is padded to `max_seq_length`, so the reader's cost per record does not
  depend on the text; the counting corpus is podium's own and quick to write.
  """
  from input_pipelines import bert_corpus, bert_records as writer, bert_tokenizer
  opts = writer.MaskingOptions(max_seq_length=max_seq_length,
                               max_predictions_per_seq=max_predictions_per_seq, dupe_factor=1)
  docs = bert_corpus.counting_documents(num_documents)
  os.makedirs(out_dir, exist_ok=True)
  text = os.path.join(out_dir, 'train.txt')
  bert_corpus.write_text(text, docs)
  vocab = os.path.join(out_dir, 'vocab.txt')
  with open(text, encoding='utf-8') as f:
    bert_tokenizer.write_vocab(vocab, bert_tokenizer.build_vocab(f, 128))
  tokenizer = bert_tokenizer.FullTokenizer(vocab, do_lower_case=True)
  names = [writer.shard_name(i, 2) for i in range(2)]
  writer.write_records([text], [os.path.join(out_dir, n) for n in names], tokenizer, opts)
  writer.write_records([text], [os.path.join(out_dir, 'eval-00000-of-00001')], tokenizer, opts)
  return out_dir


def bench_bert_pipeline(data_dir: str, *, rounds: int = 3, batch: int = 32, batches: int = 20,
                        max_seq_length: int = 512, max_predictions_per_seq: int = 76) -> dict:
  """Sequences per second per core of `bert_pretraining.train_dataset` (its own threads)."""
  from input_pipelines import bert_pretraining
  source = bert_pretraining.BertSource.from_dirs(
      data_dir, max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq)
  ds = bert_pretraining.train_dataset(source, local_batch_size=batch, seed=0,
                                      shuffle_buffer=1000)
  iterator = ds.as_numpy_iterator()
  next(iterator)  # builds the pipeline outside the measurement

  def consume():
    return sum(len(next(iterator)['next_sentence_labels']) for _ in range(batches))
  rate = _alternate({'bert': consume}, rounds)['bert']
  return {'examples_per_core_s': rate, 'ms_per_example': 1e3 / rate,
          'config': {'batch': batch, 'max_seq_length': max_seq_length,
                     'max_predictions_per_seq': max_predictions_per_seq, 'rounds': rounds}}


# -- LibriSpeech ------------------------------------------------------------------------------

def speech_records(out_dir: str, *, count: int = 48, seconds: tuple[float, float] = (2.0, 16.0),
                   seed: int = 0) -> str:
  """LibriSpeech-layout FLAC (soundfile) of `count` utterances, converted to podium's speech
  TFRecords by `librispeech.write_dataset`; lengths uniform in `seconds` (LibriSpeech's
  train utterances are 1-35 s, ~12 s on average). The audio is noise shaped like speech's
  loudness (syllable-rate bursts): FLAC's cost and the pipeline's do not depend on words.
  """
  import soundfile
  from input_pipelines import librispeech, librispeech_records
  records_dir = os.path.join(out_dir, 'records')
  if librispeech_records.read_manifest(records_dir):
    return records_dir
  rng = np.random.default_rng(seed)
  rate = librispeech_records.SAMPLE_RATE
  for split, n in (('train-clean-100', count), ('dev-clean', max(2, count // 8))):
    chapter_dir = os.path.join(out_dir, 'flac', split, '19', '198')
    os.makedirs(chapter_dir, exist_ok=True)
    lines = []
    for i in range(n):
      samples = int(rng.uniform(*seconds) * rate)
      envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * np.arange(samples) / rate)
      wave = (rng.standard_normal(samples) * envelope * 3000).clip(-32768, 32767)
      uid = f'19-198-{i:04d}'
      soundfile.write(os.path.join(chapter_dir, uid + '.flac'), wave.astype(np.int16), rate)
      lines.append(f'{uid} UTTERANCE NUMBER {i}')
    with open(os.path.join(chapter_dir, '19-198.trans.txt'), 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
  librispeech.write_dataset(os.path.join(out_dir, 'flac'), records_dir,
                            ['train-clean-100', 'dev-clean'], num_shards=2)
  return records_dir


def bench_librispeech_pipeline(data_dir: str, *, rounds: int = 3, batch: int = 2,
                               buckets: Iterable[int] | None = None, workers: int = 2) -> dict:
  """Utterances per second per core of `SpeechBatches.train_batches` (wav2vec2 pretraining's
  crop buckets by default), and seconds of audio per second per core."""
  from input_pipelines import librispeech, librispeech_records
  if buckets is None:
    from benchmarks.wav2vec2 import PRETRAIN_BUCKETS as buckets
  source = librispeech_records.SpeechSource.from_dir(data_dir)
  bucketing = librispeech.Bucketing(tuple(buckets), 'crop')
  batches = librispeech.SpeechBatches(
      source, train_splits=['train-clean-100'], eval_split='dev-clean',
      train_bucketing=bucketing, eval_bucketing=librispeech.Bucketing((400_000,), 'pad'),
      batch_per_shard=batch, eval_batch_per_shard=batch, shards=[0], num_shards=1, seed=0,
      normalize=True, labels=False, workers=workers)
  steps = batches.steps_per_epoch
  audio_seconds: list[float] = []

  def consume():
    count = 0
    for k, b in enumerate(batches.train_batches(0)):
      if k == steps:
        break
      count += len(b['length'])
      audio_seconds.append(float(b['length'].sum()) / librispeech_records.SAMPLE_RATE)
    return count
  consume()  # warm-up: file handles, the epoch's plan
  audio_seconds.clear()
  rate = _alternate({'librispeech': consume}, rounds)['librispeech']
  mean_seconds = sum(audio_seconds) / max(rounds * steps * batch, 1)
  return {'examples_per_core_s': rate, 'ms_per_example': 1e3 / rate,
          'audio_seconds_per_core_s': rate * mean_seconds,
          'config': {'batch': batch, 'buckets': list(batches.train_bucketing.lengths),
                     'utterances_per_epoch': steps * batch, 'rounds': rounds,
                     'mean_cropped_seconds': mean_seconds}}


# -- input-bound ------------------------------------------------------------------------------

def input_bound(per_core_rate: float, model_rate: float, host_cores: int | None = None) -> dict:
  """Whether a model training at `model_rate` examples/s would wait for this pipeline.

  It needs model_rate / per_core_rate cores; the host has `host_cores` (default: this
  machine's). On a CPU-only device the step runs on the same cores, so any share taken by
  input is taken from the step.
  """
  host_cores = host_cores or os.cpu_count() or 1
  cores = model_rate / per_core_rate
  return {'model_examples_per_s': model_rate, 'cores_needed': cores, 'host_cores': host_cores,
          'input_bound': cores > host_cores}


def pipeline_rates(results: dict) -> dict[str, float]:
  """Per-core rate of podium's pipeline for each data set measured."""
  rates = {}
  if results.get('imagenet'):
    rates['imagenet'] = results['imagenet']['podium']['images_per_core_s']
  for name in ('bert', 'librispeech'):
    if results.get(name):
      rates[name] = results[name]['examples_per_core_s']
  return rates


def input_bound_by_model(results: dict, model_rates: dict[str, float],
                         host_cores: int | None = None) -> dict[str, dict]:
  """`input_bound` for each model (bench.py's names) whose pipeline was measured."""
  rates = pipeline_rates(results)
  return {model: {'pipeline': PIPELINE_OF_MODEL[model],
                  **input_bound(rates[PIPELINE_OF_MODEL[model]], rate, host_cores)}
          for model, rate in model_rates.items()
          if PIPELINE_OF_MODEL.get(model) in rates and rate}


def run(out_dir: str, *, quick: bool = False, model_rates: dict[str, float] | None = None,
        pipelines: Iterable[str] = ('imagenet', 'bert', 'librispeech')) -> dict:
  """Measures each pipeline on data written under `out_dir`; `quick` checks the machinery
  (few records, one round), it does not give numbers to quote."""
  from benchmarks import bench  # bench imports this module first
  rounds = 1 if quick else 3
  results: dict[str, Any] = {}
  pipelines = tuple(pipelines)
  if 'imagenet' in pipelines:
    bench.progress('ImageNet input pipeline ...')
    data = photo_records(os.path.join(out_dir, 'photo_records'), count=32 if quick else 256)
    results['imagenet'] = bench_imagenet_pipeline(data, rounds=rounds, batch=8 if quick else 32)
  if 'bert' in pipelines:
    bench.progress('BERT input pipeline ...')
    data = os.path.join(out_dir, 'bert_records')
    if not os.path.exists(os.path.join(data, 'eval-00000-of-00001')):
      bert_records(data, num_documents=40 if quick else 400)
    results['bert'] = bench_bert_pipeline(data, rounds=rounds, batches=4 if quick else 20)
  if 'librispeech' in pipelines:
    bench.progress('LibriSpeech input pipeline ...')
    data = speech_records(os.path.join(out_dir, 'speech'), count=8 if quick else 48,
                          seconds=(2.0, 4.0) if quick else (2.0, 16.0))
    results['librispeech'] = bench_librispeech_pipeline(data, rounds=rounds, batch=2)
  results['input_bound'] = input_bound_by_model(results, model_rates or {})
  return results


# -- tables -----------------------------------------------------------------------------------

def markdown(results: dict | None) -> list[str]:
  """bench.md's lines for the pipelines: per-core rates, stages, pixels, input-bound, sizing."""
  if not results:
    return []
  lines = ['', '| input pipeline, per host core | examples/s | ms/example |', '|---|---|---|']
  image = results.get('imagenet')
  if image:
    for name in ('podium', 'podium, float32 normalised on the host', 'baseline'):
      label = {'podium': "ImageNet train map, podium's",
               'baseline': 'ImageNet train map, baseline (decode whole JPEG, then crop)'}.get(
                   name, f'ImageNet train map, {name}')
      lines.append(f'| {label} | {image[name]["images_per_core_s"]:.0f} | '
                   f'{image[name]["ms_per_image"]:.2f} |')
  for name, label in (('bert', 'BERT records (seq 512)'),
                      ('librispeech', 'LibriSpeech buckets (wav2vec2 pretraining)')):
    if results.get(name):
      lines.append(f'| {label} | {results[name]["examples_per_core_s"]:.0f} | '
                   f'{results[name]["ms_per_example"]:.2f} |')
  if image:
    lines += ['', '| ImageNet stage, ms per image on one core | podium | baseline |',
              '|---|---|---|']
    podium, baseline = image['stages_ms']['podium'], image['stages_ms']['baseline']
    for (p_name, p_ms), (b_name, b_ms) in zip(podium.items(), baseline.items()):
      label = p_name if p_name == b_name else f'{p_name} / {b_name}'
      lines.append(f'| {label} | {p_ms:.2f} | {b_ms:.2f} |')
    sizing = image['tpu_v4_host']
    lines.append(
        f'\npodium / baseline: **{image["ratio"]:.2f}x** per core on the same records. A TPU '
        f'v4 host ({TPU_V4_CHIPS_PER_HOST} chips x {TPU_V4_IMAGES_PER_CHIP_S:,} images/s = '
        f'{sizing["images_per_s"]:,} images/s) needs **{sizing["podium_cores"]:.0f} cores** of '
        f'this CPU for podium\'s pipeline ({sizing["baseline_cores"]:.0f} for the baseline) '
        f'of its {sizing["host_vcpus"]} vCPUs.')
    pixels = image['pixels']
    if pixels.get('all'):
      lines.append(f'Pixels against the baseline\'s (0-255 levels, same crops): mean '
                   f'|difference| {pixels["all"]["mean_abs"]:.2f}, 99th percentile '
                   f'{pixels["all"]["p99_abs"]:.0f}.')
    if pixels.get('scaled'):
      lines.append(f'The {pixels["scaled"]["images"]} crops decoded at reduced scale: mean '
                   f'{pixels["scaled"]["mean_abs"]:.2f} against bilinear, '
                   f'{pixels["scaled_vs_antialiased"]["mean_abs"]:.2f} against an antialiased '
                   f'resize.')
  bound = results.get('input_bound') or {}
  if bound:
    lines += ['', '| model | pipeline | model ex/s | cores to feed it | host cores | input-bound |',
              '|---|---|---|---|---|---|']
    for model, row in bound.items():
      lines.append(f'| {model} | {row["pipeline"]} | {row["model_examples_per_s"]:.2f} | '
                   f'{row["cores_needed"]:.3f} | {row["host_cores"]} | '
                   f'{"yes" if row["input_bound"] else "no"} |')
  return lines
