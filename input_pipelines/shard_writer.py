"""Writing TFRecord shards so that readers never see half of one.

Every podium writer (ImageNet-format images, BERT records, LibriSpeech audio) writes its shards
under temporary names beside their final paths and renames them only when all are complete;
an error removes the temporary files and leaves whatever was there before untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import uuid
from collections.abc import Iterator, Sequence

import tensorflow as tf


@dataclasses.dataclass
class Shards:
  """Open writers, one per shard, and the temporary file each writes."""
  writers: list
  tmp_paths: list[str]

  def close(self) -> None:
    """Closes every writer (again is harmless): before checking what was written."""
    for writer in self.writers:
      writer.close()


@contextlib.contextmanager
def write_shards(paths: Sequence[str | os.PathLike]) -> Iterator[Shards]:
  """TFRecord writers for ``paths`` (local or gs://), renamed into place when the block ends
  without an error; on an error the temporary files are removed and the error propagates."""
  paths = [os.fspath(p) for p in paths]
  token = uuid.uuid4().hex
  shards = Shards([], [os.path.join(os.path.dirname(p), f'.{os.path.basename(p)}.tmp-{token}')
                       for p in paths])
  try:
    shards.writers = [tf.io.TFRecordWriter(t) for t in shards.tmp_paths]
    yield shards
    shards.close()
  except BaseException:
    shards.close()
    for tmp in shards.tmp_paths:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
    raise
  for tmp, path in zip(shards.tmp_paths, paths):
    tf.io.gfile.rename(tmp, path, overwrite=True)


def remove_stale_shards(out_dir: str, pattern: re.Pattern, keep: Sequence[str]) -> None:
  """Removes the files of ``out_dir`` that match ``pattern`` (one split's shard names) but are
  not in ``keep``: an earlier write of the split with another shard count."""
  for existing in tf.io.gfile.listdir(out_dir):
    if pattern.match(existing) and existing not in keep:
      tf.io.gfile.remove(os.path.join(out_dir, existing))
