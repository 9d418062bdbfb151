"""The input-pipeline benches (benchmarks/bench_pipelines.py) on a handful of real records.

Speeds are not asserted (they belong to `make bench`); what is: every variant decodes the
same records and is measured, the stages and the sizing are derived from the measurements,
podium's fast train map stays within stated pixel tolerances of the reference preprocessing
on real photographs, the data.* keys are checked, and the tables say what was measured."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import bench_pipelines as bp
from input_pipelines import imagenet


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  return bp.photo_records(str(tmp_path_factory.mktemp('photos')), count=12)


def test_imagenet_bench_measures_podium_and_the_baseline(photos):
  result = bp.bench_imagenet_pipeline(photos, rounds=1, batch=4)
  podium, baseline = result['podium'], result['baseline']
  assert podium['images_per_core_s'] > 0 and baseline['images_per_core_s'] > 0
  assert result['ratio'] == pytest.approx(podium['images_per_core_s'] /
                                          baseline['images_per_core_s'])
  # The stages of each side add up to its whole map.
  for side in ('podium', 'baseline'):
    assert sum(result['stages_ms'][side].values()) == pytest.approx(
        result[side]['ms_per_image'], rel=1e-6)
  sizing = result['tpu_v4_host']
  assert sizing['podium_cores'] == pytest.approx(13_200 / podium['images_per_core_s'])
  assert result['pixels']['all']['images'] == 12
  table = '\n'.join(bp.markdown({'imagenet': result}))
  assert 'podium / baseline' in table and 'TPU v4 host' in table and 'decode the crop' in table


def test_fast_train_map_is_close_to_the_reference_on_real_photos(photos):
  """Same crops and flips; the differences are libjpeg's chroma upsampling (about two levels
  on average) and, for crops decoded at reduced scale, the scaled IDCT's smoothing."""
  source = imagenet.ImageNetSource.from_dir(photos)
  records = tf.data.TFRecordDataset(source.files('train'))
  pixels = bp.pixel_agreement(records, source, bp.podium_preprocessing(),
                              bp.baseline_preprocessing())
  assert pixels['all']['images'] == 12
  assert pixels['all']['mean_abs'] < 4.0, pixels
  assert np.isfinite(pixels['all']['p99_abs']) and pixels['all']['p99_abs'] < 48, pixels
  if pixels['scaled']:
    assert pixels['scaled_vs_antialiased']['mean_abs'] < 9.0, pixels


def test_uint8_output_normalised_equals_the_host_normalised_output(photos):
  """What the device does to 'uint8' batches gives the host's 'float32' output, to rounding."""
  source = imagenet.ImageNetSource.from_dir(photos)
  pp = bp.podium_preprocessing()
  as_float = imagenet.ImagePreprocessing(dtype='float32')
  for index, record in enumerate(tf.data.TFRecordDataset(source.files('train')).take(4)):
    image_bytes, _ = imagenet._parse(source, record)
    seed = tf.constant([index, 1], tf.int64)
    pixels = imagenet.preprocess_train(image_bytes, seed, pp).numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == (224, 224, 3)
    normalised = imagenet.normalize_pixels(pixels, pp)
    host = imagenet.preprocess_train(image_bytes, seed, as_float).numpy()
    # Rounding to uint8 moves a pixel by at most half a level.
    np.testing.assert_allclose(normalised, host, atol=0.5 / min(pp.stddev_rgb) + 1e-4)


def test_image_data_keys_are_checked():
  from benchmarks import image_classification, registry
  from benchmarks.config import ConfigError
  config = registry.resolve('resnet50', 'digits_cpu', [])
  assert config.data.transfer_dtype == 'uint8' and config.data.scaled_decode
  pp = image_classification._preprocessing(config.data)
  assert pp.dtype == 'uint8' and not pp.fancy_upscaling
  for key, value, names in (('transfer_dtype', 'int8', 'uint8, float32, bfloat16'),
                            ('dct_method', 'FLOAT', 'INTEGER_ACCURATE, INTEGER_FAST')):
    bad = registry.resolve('resnet50', 'digits_cpu', [f'data.{key}={value}'])
    with pytest.raises(ConfigError, match=f"data.{key}='{value}'.*{names}"):
      image_classification._preprocessing(bad.data)


def test_bert_and_librispeech_benches(tmp_path):
  bert_dir = bp.bert_records(str(tmp_path / 'bert'), max_seq_length=64,
                             max_predictions_per_seq=10, num_documents=30)
  bert = bp.bench_bert_pipeline(bert_dir, rounds=1, batch=4, batches=2, max_seq_length=64,
                                max_predictions_per_seq=10)
  assert bert['examples_per_core_s'] > 0
  speech_dir = bp.speech_records(str(tmp_path / 'speech'), count=6, seconds=(1.0, 2.5))
  speech = bp.bench_librispeech_pipeline(speech_dir, rounds=1, batch=2, buckets=(16_000,),
                                         workers=1)
  assert speech['examples_per_core_s'] > 0
  # Every utterance is cropped to the one bucket: 1 s each.
  assert speech['config']['mean_cropped_seconds'] == pytest.approx(1.0)
  assert speech['audio_seconds_per_core_s'] == pytest.approx(speech['examples_per_core_s'])
  results = {'bert': bert, 'librispeech': speech}
  results['input_bound'] = bp.input_bound_by_model(
      results, {'bert': 2 * bert['examples_per_core_s'], 'wav2vec2': 1.0, 'resnet50': 5.0},
      host_cores=2)
  assert set(results['input_bound']) == {'bert', 'wav2vec2'}  # no ImageNet rate measured
  assert results['input_bound']['bert']['cores_needed'] == pytest.approx(2.0)
  table = '\n'.join(bp.markdown(results))
  assert 'BERT records' in table and 'LibriSpeech buckets' in table and '| bert | bert |' in table


def test_input_bound_and_tpu_sizing():
  assert bp.input_bound(100.0, 250.0, host_cores=2) == {
      'model_examples_per_s': 250.0, 'cores_needed': 2.5, 'host_cores': 2, 'input_bound': True}
  assert not bp.input_bound(100.0, 150.0, host_cores=2)['input_bound']
  sizing = bp.tpu_v4_sizing(400.0, 200.0)
  assert sizing['podium_cores'] == pytest.approx(33.0)
  assert sizing['baseline_cores'] == pytest.approx(66.0)
