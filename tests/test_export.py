"""`podium export`: a trained digits ResNet as a SavedModel that TensorFlow alone runs and
Keras fine-tunes.

A real (short) run trains the model; the export must give podium's numbers, load in a fresh
process in which JAX cannot even be imported, and train inside a Keras model.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from tests.test_run_digits import ROOT, podium

BLOCK_JAX = textwrap.dedent('''
    import sys
    class BlockJax:
      def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('jax', 'jaxlib', 'flax'):
          raise ImportError('JAX is blocked in this process: ' + name)
    sys.meta_path.insert(0, BlockJax())
''')


def tf_only(script, *args):
  """Runs `script` in a fresh Python in which importing JAX fails."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, '-c', BLOCK_JAX + textwrap.dedent(script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def import_and_export(weights, benchmark, recipe, model_set, folder):
  """`podium import` of a weight file into a run folder, then its SavedModel export; returns
  (config, SavedModel path, export spec, the imported podium model)."""
  from benchmarks import export, registry
  run_dir = folder / 'run'
  export.import_weights(weights, benchmark, recipe, model_set, run_dir / 'checkpoints')
  config = registry.resolve(benchmark, recipe, model_set)
  (run_dir / 'config.json').write_text(config.to_json_best_effort())
  saved = export.export_savedmodel(run_dir, folder / 'sm')
  _, spec, graphdef, params, model_state = export.trained_model(run_dir)
  return config, saved, spec, nnx.merge(graphdef, params, model_state)


def signatures_without_jax(saved, folder, signatures, batches, keys):
  """Calls the SavedModel's `signatures` on `folder`/in_<batch>.npz in a process without JAX,
  and checks the outputs hold exactly `keys`; returns {batch: {output: array}}."""
  out = tf_only(f'''
      import numpy as np, tensorflow as tf
      loaded = tf.saved_model.load(sys.argv[1])
      assert set(loaded.signatures) == {set(signatures)!r}, set(loaded.signatures)
      for batch in {tuple(batches)!r}:
        inputs = {{k: tf.constant(v) for k, v in np.load(f'{{sys.argv[2]}}/in_{{batch}}.npz').items()}}
        outputs = {{}}
        for name in {tuple(signatures)!r}:
          outputs.update(loaded.signatures[name](**inputs))
        np.savez(f'{{sys.argv[2]}}/out_{{batch}}.npz', **{{k: v.numpy() for k, v in outputs.items()}})
      print('JAX', 'jax' in sys.modules)
  ''', str(saved), str(folder))
  assert out.strip().endswith('JAX False')
  results = {}
  for batch in batches:
    got = dict(np.load(os.path.join(folder, f'out_{batch}.npz')))
    assert set(got) == set(keys), sorted(got)
    results[batch] = got
  return results


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  work = tmp_path_factory.mktemp('export')
  out = work / 'out'
  run = podium('run', 'resnet50', '--recipe', 'digits_cpu', '--output', str(out),
               '--set', f'data.dir={work / "data"}', '--set', 'train.max_epochs=4', cwd=ROOT)
  assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
  run_dir = out / 'runs' / 'resnet50' / 'cpu-x1' / 'result_0'
  export = podium('export', str(run_dir), '--format', 'savedmodel', '--out', str(work / 'sm'),
                  cwd=ROOT)
  assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
  return work, run_dir, work / 'sm'


def digits_images(work, count=64):
  """Eval images of the run's own data, as floats in [0, 1], and their labels."""
  from input_pipelines import imagenet
  source = imagenet.ImageNetSource.from_dir(str(work / 'data'))
  pp = imagenet.ImagePreprocessing(image_size=16, eval_resize=16)
  num_batches = -(-source.num_examples('validation') // count)
  batch = next(iter(imagenet.eval_dataset(source, local_batch_size=count, num_batches=num_batches,
                                          process_index=0, process_count=1, preprocessing=pp)))
  mean, std = np.array(pp.mean_rgb, np.float32), np.array(pp.stddev_rgb, np.float32)
  images = (batch['image'].numpy() * std + mean) / 255.0
  return images.astype(np.float32), batch['label'].numpy().astype(np.int64)


def test_export_matches_podium_and_runs_without_jax(exported):
  from benchmarks import export
  work, run_dir, saved = exported
  images, _ = digits_images(work)
  np.save(work / 'images.npy', images)
  config, spec, graphdef, params, model_state = export.trained_model(run_dir)
  model = nnx.merge(graphdef, params, model_state)
  expected = {name: np.asarray(jax.jit(lambda x, fn=fn: fn(model, x))(images))
              for name, fn in spec.functions.items()}
  tf_only('''
      import numpy as np, tensorflow as tf
      sm = tf.saved_model.load(sys.argv[1])
      images = np.load(sys.argv[2])
      np.save(sys.argv[3], sm.classify(images).numpy())
      np.save(sys.argv[4], sm.signatures['feature_vector'](inputs=images[:5])['output_0'].numpy())
      assert 'jax' not in sys.modules
      print(len(sm.trainable_variables), len(sm.variables))
  ''', str(saved), str(work / 'images.npy'), str(work / 'logits.npy'), str(work / 'features.npy'))
  np.testing.assert_allclose(np.load(work / 'logits.npy'), expected['classify'], atol=1e-4)
  np.testing.assert_allclose(np.load(work / 'features.npy'), expected['feature_vector'][:5],
                             atol=1e-4)
  assert expected['classify'].shape == (64, 10)
  meta = json.loads((saved / 'podium_export.json').read_text())
  assert meta['functions'] == ['classify', 'feature_vector'] and meta['model'] == 'resnet_tiny'


def test_keras_fine_tunes_the_exported_backbone(exported):
  work, _, saved = exported
  images, labels = digits_images(work, count=128)
  np.savez(work / 'train.npz', images=images, labels=labels)
  out = tf_only('''
      import numpy as np, tensorflow as tf, keras
      data = np.load(sys.argv[2])
      backbone = keras.layers.TFSMLayer(sys.argv[1], call_endpoint='feature_vector',
                                        trainable=True)
      inputs = keras.Input((16, 16, 3))
      outputs = keras.layers.Dense(10)(backbone(inputs))
      model = keras.Model(inputs, outputs)
      before = [w.numpy().copy() for w in backbone.trainable_weights]
      assert before, 'the exported parameters must be trainable'
      # Plain SGD: Keras 3.15 cannot name momentum/Adam slots of a TFSMLayer's variables
      # (their names end in ':0'), whatever the SavedModel.
      model.compile(optimizer=keras.optimizers.SGD(0.01),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
      history = model.fit(data['images'], data['labels'], batch_size=32, epochs=4, verbose=0,
                          shuffle=False)
      moved = max(float(np.abs(w.numpy() - b).max())
                  for w, b in zip(backbone.trainable_weights, before))
      print('LOSSES', history.history['loss'], 'MOVED', moved, 'JAX', 'jax' in sys.modules)
  ''', str(saved), str(work / 'train.npz'))
  line = out.strip().splitlines()[-1]
  losses = [float(x) for x in line.split('LOSSES [')[1].split(']')[0].split(',')]
  moved = float(line.split('MOVED ')[1].split()[0])
  assert losses[-1] < losses[0], losses
  assert moved > 0, 'fine-tuning must update the backbone, not only the new head'
  assert line.endswith('JAX False')


def test_export_refuses_to_overwrite_and_names_a_bad_run_dir(exported, tmp_path):
  _, run_dir, saved = exported
  again = podium('export', str(run_dir), '--format', 'savedmodel', '--out', str(saved), cwd=ROOT)
  assert again.returncode == 2 and 'not empty' in again.stderr
  missing = podium('export', str(tmp_path), '--format', 'savedmodel', '--out',
                   str(tmp_path / 'x'), cwd=ROOT)
  assert missing.returncode == 2 and 'no config.json' in missing.stderr


@pytest.mark.slow  # ~25 s on 2 idle cores (transformers, jax2tf)
def test_bert_exports_as_a_tf_hub_encoder_of_any_batch(tmp_path):
  """A BERT (transformers' random weights through `podium import`) as a TF Hub-style encoder:
  outputs equal podium's (and the pooler transformers') at two batch sizes, in a process
  without JAX."""
  torch = pytest.importorskip('torch')
  from benchmarks import bert as bert_benchmark
  from tests.test_bert_parity import _hf_model
  hf = _hf_model('gelu')
  torch.save(hf.state_dict(), tmp_path / 'bert.bin')
  model_set = ['model.vocab_size=97', 'model.hidden_size=32', 'model.num_heads=4',
               'model.intermediate_size=64', 'model.num_layers=2',
               'model.max_position_embeddings=40', 'data.max_seq_length=32']
  config, saved, spec, model = import_and_export(tmp_path / 'bert.bin', 'bert', 'tiny_cpu',
                                                 model_set, tmp_path)
  rng = np.random.RandomState(0)
  expected = {}
  length = 32  # data.max_seq_length
  for batch in (3, 5):
    ids = rng.randint(0, 97, (batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.randint(5, length + 1, (batch, 1))).astype(np.int32)
    types = (np.arange(length)[None] >= length // 2).astype(np.int32).repeat(batch, 0)
    inputs = {'input_word_ids': ids, 'input_mask': mask, 'input_type_ids': types}
    outputs = {**spec.functions['encoder'](model, inputs),
               **spec.functions['pretraining_logits'](model, inputs)}
    np.savez(tmp_path / f'in_{batch}.npz', **inputs)
    expected[batch] = {k: np.asarray(v) for k, v in outputs.items()}
  # The pooled output is BertModel's pooler_output (the reference).
  with torch.no_grad():
    reference = hf.bert(**{'input_ids': torch.tensor(np.load(tmp_path / 'in_3.npz')['input_word_ids']).long(),
                           'attention_mask': torch.tensor(np.load(tmp_path / 'in_3.npz')['input_mask']).long(),
                           'token_type_ids': torch.tensor(np.load(tmp_path / 'in_3.npz')['input_type_ids']).long()})
  np.testing.assert_allclose(expected[3]['pooled_output'], reference.pooler_output.numpy(),
                             atol=1e-4)
  assert bert_benchmark.export_spec(config).serving == 'encoder'

  outputs = signatures_without_jax(
      saved, tmp_path, ['serving_default', 'pretraining_logits'], list(expected),
      {'sequence_output', 'pooled_output', 'mlm_logits', 'nsp_logits'})
  for batch, want in expected.items():
    for key, value in want.items():
      np.testing.assert_allclose(outputs[batch][key], value, atol=1e-4, err_msg=key)


@pytest.mark.slow  # ~30 s on 2 idle cores (transformers, jax2tf)
def test_wav2vec2_ctc_exports_audio_signatures_of_any_batch(tmp_path, monkeypatch):
  """A wav2vec2 CTC model (transformers' random weights through `podium import`) exports
  `ctc_logits` (serving_default) and `features` on raw audio + lengths: outputs equal podium's
  in a process without JAX, and the logits equal transformers' on the valid frames."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from input_pipelines import librispeech
  from models import wav2vec2 as w2v
  from models.importers import pytorch_wav2vec2 as importer
  torch.manual_seed(0)
  from tests.test_wav2vec2_parity import hf_config as tiny_hf_config
  hf_config = tiny_hf_config('large')
  hf = transformers.Wav2Vec2ForCTC(hf_config).eval()
  torch.save(hf.state_dict(), tmp_path / 'ctc.bin')
  monkeypatch.setitem(w2v.WAV2VEC2_CONFIGS, 'from_hf', importer.config_from_transformers(hf_config))
  model_set = ['model.name=from_hf']
  config, saved, spec, model = import_and_export(tmp_path / 'ctc.bin', 'wav2vec2_ctc',
                                                 'espeak_cpu', model_set, tmp_path)
  samples = max(config.data.eval_bucket_lengths)
  rng = np.random.RandomState(0)
  expected = {}
  for batch in (2, 3):
    lengths = rng.randint(samples // 2, samples + 1, batch).astype(np.int32)
    audio = (rng.randn(batch, samples) * 0.1).astype(np.float32)
    audio[np.arange(samples)[None] >= lengths[:, None]] = 0.0
    inputs = {'audio': audio, 'lengths': lengths}
    np.savez(tmp_path / f'in_{batch}.npz', **inputs)
    expected[batch] = {k: np.asarray(v) for fn in spec.functions.values()
                       for k, v in fn(model, inputs).items()}
  # transformers on the same utterances, each normalised as the input pipeline does.
  inputs = np.load(tmp_path / 'in_2.npz')
  for row, length in enumerate(inputs['lengths']):
    wave = inputs['audio'][row, :length]
    wave = (wave - wave.mean()) / np.sqrt(wave.var() + librispeech.NORMALIZE_EPSILON)
    with torch.no_grad():
      reference = hf(torch.tensor(wave[None])).logits[0].numpy()
    np.testing.assert_allclose(expected[2]['ctc_logits'][row, :len(reference)], reference,
                               atol=1e-3)
    assert expected[2]['frame_mask'][row].sum() == len(reference)

  outputs = signatures_without_jax(saved, tmp_path, ['serving_default', 'features'],
                                   list(expected), {'ctc_logits', 'features', 'frame_mask'})
  for batch, want in expected.items():
    for key, value in want.items():
      np.testing.assert_allclose(outputs[batch][key], value, atol=1e-4, err_msg=key)
