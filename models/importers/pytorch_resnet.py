"""Loads PyTorch ResNet weights (torchvision or Hugging Face transformers) into ``ResNet``.

Both layouts are ResNet v1.5 with symmetric padding, as ``models.resnet`` is, so imported
weights reproduce the PyTorch logits (tests/test_resnet_parity.py). Key names::

  podium                    torchvision                transformers ResNetForImageClassification
  stem.conv / stem.bn       conv1 / bn1                resnet.embedder.embedder.{convolution,normalization}
  stages[i][j].conv{k}      layer{i+1}.{j}.conv{k}     resnet.encoder.stages.{i}.layers.{j}.layer.{k-1}.convolution
  stages[i][j].bn{k}        layer{i+1}.{j}.bn{k}       ... .layer.{k-1}.normalization
  stages[i][j].shortcut     layer{i+1}.{j}.downsample.{0,1}   ... .shortcut.{convolution,normalization}
  head                      fc                         classifier.1
"""

from collections.abc import Iterator, Mapping
import os
from typing import Any

from flax import nnx

from models.importers.pytorch import (Target, conv_kernel, copy_state_dict, linear_kernel,
                                      read_state_dict)
from models.resnet import ResNet

LAYOUTS = ('auto', 'torchvision', 'transformers')


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """'transformers' or 'torchvision', from the stem's key names."""
  if any(k.startswith('resnet.embedder.') for k in state_dict):
    return 'transformers'
  if 'conv1.weight' in state_dict:
    return 'torchvision'
  sample = ', '.join(list(state_dict)[:5]) or 'none'
  raise ValueError(
      'Cannot tell the layout of this ResNet state dict: expected torchvision keys '
      "('conv1.weight', 'layer1.0.conv1.weight', 'fc.weight') or transformers "
      "ResNetForImageClassification keys ('resnet.embedder.embedder.convolution.weight', "
      f"'classifier.1.weight'); first keys given: {sample}. Pass layout= explicitly.")


def _names(layout: str) -> dict[str, Any]:
  """Per-layout key builders."""
  if layout == 'torchvision':
    return dict(
        stem_conv='conv1', stem_bn='bn1', head='fc',
        block=lambda i, j: f'layer{i + 1}.{j}',
        conv=lambda k: f'conv{k}', bn=lambda k: f'bn{k}',
        shortcut_conv='downsample.0', shortcut_bn='downsample.1')
  return dict(
      stem_conv='resnet.embedder.embedder.convolution',
      stem_bn='resnet.embedder.embedder.normalization', head='classifier.1',
      block=lambda i, j: f'resnet.encoder.stages.{i}.layers.{j}',
      conv=lambda k: f'layer.{k - 1}.convolution', bn=lambda k: f'layer.{k - 1}.normalization',
      shortcut_conv='shortcut.convolution', shortcut_bn='shortcut.normalization')


def _conv(prefix: str, conv: nnx.Conv) -> Iterator[Target]:
  yield Target(f'{prefix}.weight', conv.kernel, conv_kernel)


def _bn(prefix: str, bn: nnx.BatchNorm) -> Iterator[Target]:
  yield Target(f'{prefix}.weight', bn.scale)
  yield Target(f'{prefix}.bias', bn.bias)
  yield Target(f'{prefix}.running_mean', bn.mean)
  yield Target(f'{prefix}.running_var', bn.var)


def resnet_targets(model: ResNet, layout: str) -> list[Target]:
  """Every PyTorch key of ``layout`` paired with the variable of ``model`` it fills."""
  n = _names(layout)
  targets = [*_conv(n['stem_conv'], model.stem.conv), *_bn(n['stem_bn'], model.stem.bn)]
  for i, stage in enumerate(model.stages):
    for j, block in enumerate(stage):
      prefix = n['block'](i, j)
      k = 1
      while hasattr(block, f'conv{k}'):
        targets += _conv(f'{prefix}.{n["conv"](k)}', getattr(block, f'conv{k}'))
        targets += _bn(f'{prefix}.{n["bn"](k)}', getattr(block, f'bn{k}'))
        k += 1
      if block.shortcut is not None:
        targets += _conv(f'{prefix}.{n["shortcut_conv"]}', block.shortcut.conv)
        targets += _bn(f'{prefix}.{n["shortcut_bn"]}', block.shortcut.bn)
  targets.append(Target(f'{n["head"]}.weight', model.head.kernel, linear_kernel))
  targets.append(Target(f'{n["head"]}.bias', model.head.bias))
  return targets


def load_pytorch_resnet(model: ResNet, state_dict: Mapping[str, Any],
                        layout: str = 'auto') -> ResNet:
  """Copies a PyTorch ResNet state dict into ``model`` in place and returns the model.

  Fills parameters and BatchNorm running mean/variance. ``layout`` is 'torchvision',
  'transformers' (``ResNetForImageClassification``) or 'auto'. Any missing or unexpected
  key or wrong shape raises one ``ValueError`` listing them all; the model is then unchanged.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r}; valid: {", ".join(LAYOUTS)}')
  if layout == 'auto':
    layout = detect_layout(state_dict)
  copy_state_dict(
      resnet_targets(model, layout), state_dict,
      ignore=lambda key: key.endswith('.num_batches_tracked'),
      what=f'podium ResNet ({layout} layout)')
  return model


def load_pytorch_resnet_file(model: ResNet, path: str | os.PathLike,
                             layout: str = 'auto') -> ResNet:
  """:func:`load_pytorch_resnet` from a ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file."""
  return load_pytorch_resnet(model, read_state_dict(path), layout)
