"""`podium_dataset.json`: the manifest every podium writer puts beside its records.

It names the format, and counts the examples of every file, so a reader knows split sizes
(and can plan per-host eval padding) without a pass over the data. Each writer adds its own
fields (classes, masking options, sample rate); this module only reads and writes it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from input_pipelines.errors import DataError

MANIFEST_NAME = 'podium_dataset.json'


def read_manifest(data_dir: str, expected_format: str) -> dict[str, Any] | None:
  """The manifest of ``data_dir`` (local or gs://), or None when there is none; a manifest
  of another format, or not JSON, is a DataError naming the file."""
  path = os.path.join(os.fspath(data_dir), MANIFEST_NAME)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f'{path} is not valid JSON ({e}); delete it or rewrite the data set') from e
  if not isinstance(manifest, dict) or manifest.get('format') != expected_format:
    found = manifest.get('format') if isinstance(manifest, dict) else type(manifest).__name__
    raise DataError(f'{path} is not a podium manifest of {expected_format!r} data: expected a '
                    f'JSON object with "format": "{expected_format}", found {found!r}')
  return manifest


def write_manifest(data_dir: str, manifest: Mapping[str, Any]) -> None:
  """Replaces the manifest atomically (temp name, then rename): readers never see half."""
  path = os.path.join(os.fspath(data_dir), MANIFEST_NAME)
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
  tf.io.gfile.rename(tmp, path, overwrite=True)
