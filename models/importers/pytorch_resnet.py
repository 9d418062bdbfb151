"""Loads PyTorch ResNet weights (torchvision or Hugging Face transformers) into ``ResNet``.

Both layouts are ResNet v1.5 with symmetric padding, as ``models.resnet`` is, so imported
weights reproduce the PyTorch logits (tests/test_resnet_parity.py). Key names::

  podium                    torchvision                transformers ResNetForImageClassification
  stem.conv / stem.bn       conv1 / bn1                resnet.embedder.embedder.{convolution,normalization}
  stages[i][j].conv{k}      layer{i+1}.{j}.conv{k}     resnet.encoder.stages.{i}.layers.{j}.layer.{k-1}.convolution
  stages[i][j].bn{k}        layer{i+1}.{j}.bn{k}       ... .layer.{k-1}.normalization
  stages[i][j].shortcut     layer{i+1}.{j}.downsample.{0,1}   ... .shortcut.{convolution,normalization}
  head                      fc                         classifier.1

Every network built on ``models.resnet.AnyNet`` (stem, stages of blocks, head) is imported
the same way: a :class:`Layout` names the keys, :func:`residual_targets` pairs them with the
variables, :func:`load_residual` checks and copies (``pytorch_regnet`` uses them too).
"""

from collections.abc import Callable, Iterator, Mapping
import dataclasses
import os
from typing import Any

from flax import nnx

from models.importers.pytorch import (Target, conv_kernel, copy_state_dict, linear_kernel,
                                      read_state_dict)
from models.resnet import AnyNet, ResNet


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one PyTorch implementation names the parameters of a stem-stages-head network."""

  marker: str                          # a key prefix found only in this layout
  examples: tuple[str, ...]            # typical keys, for the error when nothing matches
  stem_conv: str
  stem_bn: str
  head: str
  block: Callable[[int, int], str]     # (stage, block) -> the block's prefix
  conv: Callable[[int, bool], str]     # (k of conv{k}, block has SE) -> name in the block
  bn: Callable[[int, bool], str]
  shortcut_conv: str
  shortcut_bn: str
  se_reduce: str = ''
  se_expand: str = ''


RESNET_LAYOUTS = {
    'torchvision': Layout(
        marker='conv1.weight', examples=('conv1.weight', 'layer1.0.conv1.weight', 'fc.weight'),
        stem_conv='conv1', stem_bn='bn1', head='fc',
        block=lambda i, j: f'layer{i + 1}.{j}',
        conv=lambda k, se: f'conv{k}', bn=lambda k, se: f'bn{k}',
        shortcut_conv='downsample.0', shortcut_bn='downsample.1'),
    'transformers': Layout(
        marker='resnet.embedder.',
        examples=('resnet.embedder.embedder.convolution.weight', 'classifier.1.weight'),
        stem_conv='resnet.embedder.embedder.convolution',
        stem_bn='resnet.embedder.embedder.normalization', head='classifier.1',
        block=lambda i, j: f'resnet.encoder.stages.{i}.layers.{j}',
        conv=lambda k, se: f'layer.{k - 1}.convolution',
        bn=lambda k, se: f'layer.{k - 1}.normalization',
        shortcut_conv='shortcut.convolution', shortcut_bn='shortcut.normalization'),
}
LAYOUTS = ('auto', *RESNET_LAYOUTS)


def detect_layout(state_dict: Mapping[str, Any],
                  layouts: Mapping[str, Layout] = RESNET_LAYOUTS, what: str = 'ResNet') -> str:
  """The name of the layout whose marker prefix some key has."""
  for name, layout in layouts.items():
    if any(k.startswith(layout.marker) for k in state_dict):
      return name
  expected = ' or '.join(f"{name} keys ({', '.join(repr(k) for k in layout.examples)})"
                         for name, layout in layouts.items())
  sample = ', '.join(list(state_dict)[:5]) or 'none'
  raise ValueError(f'Cannot tell the layout of this {what} state dict: expected {expected}; '
                   f'first keys given: {sample}. Pass layout= explicitly.')


def _conv(prefix: str, conv: nnx.Conv) -> Iterator[Target]:
  yield Target(f'{prefix}.weight', conv.kernel, conv_kernel)
  if conv.bias is not None:
    yield Target(f'{prefix}.bias', conv.bias)


def _bn(prefix: str, bn: nnx.BatchNorm) -> Iterator[Target]:
  yield Target(f'{prefix}.weight', bn.scale)
  yield Target(f'{prefix}.bias', bn.bias)
  yield Target(f'{prefix}.running_mean', bn.mean)
  yield Target(f'{prefix}.running_var', bn.var)


def residual_targets(model: AnyNet, layout: Layout) -> list[Target]:
  """Every PyTorch key of ``layout`` paired with the variable of ``model`` it fills."""
  n = layout
  targets = [*_conv(n.stem_conv, model.stem.conv), *_bn(n.stem_bn, model.stem.bn)]
  for i, stage in enumerate(model.stages):
    for j, block in enumerate(stage):
      prefix = n.block(i, j)
      se = getattr(block, 'se', None)
      k = 1
      while hasattr(block, f'conv{k}'):
        targets += _conv(f'{prefix}.{n.conv(k, se is not None)}', getattr(block, f'conv{k}'))
        targets += _bn(f'{prefix}.{n.bn(k, se is not None)}', getattr(block, f'bn{k}'))
        k += 1
      if se is not None:
        targets += _conv(f'{prefix}.{n.se_reduce}', se.reduce)
        targets += _conv(f'{prefix}.{n.se_expand}', se.expand)
      if block.shortcut is not None:
        targets += _conv(f'{prefix}.{n.shortcut_conv}', block.shortcut.conv)
        targets += _bn(f'{prefix}.{n.shortcut_bn}', block.shortcut.bn)
  targets.append(Target(f'{n.head}.weight', model.head.kernel, linear_kernel))
  targets.append(Target(f'{n.head}.bias', model.head.bias))
  return targets


def resnet_targets(model: ResNet, layout: str) -> list[Target]:
  """Every PyTorch key of ``layout`` paired with the variable of ``model`` it fills."""
  return residual_targets(model, RESNET_LAYOUTS[layout])


def load_residual(model: AnyNet, state_dict: Mapping[str, Any], layout: str,
                  layouts: Mapping[str, Layout], what: str) -> AnyNet:
  """Checks ``state_dict`` against ``layouts[layout]`` ('auto': detected) and copies it."""
  if layout != 'auto' and layout not in layouts:
    raise ValueError(f'layout={layout!r}; valid: auto, {", ".join(layouts)}')
  if layout == 'auto':
    layout = detect_layout(state_dict, layouts, what)
  copy_state_dict(
      residual_targets(model, layouts[layout]), state_dict,
      ignore=lambda key: key.endswith('.num_batches_tracked'),
      what=f'podium {what} ({layout} layout)')
  return model


def load_pytorch_resnet(model: ResNet, state_dict: Mapping[str, Any],
                        layout: str = 'auto') -> ResNet:
  """Copies a PyTorch ResNet state dict into ``model`` in place and returns the model.

  Fills parameters and BatchNorm running mean/variance. ``layout`` is 'torchvision',
  'transformers' (``ResNetForImageClassification``) or 'auto'. Any missing or unexpected
  key or wrong shape raises one ``ValueError`` listing them all; the model is then unchanged.
  """
  return load_residual(model, state_dict, layout, RESNET_LAYOUTS, 'ResNet')


def load_pytorch_resnet_file(model: ResNet, path: str | os.PathLike,
                             layout: str = 'auto') -> ResNet:
  """:func:`load_pytorch_resnet` from a ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file."""
  return load_pytorch_resnet(model, read_state_dict(path), layout)
