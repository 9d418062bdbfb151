"""MLPerf ResNet-50 v1.5 on ImageNet: time to 75.9% top-1 (ruleset 4.0.0, the last round
that held it). Recipes are checked in as code; see `podium recipes resnet50`."""

from __future__ import annotations

import math

from mlperf_logging.mllog import constants as C

from benchmarks import image_classification
from benchmarks.registry import recipe
from models import resnet as resnet_models

IMAGENET_TRAIN_EXAMPLES = 1_281_167


create_resnet = image_classification.named_model_factory(resnet_models.RESNET_CONFIGS,
                                                        resnet_models.resnet)


def export_spec(config):
  """`podium export`: classify and feature_vector on images in [0, 1] (benchmarks/export.py)."""
  from benchmarks import export
  return export.image_classifier_spec(config, create_resnet)


def build_task(config, runtime):
  image_classification.prepare_data(config)
  from models.importers import pytorch_resnet
  return image_classification.ImageClassificationTask(
      config, runtime, create_resnet, mlperf_benchmark=C.RESNET,
      layouts=pytorch_resnet.RESNET_LAYOUTS)


@recipe('resnet50')
def digits_cpu():
  """The embedded default: a tiny ResNet on scikit-learn's real handwritten digits, on a CPU.

  Source: podium. The 1,797 8x8 digits shipped with scikit-learn are written as ImageNet
  TFRecords (grayscale JPEGs at 16x16, twice their native size; 1-based labels; 1,500 train / 297 held out) and train
  through exactly the ImageNet code path: the same reader, decode-and-crop, LARS with the
  MLPerf polynomial schedule, eval every 4 epochs (offset 2: epochs 2, 6, 10, ...) and the
  MLPerf log. Flips are off: digits are
  not mirror-symmetric.
  Hardware: one CPU (2 cores suffice). Expected: top-1 >= 0.95 on the held-out 297 images
  within 20 epochs, about a minute of training on 2 cores.
  """
  config = image_classification.digits_config('resnet_tiny', image_size=16)
  config.train.max_epochs = 40
  config.optimizer.update(base_learning_rate=2.0, warmup_epochs=2.0, momentum=0.9,
                          weight_decay=1e-4)
  return config


@recipe('resnet50')
def folder_finetune():
  """ResNet-50 fine-tuned on your own folder of images: ROOT/<class>/<image>.jpg|png.

  Source: podium; transfer learning as in the TF Hub / Keras image-classification
  tutorials. Start from published weights with `--init_from FILE` (torchvision's
  resnet50-*.pth, transformers' microsoft/resnet-50 model.safetensors, or a podium run or
  `podium import` folder); the classifier head starts fresh when the folder has another
  number of classes. Set `--set data.image_folder=ROOT`; the images (any size, JPEG or PNG,
  grayscale and CMYK converted) are written to TFRecords in data/folders/ with 20% of each
  class held out. 224px crops, batch 32, SGD momentum 0.9 with a cosine from 0.01 over 10
  epochs, eval every epoch.
  Hardware: one CPU or GPU. Expected: from ImageNet weights, held-out top-1 well above
  chance after the first epoch; the target (0.9) depends on your classes
  (--set train.target_accuracy=...).
  """
  return image_classification.folder_finetune_config('resnet50')


def _rcp_recipe(*, batch: int, base_lr: float, warmup_epochs: int, momentum: float,
                weight_decay: float, decay_steps: int, topology: str):
  """A TPU recipe with the hyperparameters of an MLPerf reference convergence point."""
  config = image_classification.base_config()
  config.topology = topology
  config.model.update(name='resnet50', num_classes=1000, dtype='bfloat16')
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES / batch
  warmup_steps = math.ceil(warmup_epochs * steps_per_epoch)
  config.train.update(global_batch_size=batch, eval_batch_size=batch,
                      max_epochs=math.ceil((warmup_steps + decay_steps) / steps_per_epoch))
  config.optimizer.update(name='lars', base_learning_rate=base_lr, end_learning_rate=1e-4,
                          warmup_epochs=float(warmup_epochs), decay_steps=decay_steps,
                          poly_power=2.0, momentum=momentum, weight_decay=weight_decay)
  return config


@recipe('resnet50')
def tpu_v4_64_bs4096():
  """ResNet-50 at global batch 4,096 with LARS, for a TPU v4-64 slice (32 chips).

  Source: the MLPerf reference convergence point resnet_ref_4096 shipped in mlperf-logging
  (rcp_checker/training_4.0.0/rcps_resnet.json; Google, TPU-v4-64, TF2): base LR 10, 5 warmup
  epochs, momentum 0.9, weight decay 2e-4, 13,137 decay steps, BN span 64.
  Expected: 75.9% top-1 after 40 epochs on average (10 reference runs; RCP mean 39.88,
  pruned to an interpolated 35.7).
  """
  return _rcp_recipe(batch=4096, base_lr=10.0, warmup_epochs=5, momentum=0.9,
                     weight_decay=2e-4, decay_steps=13137, topology='v4-64')


@recipe('resnet50')
def tpu_v4_bs32768():
  """ResNet-50 at global batch 32,768 with LARS, for a TPU v4-512 slice (256 chips).

  Source: the MLPerf reference convergence point resnet_ref_32768 shipped in mlperf-logging
  (rcp_checker/training_4.0.0/rcps_resnet.json; Google, measured on TPU-v4 with TF2): base
  LR 21.2, 16 warmup epochs, momentum 0.94, weight decay 2.5e-5, 2,267 decay steps.
  Expected: 75.9% top-1 after 56 epochs on average (RCP mean over 10 runs).
  """
  return _rcp_recipe(batch=32768, base_lr=21.2, warmup_epochs=16, momentum=0.94,
                     weight_decay=2.5e-5, decay_steps=2267, topology='v4-512')


@recipe('resnet50')
def tpu_v5p_bs65536():
  """ResNet-50 at global batch 65,536 with LARS, for a TPU v5p-1024 slice (512 chips).

  Source: the MLPerf reference convergence point resnet_ref_65536 shipped in mlperf-logging
  (rcp_checker/training_4.0.0/rcps_resnet.json; Google, measured on TPU-v3-512 with TF2):
  base LR 24.699, 31 warmup epochs, momentum 0.951807, weight decay 1e-4, 1,133 decay
  steps; Google's MLPerf v0.7 JAX submission on 4,096 TPU v3 chips used the same batch.
  Expected: 75.9% top-1 after 84.5 epochs on average (RCP mean over 10 runs).
  """
  return _rcp_recipe(batch=65536, base_lr=24.699, warmup_epochs=31, momentum=0.951807,
                     weight_decay=1e-4, decay_steps=1133, topology='v5p-1024')
