"""Numerical parity of models/regnet.py with PyTorch RegNets, through the importer.

References, all with random weights, random BatchNorm affine parameters and
calibrated-then-perturbed running statistics (``randomize_batchnorm`` of the ResNet parity
test), compared in float32 eval mode:
* Hugging Face transformers' ``RegNetForImageClassification``, a RegNetX and a RegNetY of
  different sizes;
* pycls 0.1.1's ``RegNet`` (the model zoo's code, and its checkpoint layout);
* torchvision's ``regnet_*`` where torchvision imports. It does not beside this torch build
  (see tests/test_resnet_parity.py), so here the torchvision layout is checked against a
  minimal PyTorch RegNet with torchvision's exact module names (below).
"""

from collections import OrderedDict
import os

import jax
import numpy as np
import pytest
from flax import nnx

from models import regnet
from models.importers import pytorch_regnet
from models.importers.pytorch_regnet import load_pytorch_regnet, load_pytorch_regnet_file
from models.importers.pytorch_resnet import residual_targets
from test_resnet_parity import TOLERANCE, logits, nchw_images, randomize_batchnorm

torch = pytest.importorskip('torch')
nn = torch.nn


def podium_regnet(name):
  """Abstract: the importer fills every variable, so no random initialisation is needed."""
  return nnx.eval_shape(lambda: regnet.regnet(name, num_classes=1000, rngs=nnx.Rngs(0)))


def podium_logits(model, x, train=False):
  """Logits of NCHW images under jit; in train mode the model takes the updated statistics."""
  graphdef, state = nnx.split(model)

  def forward(state, images):
    module = nnx.merge(graphdef, state)
    return module(images, train=train), nnx.state(module)

  out, new_state = jax.jit(forward)(state, x.transpose(0, 2, 3, 1))
  nnx.update(model, new_state)
  return np.asarray(out)


def assert_parity(model, reference, x, train=False):
  with torch.no_grad():
    expected = logits(reference, x)
  diff = float(np.abs(podium_logits(model, x, train) - expected).max())
  print(f'max |logits diff| = {diff:.3g} (|logits| <= {np.abs(expected).max():.3g})')
  assert diff <= TOLERANCE, diff
  return diff


# --- references --------------------------------------------------------------------------

def transformers_regnet(name, seed=0):
  transformers = pytest.importorskip('transformers')
  params, stages = regnet.REGNET_CONFIGS[name], regnet.stages(regnet.REGNET_CONFIGS[name])
  torch.manual_seed(seed)
  config = transformers.RegNetConfig(
      embedding_size=params.stem_width, hidden_sizes=[s.width for s in stages],
      depths=[s.depth for s in stages], groups_width=params.group_width,
      layer_type='y' if params.se_ratio else 'x', hidden_act='relu',
      downsample_in_first_stage=True, num_labels=1000)
  return randomize_batchnorm(transformers.RegNetForImageClassification(config).float(), seed)


def pycls_regnet(name, seed=0):
  from pycls.models.regnet import RegNet  # pylint: disable=import-outside-toplevel
  from test_regnet import set_pycls_cfg  # pylint: disable=import-outside-toplevel
  set_pycls_cfg(regnet.REGNET_CONFIGS[name])
  torch.manual_seed(seed)
  return randomize_batchnorm(RegNet().float(), seed)


def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
  """torchvision's Conv2dNormActivation: keys .0 (conv) and .1 (BatchNorm)."""
  layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class SqueezeExcitation(nn.Module):
  """torchvision.ops.SqueezeExcitation: fc1, fc2 (1x1 convolutions)."""

  def __init__(self, channels, squeeze):
    super().__init__()
    self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

  def forward(self, x):
    scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
    return x * scale


class TorchvisionBlock(nn.Module):
  """torchvision.models.regnet.ResBottleneckBlock: proj, f.{a, b, se, c}."""

  def __init__(self, cin, stage, stride, se_ratio):
    super().__init__()
    wb = stage.bottleneck_width
    self.proj = (conv_bn(cin, stage.width, 1, stride, relu=False)
                 if stride != 1 or cin != stage.width else None)
    f = OrderedDict(a=conv_bn(cin, wb, 1), b=conv_bn(wb, wb, 3, stride, stage.groups))
    if se_ratio:
      f['se'] = SqueezeExcitation(wb, int(round(se_ratio * cin)))
    f['c'] = conv_bn(wb, stage.width, 1, relu=False)
    self.f = nn.Sequential(f)

  def forward(self, x):
    return torch.relu((x if self.proj is None else self.proj(x)) + self.f(x))


class TorchvisionRegNet(nn.Module):
  """torchvision.models.regnet.RegNet's module tree: stem, trunk_output.block{i}, fc."""

  def __init__(self, params):
    super().__init__()
    self.stem = conv_bn(3, params.stem_width, 3, 2)
    stages, cin = OrderedDict(), params.stem_width
    for i, stage in enumerate(regnet.stages(params), 1):
      blocks = OrderedDict()
      for j in range(stage.depth):
        blocks[f'block{i}-{j}'] = TorchvisionBlock(cin, stage, 2 if j == 0 else 1,
                                                   params.se_ratio)
        cin = stage.width
      stages[f'block{i}'] = nn.Sequential(blocks)
    self.trunk_output = nn.Sequential(stages)
    self.fc = nn.Linear(cin, 1000)

  def forward(self, x):
    return self.fc(self.trunk_output(self.stem(x)).mean((2, 3)))


def torchvision_regnet(name, seed=0):
  torch.manual_seed(seed)
  try:
    from torchvision import models  # pylint: disable=import-outside-toplevel
  except Exception:  # torchvision fails to import beside this torch build  pylint: disable=broad-except
    return randomize_batchnorm(TorchvisionRegNet(regnet.REGNET_CONFIGS[name]).float(), seed)
  return randomize_batchnorm(getattr(models, name.replace('regnet', 'regnet_')
                                     .replace('_0gf', 'gf'))().float(), seed)


REFERENCES = {'transformers': transformers_regnet, 'pycls': pycls_regnet,
              'torchvision': torchvision_regnet}


# --- parity -----------------------------------------------------------------------------

@pytest.mark.parametrize('source,name,size', [
    ('transformers', 'regnetx_200mf', 224),
    ('transformers', 'regnety_800mf', 224),
    ('pycls', 'regnety_600mf', 224),
    ('torchvision', 'regnety_tiny', 64),
    pytest.param('pycls', 'regnetx_400mf', 224, marks=pytest.mark.slow),
    pytest.param('torchvision', 'regnety_400mf', 224, marks=pytest.mark.slow),
])
def test_eval_parity(source, name, size):
  reference = REFERENCES[source](name)
  state = reference.state_dict()
  assert pytorch_regnet.detect_regnet_layout(state) == source
  model = load_pytorch_regnet(podium_regnet(name), state)
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(model)))
  assert_parity(model, reference, nchw_images(size=size))


def test_real_torchvision_regnets_when_torchvision_imports():
  models = pytest.importorskip(
      'torchvision.models', reason='torchvision does not import beside torch 2.13.0+cpu; the '
      'torchvision layout is checked against a PyTorch RegNet with its module names instead')
  for name, builder in (('regnetx_400mf', models.regnet_x_400mf),
                        ('regnety_800mf', models.regnet_y_800mf)):
    reference = randomize_batchnorm(builder().float(), 0)
    assert_parity(load_pytorch_regnet(podium_regnet(name), reference.state_dict()),
                  reference, nchw_images())


def test_train_mode_parity_with_transformers_regnety_tiny():
  """Batch statistics in the forward pass, and PyTorch's running-mean update."""
  reference = transformers_regnet('regnety_tiny')
  model = nnx.eval_shape(lambda: regnet.regnet('regnety_tiny', num_classes=1000,
                                               rngs=nnx.Rngs(0)))
  load_pytorch_regnet(model, reference.state_dict())
  x = nchw_images(n=8, size=32)
  reference.train()
  assert_parity(model, reference, x, train=True)
  updated = reference.state_dict()
  means = [t for t in residual_targets(model, pytorch_regnet.REGNET_LAYOUTS['transformers'])
           if t.key.endswith('running_mean')]
  assert len(means) == 1 + 3 * 4 + 2  # stem, three per block, two shortcuts
  for t in means:
    np.testing.assert_allclose(t.variable[...], updated[t.key].numpy(), atol=1e-5,
                               err_msg=t.key)


# --- importer errors and files ----------------------------------------------------------

@pytest.fixture(scope='module')
def pycls_y600_state():
  return {k: v.numpy().copy() for k, v in pycls_regnet('regnety_600mf').state_dict().items()}


def test_another_regnets_weights_are_refused_key_by_key(pycls_y600_state):
  model = podium_regnet('regnety_400mf')
  before = jax.tree.map(np.array, nnx.state(model))
  with pytest.raises(ValueError) as error:
    load_pytorch_regnet(model, pycls_y600_state)
  message = str(error.value)
  assert 'PyTorch state dict does not fit podium RegNet (pycls layout):' in message
  assert 's1.b1.f.a.weight  expected (48, 32, 1, 1), given (48, 32, 1, 1)' not in message
  assert 's2.b1.f.a.weight  expected (104, 48, 1, 1), given (112, 48, 1, 1)' in message
  assert 'missing keys (' in message and 'unexpected keys (' in message
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model))


def test_layout_detection_and_errors(pycls_y600_state):
  assert pytorch_regnet.detect_regnet_layout({'trunk_output.block1.block1-0.f.a.0.weight': 0}) \
      == 'torchvision'
  with pytest.raises(ValueError, match=r"Cannot tell the layout of this RegNet state dict: "
                     r"expected pycls keys \('stem.conv.weight'.*first keys given: conv1\.weight"):
    load_pytorch_regnet(podium_regnet('regnety_tiny'), {'conv1.weight': np.zeros(1)})
  with pytest.raises(ValueError, match=r"layout='timm'; valid: auto, pycls, torchvision, "
                     r"transformers"):
    load_pytorch_regnet(podium_regnet('regnety_tiny'), pycls_y600_state, layout='timm')


def test_a_pycls_checkpoint_file_loads(tmp_path, pycls_y600_state):
  """pycls saves {'epoch', 'model_state', 'optimizer_state', 'cfg'} as .pyth."""
  path = os.fspath(tmp_path / 'model_epoch_0100.pyth')
  torch.save({'epoch': 99, 'model_state': {k: torch.from_numpy(v)
                                           for k, v in pycls_y600_state.items()},
              'optimizer_state': {}, 'cfg': 'REGNET: ...'}, path)
  model = load_pytorch_regnet_file(podium_regnet('regnety_600mf'), path)
  np.testing.assert_array_equal(model.stages[2][3].se.expand.bias[...],
                                pycls_y600_state['s3.b4.f.se.f_ex.2.bias'])
  np.testing.assert_array_equal(model.stages[3][0].conv2.kernel[...],
                                pycls_y600_state['s4.b1.f.b.weight'].transpose(2, 3, 1, 0))
