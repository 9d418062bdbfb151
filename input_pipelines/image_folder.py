"""A folder of class-named image folders, written as podium's ImageNet-format TFRecords.

The layout is the one of the MoveNet pose-classifier tutorial and Keras's
``image_dataset_from_directory``::

  ROOT/<class name>/<image>.jpg|.jpeg|.png

Classes are the sub-folders in sorted order (label 0 is the first name); every image is
read with PIL, converted to RGB (grayscale, palette, RGBA and CMYK originals), shrunk so
its longer side is at most ``max_size`` (never enlarged), and stored as an RGB JPEG by
``image_records``, so the ImageNet reader trains on it unchanged. Of each class, a fixed
``eval_fraction`` (at least one image, never all) is held out as ``validation``: chosen by a
seeded permutation of the class's sorted file names, so the split is stratified and the same
on every machine. The manifest lists the class names and a fingerprint of the folder (names,
sizes, modification times); a rerun on an unchanged folder rewrites nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from input_pipelines import image_records
from input_pipelines.errors import DataError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
FORMAT_NAME = 'image_folder'


def scan(root: str | os.PathLike) -> dict[str, list[Path]]:
  """class name -> its image files (sorted); one DataError naming the first bad path.

  Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are skipped; any other file that is
  not a JPEG/PNG, a file at the top level, an empty class folder or fewer than two classes
  is an error.
  """
  root = Path(root)
  if not root.is_dir():
    raise DataError(f'data.image_folder={root}: no such folder (expected ROOT/<class>/<image>)')
  classes: dict[str, list[Path]] = {}
  for entry in sorted(root.iterdir()):
    if entry.name.startswith('.'):
      continue
    if not entry.is_dir():
      raise DataError(f'{entry}: a file at the top of the image folder; expected only class '
                      f'folders ({root}/<class>/<image>)')
    files = []
    for path in sorted(entry.rglob('*')):
      if any(part.startswith('.') for part in path.relative_to(entry).parts) or path.is_dir():
        continue
      if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f'{path}: not an image file; class folders may hold only '
                        f'{", ".join(IMAGE_SUFFIXES)} files')
      files.append(path)
    if len(files) < 2:
      raise DataError(f'{entry}: class folder with {len(files)} image(s); each class needs at '
                      'least 2 (one to train on, one to hold out)')
    classes[entry.name] = files
  if len(classes) < 2:
    raise DataError(f'{root}: {len(classes)} class folder(s) '
                    f'({", ".join(classes) or "none"}); a classifier needs at least 2')
  return classes


def split(classes: dict[str, list[Path]], eval_fraction: float, seed: int
          ) -> dict[str, list[tuple[Path, int]]]:
  """'train' / 'validation' -> (path, label): `eval_fraction` of every class held out."""
  if not 0.0 < eval_fraction < 1.0:
    raise DataError(f'data.eval_fraction={eval_fraction}: must be in (0, 1)')
  rng = np.random.RandomState(seed)  # frozen stream: the same split on every machine
  parts: dict[str, list[tuple[Path, int]]] = {'train': [], 'validation': []}
  for label, (_, files) in enumerate(sorted(classes.items())):
    order = rng.permutation(len(files))
    held = min(max(int(round(eval_fraction * len(files))), 1), len(files) - 1)
    parts['validation'] += [(files[i], label) for i in sorted(order[:held])]
    parts['train'] += [(files[i], label) for i in order[held:]]
  # Interleave the classes in the training files (the reader's shuffle buffer may be small).
  parts['train'] = [parts['train'][i] for i in rng.permutation(len(parts['train']))]
  return parts


def load_rgb(path: Path, max_size: int) -> np.ndarray:
  """The image at `path` as uint8 RGB, its longer side at most `max_size`."""
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
        background = Image.new('RGB', image.size, (255, 255, 255))  # transparency on white
        rgba = image.convert('RGBA')
        background.paste(rgba, mask=rgba.getchannel('A'))
        image = background
      image = image.convert('RGB')  # grayscale, palette, CMYK, 16-bit
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise DataError(f'{path}: not a readable JPEG/PNG image ({e})') from None
  if max_size and max(image.size) > max_size:
    scale = max_size / max(image.size)
    image = image.resize((max(1, round(image.size[0] * scale)),
                          max(1, round(image.size[1] * scale))), Image.Resampling.BICUBIC)
  return np.asarray(image, np.uint8)


def _fingerprint(classes: dict[str, list[Path]], root: Path) -> str:
  digest = hashlib.sha256()
  for files in classes.values():
    for path in files:
      stat = path.stat()
      digest.update(f'{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


def default_records_dir(root: str | os.PathLike) -> str:
  """Where a recipe writes the records of `root` when data.dir is not set."""
  resolved = Path(root).expanduser().resolve()
  tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
  return os.path.join('data', 'folders', f'{resolved.name}-{tag}')


def write_image_folder(root: str | os.PathLike, out_dir: str, *, eval_fraction: float = 0.2,
                       max_size: int = 512, seed: int = 0, num_train_shards: int = 0,
                       num_eval_shards: int = 0) -> dict[str, Any]:
  """Writes ROOT/<class>/<image> as train/validation TFRecords; returns the manifest.

  Shard counts default to one per 1,000 images (at least 1). The manifest has
  ``class_names`` (label order) and ``source`` (the parameters and the folder's
  fingerprint), written last: it marks a complete set that a rerun keeps.
  """
  root = Path(root)
  classes = scan(root)
  source = {'name': FORMAT_NAME, 'root': str(root.expanduser().resolve()),
            'eval_fraction': eval_fraction, 'max_size': max_size, 'split_seed': seed,
            'fingerprint': _fingerprint(classes, root)}
  existing = image_records.read_manifest(out_dir)
  if existing and existing.get('source') == source:
    return existing
  if existing:  # another folder or parameters: this set is replaced (class count may differ)
    for name in os.listdir(out_dir):
      if image_records.shard_pattern('train').match(name) or \
         image_records.shard_pattern('validation').match(name):
        os.remove(os.path.join(out_dir, name))
    os.remove(os.path.join(out_dir, image_records.MANIFEST_NAME))
  names = sorted(classes)
  parts = split(classes, eval_fraction, seed)
  for part, items in parts.items():
    shards = (num_train_shards if part == 'train' else num_eval_shards) or max(1, len(items) // 1000)
    shards = min(shards, len(items))
    examples = (image_records.ImageExample(
        image=load_rgb(path, max_size), label=label, synset=names[label],
        filename=str(path.relative_to(root)), text=names[label]) for path, label in items)
    image_records.write_image_classification_split(out_dir, part, examples,
                                                   num_shards=shards, num_classes=len(names))
  return image_records.update_manifest(out_dir, len(names), class_names=names, source=source)

