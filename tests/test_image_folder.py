"""Image-folder fine-tuning: ROOT/<class>/<image> -> TFRecords -> a RegNet fine-tuned from a
PyTorch state dict with another label set.

The folder holds real photographs (scikit-learn's two sample photos, cropped at random
places and sizes, as JPEG, PNG, RGBA PNG and CMYK JPEG) and real handwritten digits
(upscaled grayscale PNGs), three classes. The weights are a transformers
RegNetForImageClassification with random weights and 1,000 classes, saved by the test.
"""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.config import ConfigError
from input_pipelines import image_folder, image_records, imagenet
from input_pipelines.errors import DataError
from tests.test_run_digits import ROOT, mllog_lines, podium

CLASSES = ('china', 'digits', 'flower')


def make_folder(root, per_class=12, seed=0):
  """Three classes of real images in the formats people's folders hold."""
  from sklearn.datasets import load_digits, load_sample_images
  rng = np.random.RandomState(seed)
  photos = dict(zip(('china', 'flower'), load_sample_images().images))
  digits = load_digits().images
  for name in CLASSES:
    (root / name).mkdir(parents=True)
  for i in range(per_class):
    for name, photo in photos.items():
      size = rng.randint(40, 120)
      y, x = rng.randint(0, photo.shape[0] - size), rng.randint(0, photo.shape[1] - size)
      crop = Image.fromarray(photo[y:y + size, x:x + int(size * 1.3)])
      if i % 4 == 0:
        crop.save(root / name / f'{i:03d}.png')
      elif i % 4 == 1:
        crop.convert('RGBA').save(root / name / f'{i:03d}.PNG')
      elif i % 4 == 2:
        crop.convert('CMYK').save(root / name / f'{i:03d}.jpg')
      else:
        crop.save(root / name / f'{i:03d}.jpeg', quality=90)
    digit = np.clip(digits[i] * (255 / 16), 0, 255).astype(np.uint8)
    Image.fromarray(digit, 'L').resize((48, 48), Image.Resampling.BILINEAR).save(
        root / 'digits' / f'{i:03d}.png')
  (root / '.DS_Store').write_bytes(b'\0')  # hidden files are skipped
  return root


def test_writer_splits_every_class_and_converts_every_mode(tmp_path):
  root = make_folder(tmp_path / 'folder', per_class=8)
  manifest = image_folder.write_image_folder(root, str(tmp_path / 'records'),
                                             eval_fraction=0.25, max_size=64)
  assert manifest['class_names'] == list(CLASSES) and manifest['num_classes'] == 3
  assert manifest['splits']['validation']['num_examples'] == 3 * 2
  assert manifest['splits']['train']['num_examples'] == 3 * 6
  source = imagenet.ImageNetSource.from_dir(str(tmp_path / 'records'))
  labels = {'train': [], 'validation': []}
  for split in labels:
    for record in imagenet.tf.data.TFRecordDataset(list(source.files(split))):
      example = imagenet.tf.train.Example.FromString(record.numpy())
      feature = example.features.feature
      image = imagenet.tf.io.decode_jpeg(feature['image/encoded'].bytes_list.value[0])
      assert image.shape[-1] == 3 and max(image.shape[:2]) <= 64
      labels[split].append(feature['image/class/label'].int64_list.value[0] - 1)
      name = feature['image/class/synset'].bytes_list.value[0].decode()
      assert CLASSES[labels[split][-1]] == name
  assert sorted(labels['validation']) == [0, 0, 1, 1, 2, 2]  # stratified
  # Deterministic, and an unchanged folder is not rewritten.
  stat = (tmp_path / 'records' / 'train-00000-of-00001').stat().st_mtime_ns
  again = image_folder.write_image_folder(root, str(tmp_path / 'records'),
                                          eval_fraction=0.25, max_size=64)
  assert again == manifest
  assert (tmp_path / 'records' / 'train-00000-of-00001').stat().st_mtime_ns == stat
  other = image_folder.write_image_folder(root, str(tmp_path / 'other'), eval_fraction=0.25,
                                          max_size=64)
  assert other['splits'] == manifest['splits']


@pytest.mark.parametrize('damage, message', [
    (lambda r: [p.unlink() for p in (r / 'china').iterdir()], r'china: class folder with 0 image'),
    (lambda r: (r / 'flower' / 'notes.txt').write_text('x'), r'flower/notes\.txt: not an image'),
    (lambda r: (r / 'flower' / 'broken.jpg').write_bytes(b'not a jpeg'),
     r'flower/broken\.jpg: not a readable JPEG/PNG'),
    (lambda r: [[p.unlink() for p in (r / c).iterdir()] + [(r / c).rmdir()]
                for c in ('china', 'digits')], r'1 class folder\(s\) \(flower\)'),
    (lambda r: (r / 'readme.md').write_text('x'), r'readme\.md: a file at the top'),
])
def test_bad_folders_are_one_line_naming_the_path(tmp_path, damage, message):
  root = make_folder(tmp_path / 'folder', per_class=3)
  damage(root)
  with pytest.raises(DataError, match=message) as error:
    image_folder.write_image_folder(root, str(tmp_path / 'records'))
  assert '\n' not in str(error.value)
  assert not list((tmp_path / 'records').glob('train-*')) if (tmp_path / 'records').exists() else True


def test_recipe_without_a_folder_says_which_key(tmp_path):
  from benchmarks import image_classification, registry
  config = registry.resolve('regnet', 'folder_finetune', [])
  with pytest.raises(ConfigError, match='data.image_folder=ROOT'):
    image_classification.prepare_data(config)


@pytest.fixture(scope='module')
def published_regnet(tmp_path_factory):
  """A transformers RegNetY (regnety_tiny's widths) with random weights, 1,000 classes."""
  torch = pytest.importorskip('torch')
  from tests.test_regnet_parity import transformers_regnet
  path = tmp_path_factory.mktemp('weights') / 'regnet.bin'
  torch.save(transformers_regnet('regnety_tiny').state_dict(), path)
  return path


def test_folder_finetune_from_published_weights(tmp_path, published_regnet):
  """The recipe end to end: 36 images, 3 classes, 30 steps from 1000-class weights."""
  root = make_folder(tmp_path / 'folder', per_class=16)
  out = tmp_path / 'out'
  run = podium('run', 'regnet', '--recipe', 'folder_finetune', '--init_from', str(published_regnet),
               '--output', str(out), '--set', f'data.image_folder={root}',
               '--set', f'data.dir={tmp_path / "records"}', '--set', 'model.name=regnety_tiny',
               '--set', 'data.image_size=32', '--set', 'data.eval_resize=36',
               '--set', 'train.global_batch_size=8', '--set', 'train.eval_batch_size=16',
               '--set', 'train.max_epochs=8', '--set', 'train.eval_every_epochs=2',
               '--set', 'optimizer.base_learning_rate=0.05', '--set', 'train.target_accuracy=0.99',
               cwd=ROOT)
  print(run.stdout[-3000:])
  assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]
  assert 'classifier head classifier.1 has 1000 classes, the model 3' in run.stdout
  run_dir = out / 'runs' / 'regnet' / 'cpu-x1' / 'result_0'
  config = json.loads((run_dir / 'config.json').read_text())
  assert config['model']['num_classes'] == 3
  assert image_records.read_manifest(str(tmp_path / 'records'))['class_names'] == list(CLASSES)
  log = next(out.rglob('results/*/regnet/result_0.txt'))
  lines = mllog_lines(log)
  accuracies = [line['value'] for line in lines if line['key'] == 'eval_accuracy']
  assert len(accuracies) == 4
  assert max(accuracies) > 0.6, accuracies  # chance: 1/3 (12 held-out images, 4 per class)
  print('eval accuracy', accuracies)
