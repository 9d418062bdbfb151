"""Loads PyTorch RegNet weights (pycls, torchvision, transformers) into ``models.regnet.RegNet``.

pycls's checkpoints are the published model zoo the paper's numbers come from; torchvision's
and transformers' RegNets are the same networks under other names. All three pad ``k // 2``
symmetrically, as podium does, so imported weights reproduce the PyTorch logits
(tests/test_regnet_parity.py). Key names::

  podium                  pycls                 torchvision                                  transformers RegNetForImageClassification
  stem.conv / .bn         stem.conv / stem.bn   stem.0 / stem.1                              regnet.embedder.embedder.{convolution,normalization}
  stages[i][j]            s{i+1}.b{j+1}         trunk_output.block{i+1}.block{i+1}-{j}       regnet.encoder.stages.{i}.layers.{j}
    .conv1/.bn1 (1x1)     .f.a / .f.a_bn        .f.a.0 / .f.a.1                              .layer.0.{convolution,normalization}
    .conv2/.bn2 (3x3)     .f.b / .f.b_bn        .f.b.0 / .f.b.1                              .layer.1...
    .se.reduce/.expand    .f.se.f_ex.{0,2}      .f.se.fc1 / .f.se.fc2                        .layer.2.attention.{0,2}
    .conv3/.bn3 (1x1)     .f.c / .f.c_bn        .f.c.0 / .f.c.1                              .layer.2... (X) or .layer.3... (Y)
    .shortcut.conv/.bn    .proj / .bn           .proj.0 / .proj.1                            .shortcut.{convolution,normalization}
  head                    head.fc               fc                                           classifier.1
"""

from collections.abc import Mapping
import os
from typing import Any

from models.importers.pytorch import read_state_dict
from models.importers.pytorch_resnet import Layout, detect_layout, load_residual
from models.regnet import RegNet

_ABC = {1: 'a', 2: 'b', 3: 'c'}


def _transformers_index(k: int, se: bool) -> int:
  """transformers' block is a Sequential: 1x1, 3x3, [SE,] 1x1."""
  return k - 1 + (k == 3 and se)


REGNET_LAYOUTS = {
    'pycls': Layout(
        marker='stem.conv.', examples=('stem.conv.weight', 's1.b1.f.a.weight', 'head.fc.weight'),
        stem_conv='stem.conv', stem_bn='stem.bn', head='head.fc',
        block=lambda i, j: f's{i + 1}.b{j + 1}',
        conv=lambda k, se: f'f.{_ABC[k]}', bn=lambda k, se: f'f.{_ABC[k]}_bn',
        shortcut_conv='proj', shortcut_bn='bn',
        se_reduce='f.se.f_ex.0', se_expand='f.se.f_ex.2'),
    'torchvision': Layout(
        marker='trunk_output.',
        examples=('stem.0.weight', 'trunk_output.block1.block1-0.f.a.0.weight', 'fc.weight'),
        stem_conv='stem.0', stem_bn='stem.1', head='fc',
        block=lambda i, j: f'trunk_output.block{i + 1}.block{i + 1}-{j}',
        conv=lambda k, se: f'f.{_ABC[k]}.0', bn=lambda k, se: f'f.{_ABC[k]}.1',
        shortcut_conv='proj.0', shortcut_bn='proj.1',
        se_reduce='f.se.fc1', se_expand='f.se.fc2'),
    'transformers': Layout(
        marker='regnet.embedder.',
        examples=('regnet.embedder.embedder.convolution.weight', 'classifier.1.weight'),
        stem_conv='regnet.embedder.embedder.convolution',
        stem_bn='regnet.embedder.embedder.normalization', head='classifier.1',
        block=lambda i, j: f'regnet.encoder.stages.{i}.layers.{j}',
        conv=lambda k, se: f'layer.{_transformers_index(k, se)}.convolution',
        bn=lambda k, se: f'layer.{_transformers_index(k, se)}.normalization',
        shortcut_conv='shortcut.convolution', shortcut_bn='shortcut.normalization',
        se_reduce='layer.2.attention.0', se_expand='layer.2.attention.2'),
}
LAYOUTS = ('auto', *REGNET_LAYOUTS)


def detect_regnet_layout(state_dict: Mapping[str, Any]) -> str:
  """'pycls', 'torchvision' or 'transformers', from the key names."""
  return detect_layout(state_dict, REGNET_LAYOUTS, 'RegNet')


def load_pytorch_regnet(model: RegNet, state_dict: Mapping[str, Any],
                        layout: str = 'auto') -> RegNet:
  """Copies a PyTorch RegNet state dict into ``model`` in place and returns the model.

  Fills parameters and BatchNorm running mean/variance. ``layout`` is 'pycls', 'torchvision',
  'transformers' (``RegNetForImageClassification``) or 'auto'. Any missing or unexpected key
  or wrong shape (e.g. weights of another RegNet) raises one ``ValueError`` listing them all;
  the model is then unchanged.
  """
  return load_residual(model, state_dict, layout, REGNET_LAYOUTS, 'RegNet')


def load_pytorch_regnet_file(model: RegNet, path: str | os.PathLike,
                             layout: str = 'auto') -> RegNet:
  """:func:`load_pytorch_regnet` from a ``.pyth``/``.pth``/``.pt``/``.bin`` or
  ``.safetensors`` file (pycls's ``{'model_state': ...}`` checkpoints included)."""
  return load_pytorch_regnet(model, read_state_dict(path), layout)
