"""Numerical parity of models/resnet.py with PyTorch ResNets, through the importer.

References: Hugging Face transformers' ``ResNetForImageClassification`` and, because
torchvision does not import beside this torch build, a minimal PyTorch ResNet with
torchvision's exact module names (below). Both get random weights, random BatchNorm affine
parameters and calibrated-then-perturbed running statistics, so eval mode exercises every
imported tensor while activations stay O(1) and the float32 comparison stays meaningful.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.importers import pytorch_resnet
from models.importers.pytorch import read_state_dict
from models.importers.pytorch_resnet import load_pytorch_resnet, load_pytorch_resnet_file
from models.resnet import resnet

torch = pytest.importorskip('torch')
nn = torch.nn

# max |logits difference| allowed, float32 on CPU. float32 rounding alone (PyTorch float32 vs
# float64) gives ~3e-5 for ResNet-50 with these weights.
TOLERANCE = 1e-4


# --- torchvision's ResNet, module names exactly as torchvision.models.resnet -------------

def conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(cin, width, stride)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(width, width)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride is in conv2 (3x3)."""
  expansion = 4

  def __init__(self, cin, width, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv1x1(cin, width)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = conv3x3(width, width, stride)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = conv1x1(width, width * self.expansion)
    self.bn3 = nn.BatchNorm2d(width * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class TorchvisionResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, width, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != width * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, width * block.expansion, stride),
                                 nn.BatchNorm2d(width * block.expansion))
    layers = [block(self.inplanes, width, stride, downsample)]
    self.inplanes = width * block.expansion
    layers += [block(self.inplanes, width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


# --- reference builders ------------------------------------------------------------------

def randomize_batchnorm(model, seed):
  """Random affine parameters; running statistics calibrated on random images, then perturbed.

  Uncalibrated random statistics would blow activations up layer by layer (logits ~1e3),
  hiding real errors behind float32 rounding.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5, generator=g)
      bn.bias.uniform_(-0.3, 0.3, generator=g)
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average: running stats = this batch's stats
    model.train()
    model(torch.randn(4, 3, 224, 224, generator=g))
    for bn in bns:
      bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(bn.num_features, generator=g))
      bn.running_var.mul_(torch.empty(bn.num_features).uniform_(0.8, 1.25, generator=g))
      bn.momentum = 0.1
  return model.eval()


def transformers_resnet(depth, seed=0):
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(seed)
  layer_type, hidden_sizes, depths = {
      18: ('basic', [64, 128, 256, 512], [2, 2, 2, 2]),
      50: ('bottleneck', [256, 512, 1024, 2048], [3, 4, 6, 3]),
  }[depth]
  config = transformers.ResNetConfig(
      layer_type=layer_type, depths=depths, hidden_sizes=hidden_sizes, embedding_size=64,
      num_labels=1000,
      # v1.5: stride 2 in the bottleneck's 3x3 conv, and none in the first stage.
      downsample_in_bottleneck=False, downsample_in_first_stage=False)
  model = transformers.ResNetForImageClassification(config).float()
  return randomize_batchnorm(model, seed)


def torchvision_resnet(depth, seed=0):
  torch.manual_seed(seed)
  block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 50: (Bottleneck, [3, 4, 6, 3])}[depth]
  return randomize_batchnorm(TorchvisionResNet(block, layers).float(), seed)


def logits(reference, x):
  out = reference(torch.from_numpy(x))
  return (out.logits if hasattr(out, 'logits') else out).detach().numpy()


def podium_resnet(depth):
  """Abstract: the importer fills every variable, so no random initialisation is needed."""
  return nnx.eval_shape(lambda: resnet(depth, num_classes=1000, rngs=nnx.Rngs(0)))


def nchw_images(n=2, size=224, seed=1):
  return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def assert_parity(model, reference, x, train=False):
  expected = logits(reference, x)
  actual = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)), train=train))
  diff = float(np.abs(actual - expected).max())
  print(f'max |logits diff| = {diff:.3g} (|logits| <= {np.abs(expected).max():.3g})')
  assert diff <= TOLERANCE, diff
  return diff


# --- parity -----------------------------------------------------------------------------

@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('source', ['transformers', 'torchvision'])
def test_eval_parity(source, depth):
  reference = {'transformers': transformers_resnet, 'torchvision': torchvision_resnet}[source](depth)
  model = load_pytorch_resnet(podium_resnet(depth), reference.state_dict())
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(model)))
  with torch.no_grad():
    assert_parity(model, reference, nchw_images())


def test_train_mode_parity_with_transformers_resnet18():
  """Batch statistics in the forward pass, and PyTorch's running-mean update."""
  reference = transformers_resnet(18)
  model = load_pytorch_resnet(podium_resnet(18), reference.state_dict())
  x = nchw_images(n=4, size=64)
  reference.train()
  with torch.no_grad():
    assert_parity(model, reference, x, train=True)
  updated = reference.state_dict()
  means = [t for t in pytorch_resnet.resnet_targets(model, 'transformers')
           if t.key.endswith('running_mean')]
  assert len(means) == 20
  for t in means:
    np.testing.assert_allclose(t.variable[...], updated[t.key].numpy(), atol=1e-5,
                               err_msg=t.key)
  # Running variances differ by design: PyTorch averages the unbiased (n - 1) batch
  # variance, Flax the biased one that it also normalises with.


# --- importer errors and files ----------------------------------------------------------

@pytest.fixture(scope='module')
def tv18_state():
  torch.manual_seed(0)
  return {k: v.numpy().copy() for k, v in TorchvisionResNet(BasicBlock, [2, 2, 2, 2])
          .state_dict().items()}


def test_layout_detection(tv18_state):
  assert pytorch_resnet.detect_layout(tv18_state) == 'torchvision'
  assert pytorch_resnet.detect_layout(
      {'resnet.embedder.embedder.convolution.weight': 0}) == 'transformers'
  with pytest.raises(ValueError, match=r"Cannot tell the layout.*first keys given: fc\.weight"):
    load_pytorch_resnet(podium_resnet(18), {'fc.weight': np.zeros((1000, 512))})
  with pytest.raises(ValueError, match=r"layout='timm'; valid: auto, torchvision, transformers"):
    load_pytorch_resnet(podium_resnet(18), tv18_state, layout='timm')


def test_every_mismatch_in_one_error_and_model_unchanged(tv18_state):
  model = load_pytorch_resnet(podium_resnet(18), tv18_state)
  before = jax.tree.map(np.array, nnx.state(model))
  bad = dict(tv18_state)
  del bad['layer2.0.downsample.1.running_var']
  bad['layer5.0.conv1.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  bad['fc.weight'] = np.zeros((10, 512), np.float32)
  bad['conv1.weight'] = np.zeros((7, 7, 3, 64), np.float32)  # HWIO instead of OIHW
  with pytest.raises(ValueError) as error:
    load_pytorch_resnet(model, bad)
  message = str(error.value)
  for line in ('missing keys (1):',
               'layer2.0.downsample.1.running_var  expected shape (128,)',
               'unexpected keys (1):', 'layer5.0.conv1.weight  shape (8, 8, 3, 3)',
               'shape mismatches (2), PyTorch layout:',
               'fc.weight  expected (1000, 512), given (10, 512)',
               'conv1.weight  expected (64, 3, 7, 7), given (7, 7, 3, 64)'):
    assert line in message, message
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model))


def test_wrong_architecture_is_reported_by_key(tv18_state):
  with pytest.raises(ValueError, match=r'missing keys \(\d+\):\n    layer1\.0\.conv3\.weight'):
    load_pytorch_resnet(podium_resnet(50), tv18_state)


def test_torch_tensors_and_numpy_arrays_load_alike(tv18_state):
  from_numpy = load_pytorch_resnet(podium_resnet(18), tv18_state)
  tensors = {k: torch.tensor(v, dtype=torch.bfloat16 if k == 'fc.bias' else torch.float32)
             for k, v in tv18_state.items()}
  from_torch = load_pytorch_resnet(podium_resnet(18), tensors)
  np.testing.assert_array_equal(from_torch.head.kernel[...],
                                from_numpy.head.kernel[...])
  np.testing.assert_array_equal(from_torch.head.bias[...],
                                tensors['fc.bias'].float().numpy())
  np.testing.assert_array_equal(from_torch.stem.conv.kernel[...],
                                tv18_state['conv1.weight'].transpose(2, 3, 1, 0))
  # The model holds copies: PyTorch updating its buffers in place must not reach it.
  tensors['bn1.running_mean'].add_(1.0)
  np.testing.assert_array_equal(from_torch.stem.bn.mean[...], tv18_state['bn1.running_mean'])


@pytest.mark.parametrize('suffix', ['.pth', '.bin', '.safetensors'])
def test_load_from_file(tmp_path, tv18_state, suffix):
  path = os.fspath(tmp_path / f'resnet18{suffix}')
  if suffix == '.safetensors':
    safetensors_numpy = pytest.importorskip('safetensors.numpy')
    safetensors_numpy.save_file(tv18_state, path)
  else:
    torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in tv18_state.items()}}, path)
  model = load_pytorch_resnet_file(podium_resnet(18), path)
  np.testing.assert_array_equal(model.stages[3][1].bn2.var[...],
                                tv18_state['layer4.1.bn2.running_var'])


def test_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.pt'):
    read_state_dict(tmp_path / 'missing.pt')
  odd = tmp_path / 'weights.h5'
  odd.write_bytes(b'')
  with pytest.raises(ValueError, match=r"Unknown checkpoint format .*weights\.h5.*\.safetensors"):
    read_state_dict(odd)
  not_a_dict = tmp_path / 'list.pt'
  torch.save([torch.zeros(1)], not_a_dict)
  with pytest.raises(ValueError, match='holds a list, not a state dict'):
    read_state_dict(not_a_dict)
