"""Starting runs from published weights: the shared weight-file reader, model.init_checkpoint
for the image models and BERT, and `podium import`.

Weights are made here: fairseq-style checkpoints saved with torch.save (an argparse
Namespace beside the state dict), transformers RegNet and BERT models with random weights.
"""

import argparse
import collections
import os

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks import checkpointing, export, image_classification, registry, regnet
from benchmarks.config import ConfigError
from launch import cli
from models.importers import pytorch_regnet, weight_files

torch = pytest.importorskip('torch')


class Payload:
  """Runs a command when unpickled by a plain pickle: a hostile checkpoint."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_fairseq_checkpoint_reads_without_running_its_objects(tmp_path):
  state = collections.OrderedDict(
      [('encoder.layers.0.fc1.weight', torch.randn(8, 4)), ('encoder.pos_conv.0.bias', torch.zeros(4))])
  marker = tmp_path / 'ran'
  path = tmp_path / 'checkpoint_best.pt'
  torch.save({'args': argparse.Namespace(arch='wav2vec2', lr=[5e-5], w2v_path='/x.pt'),
              'model': state, 'extra_state': {'hook': Payload(marker)},
              'optimizer_history': [{'criterion_name': 'CtcCriterion', 'num_updates': 3}]}, path)
  with pytest.raises(Exception):  # torch's own safe loader refuses the file ...
    torch.load(path, weights_only=True)
  assert weight_files.detect_format(path) == 'pytorch'
  loaded = weight_files.read_state_dict(path)  # ... the shared reader does not
  assert list(loaded) == list(state)
  np.testing.assert_array_equal(loaded['encoder.layers.0.fc1.weight'].numpy(),
                                state['encoder.layers.0.fc1.weight'].numpy())
  everything = weight_files.load_torch_pickle(str(path))
  assert everything['args'].state['arch'] == 'wav2vec2'  # kept as an inert record
  assert isinstance(everything['extra_state']['hook'], weight_files.Opaque)
  assert not marker.exists()  # the hostile object's command never ran


def test_formats_are_detected_and_unknown_ones_named(tmp_path):
  from safetensors.numpy import save_file
  save_file({'w': np.ones((2, 2), np.float32)}, str(tmp_path / 'm.safetensors'))
  assert weight_files.detect_format(tmp_path / 'm.safetensors') == 'safetensors'
  (tmp_path / 'model.ckpt-5.index').write_bytes(b'')
  assert weight_files.detect_format(tmp_path / 'model.ckpt-5') == 'tf1'
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text('{"checkpoint": {"dir": ""}}')
  assert weight_files.detect_format(run) == 'podium'
  assert weight_files.podium_checkpoint_dir(run) == run / 'checkpoints'
  (tmp_path / 'weights.h5').write_bytes(b'HDF')
  with pytest.raises(ValueError, match=r'weights\.h5.*valid: PyTorch'):
    weight_files.detect_format(tmp_path / 'weights.h5')
  with pytest.raises(ValueError, match='nope: no such file'):
    weight_files.detect_format(tmp_path / 'nope')
  torch.save({'epoch': 3}, tmp_path / 'no_tensors.pt')
  with pytest.raises(ValueError, match='holds no tensors'):
    weight_files.read_state_dict(tmp_path / 'no_tensors.pt')


@pytest.fixture(scope='module')
def regnet_weights(tmp_path_factory):
  """transformers RegNetForImageClassification (regnety_tiny's widths, 1,000 classes)."""
  from tests.test_regnet_parity import transformers_regnet
  reference = transformers_regnet('regnety_tiny')
  path = tmp_path_factory.mktemp('weights') / 'pytorch_model.bin'
  torch.save(reference.state_dict(), path)
  return path, {k: v.numpy() for k, v in reference.state_dict().items()}


def digits_config(path, *more):
  return registry.resolve('regnet', 'digits_cpu', [f'model.init_checkpoint={path}', *more])


def load(config):
  return image_classification.initial_weights(config, regnet.create_regnet,
                                              pytorch_regnet.REGNET_LAYOUTS, 'regnet')


def test_new_label_set_gets_a_fresh_head_and_keeps_everything_else(regnet_weights):
  path, state = regnet_weights
  params, model_state, note = load(digits_config(path))
  assert note.endswith('classifier head classifier.1 has 1000 classes, the model 10: the head '
                       'starts from a fresh initialisation')
  np.testing.assert_array_equal(
      params['stem']['conv']['kernel'],
      state['regnet.embedder.embedder.convolution.weight'].transpose(2, 3, 1, 0))
  # BatchNorm statistics come along (eval right after the start uses them).
  np.testing.assert_array_equal(model_state['stages'][1][0]['bn2']['var'],
                                state['regnet.encoder.stages.1.layers.0.layer.1.normalization.running_var'])
  fresh = regnet.create_regnet(digits_config('').model, nnx.Rngs(0))
  np.testing.assert_array_equal(params['head']['kernel'], np.asarray(fresh.head.kernel[...]))


def test_other_mismatches_name_the_tensors(regnet_weights, tmp_path):
  _, state = regnet_weights
  broken = dict(state)
  del broken['regnet.encoder.stages.0.layers.0.layer.0.convolution.weight']
  broken['regnet.encoder.stages.1.layers.0.shortcut.normalization.weight'] = np.ones(7, np.float32)
  path = tmp_path / 'broken.safetensors'
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in broken.items()}, str(path))
  with pytest.raises(ConfigError) as error:
    load(digits_config(path))
  message = str(error.value)
  assert 'missing keys (1)' in message and 'layers.0.layer.0.convolution.weight' in message
  assert 'shortcut.normalization.weight  expected (32,), given (7,)' in message


def test_podium_import_writes_a_checkpoint_that_init_from_reads(regnet_weights, tmp_path, capsys):
  path, _ = regnet_weights
  out = tmp_path / 'imported'
  assert cli.main(['import', str(path), '--benchmark', 'regnet', '--recipe', 'digits_cpu',
                   '--out', str(out)]) == 0
  assert f'--init_from {out}' in capsys.readouterr().out
  assert weight_files.detect_format(out) == 'podium'
  saved = checkpointing.read_state(out)
  direct, direct_state, _ = load(digits_config(path))
  from_import, import_state, note = load(digits_config(out))
  assert note == ''  # the import already holds the 10-class head
  for a, b in ((saved['params'], direct), (from_import, direct), (import_state, direct_state)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # A folder of another model is refused, naming tensors; the output folder is never reused.
  with pytest.raises(ConfigError, match=r'does not fit regnetx_200mf .*stages'):
    load(digits_config(out, 'model.name=regnetx_200mf'))
  assert cli.main(['import', str(path), '--benchmark', 'regnet', '--recipe', 'digits_cpu',
                   '--out', str(out)]) == 2
  assert 'is not empty' in capsys.readouterr().err


@pytest.mark.slow  # ~25 s on 2 idle cores (transformers, jax2tf)
def test_bert_starts_from_a_transformers_file_or_its_podium_import(tmp_path):
  from benchmarks import bert
  from launch import runtime as runtime_lib
  from tests.test_bert_parity import _hf_model
  hf = _hf_model('gelu')
  path = tmp_path / 'bert.bin'
  torch.save(hf.state_dict(), path)
  model_set = ['model.vocab_size=97', 'model.hidden_size=32', 'model.num_heads=4',
               'model.intermediate_size=64', 'model.num_layers=2',
               'model.max_position_embeddings=40', 'data.max_seq_length=32']
  out = tmp_path / 'bert_import'
  export.import_weights(path, 'bert', 'tiny_cpu', model_set, out)

  def initial(source):
    config = registry.resolve('bert', 'tiny_cpu', [*model_set, f'model.init_checkpoint={source}',
                                                   'data.synthetic=True'])
    runtime = runtime_lib.Runtime.from_config(config)
    return bert.build_task(config, runtime).initial_params()

  jax.tree.map(np.testing.assert_array_equal, initial(path), initial(out))
  np.testing.assert_allclose(initial(out)['embeddings']['word']['embedding'],
                             hf.state_dict()['bert.embeddings.word_embeddings.weight'].numpy())
  with pytest.raises(ConfigError, match='does not fit this BERT'):
    config = registry.resolve('bert', 'tiny_cpu', [*model_set, 'model.num_layers=1',
                                                   f'model.init_checkpoint={out}',
                                                   'data.synthetic=True'])
    bert.build_task(config, runtime_lib.Runtime.from_config(config)).initial_params()
