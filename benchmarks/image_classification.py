"""Image classification on the ImageNet input: the Task that ResNet and RegNet share.

The model is the only thing a benchmark swaps: everything else here (input, label-smoothed
cross-entropy, top-1 over every eval example exactly once, LARS or SGD with the MLPerf
polynomial schedule, blocks of epochs between evals) follows the MLPerf ResNet rules.
`optimizer.schedule='cosine'` gives SGD pycls's per-epoch cosine with warmup instead
(RegNet's recipes).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from flax import nnx
from mlperf_logging.mllog import constants as C

from benchmarks import optimizers
from benchmarks.config import ConfigError, loop_config
from benchmarks.task import Block, Task
from input_pipelines import imagenet

ModelFactory = Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]


def base_config() -> ml_collections.ConfigDict:
  """Fields every image-classification recipe has; recipes fill in the values."""
  config = loop_config()
  config.update(dict(
      model=dict(name='resnet50', num_classes=1000, dtype='bfloat16',
                 # Starting weights: a PyTorch state dict (torchvision, transformers, pycls;
                 # .pt/.pth/.pyth/.bin/.safetensors) or a podium run / checkpoint / `podium
                 # import` folder; empty: random. A classifier head of another shape (other
                 # classes) starts fresh.
                 init_checkpoint=''),
      data=dict(
          dir='', prepare='', synthetic=False,
          # data.prepare='image_folder': <image_folder>/<class>/<image> written to data.dir
          # as TFRecords, eval_fraction of each class held out; model.num_classes=0 takes
          # the number of class folders.
          image_folder='', eval_fraction=0.2, folder_max_size=512,
          # Input shards (0: one per process). Fixing it makes the data order independent of
          # the number of processes: one process reading 2 shards sees exactly the batches
          # two processes would.
          input_shards=0,
          # Used when the data set has no manifest with its counts (real ImageNet).
          train_examples=1_281_167, eval_examples=50_000,
          shuffle_buffer=16_384, image_size=224, eval_resize=256,
          crop_area_min=0.08, random_flip=True,
          # How the host decodes and what it sends (input_pipelines.imagenet.ImagePreprocessing;
          # costs and pixel differences: README, "Input pipelines"): uint8 pixels that the
          # step normalises on the device, and a fast libjpeg decode of the crop.
          transfer_dtype='uint8', scaled_decode=True, fancy_upscaling=False,
          dct_method='INTEGER_ACCURATE'),
      train=dict(
          global_batch_size=1024, eval_batch_size=1024, max_epochs=90,
          eval_every_epochs=4, eval_offset_epochs=0, label_smoothing=0.1,
          target_accuracy=0.759),
      optimizer=dict(
          name='lars', base_learning_rate=1.0, end_learning_rate=1e-4, warmup_epochs=5.0,
          decay_steps=0, poly_power=2.0, momentum=0.9, weight_decay=1e-4, epsilon=0.0,
          trust_coefficient=0.001, nesterov=False,
          # 'polynomial': MLPerf's warmup from 0 + polynomial decay (end_learning_rate,
          # decay_steps, poly_power). 'cosine' (SGD only): pycls's per-epoch cosine over
          # train.max_epochs, its warmup starting at warmup_factor x the base rate.
          schedule='polynomial', warmup_factor=0.0,
          # SGD only: weight decay on BatchNorm parameters and biases too (pycls), not only
          # on kernels (MLPerf).
          decay_all_parameters=False),
  ))
  return config


def named_model_factory(configs: Mapping[str, Any], build: Callable[..., nnx.Module]
                        ) -> ModelFactory:
  """The factory of `model.name` among `configs`, made by `build(name, num_classes=, dtype=,
  rngs=)` (`models.resnet.resnet`, `models.regnet.regnet`)."""
  def create(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    if model_config.name not in configs:
      raise ConfigError(f'model.name={model_config.name!r}; valid: {", ".join(configs)}')
    return build(model_config.name, num_classes=model_config.num_classes,
                 dtype=jnp.dtype(model_config.dtype), rngs=rngs)
  return create


def digits_config(model_name: str, *, image_size: int = 16) -> ml_collections.ConfigDict:
  """A CPU recipe's start: `model_name` in float32 on scikit-learn's real handwritten digits
  as ImageNet TFRecords, to top-1 0.95; the recipe adds its optimizer and length.

  `data.prepare='digits'` writes them to `data.dir` when the run starts: 1,500 train and a
  fixed 297 held out, 10 classes, grayscale JPEGs upscaled to `image_size` (twice the native
  8x8 at 16). Crops keep at least 60% of the area and flips are off: digits are not
  mirror-symmetric. Batch 64, eval every 4 epochs from epoch 2 (2, 6, 10, ...).
  """
  config = base_config()
  config.log_every_steps = 10
  config.model.update(name=model_name, num_classes=10, dtype='float32')
  config.data.update(dir='data/digits' if image_size == 16 else f'data/digits{image_size}',
                     prepare='digits', train_examples=1500, eval_examples=297,
                     image_size=image_size, eval_resize=image_size,
                     crop_area_min=0.6, random_flip=False, shuffle_buffer=2048)
  config.train.update(global_batch_size=64, eval_batch_size=128, eval_every_epochs=4,
                      eval_offset_epochs=2, target_accuracy=0.95)
  return config


def folder_finetune_config(model_name: str) -> ml_collections.ConfigDict:
  """Fine-tuning `model_name` on a folder of class-named image folders, on one machine.

  `data.image_folder=ROOT` (ROOT/<class>/<image>: the MoveNet classifier tutorial's layout)
  is written to TFRecords when the run starts (20% of each class held out); the number of
  classes comes from the folders, and a start from `--init_from` weights trained on other
  classes gets a fresh head. SGD with momentum, a short cosine with one warmup epoch, eval
  after every epoch.
  """
  config = base_config()
  config.log_every_steps = 10
  config.model.update(name=model_name, num_classes=0, dtype='float32')
  config.data.update(prepare='image_folder', train_examples=0, eval_examples=0,
                     image_size=224, eval_resize=256, crop_area_min=0.25, random_flip=True,
                     shuffle_buffer=4096)
  config.train.update(global_batch_size=32, eval_batch_size=64, max_epochs=10,
                      eval_every_epochs=1, eval_offset_epochs=0, label_smoothing=0.1,
                      target_accuracy=0.9)
  config.optimizer.update(name='sgd', schedule='cosine', base_learning_rate=0.01,
                          warmup_epochs=1.0, warmup_factor=0.1, momentum=0.9, nesterov=False,
                          weight_decay=1e-4, decay_all_parameters=False)
  return config


def prepare_data(config: ml_collections.ConfigDict) -> None:
  """Writes the data set a recipe asks for with `data.prepare` ('digits', 'image_folder'),
  if any; an image folder's class count fills `model.num_classes` when that is 0."""
  data = config.data
  if data.synthetic:
    return
  if data.prepare == 'digits':
    from input_pipelines import digits
    digits.write_digits(data.dir, image_size=data.image_size)
  elif data.prepare == 'image_folder':
    from input_pipelines import image_folder
    if not data.image_folder:
      raise ConfigError(f'recipe {config.recipe!r} fine-tunes on a folder of images: set '
                        '--set data.image_folder=ROOT (ROOT/<class>/<image>.jpg|png)')
    if not data.dir:
      data.dir = image_folder.default_records_dir(data.image_folder)
    manifest = image_folder.write_image_folder(
        data.image_folder, data.dir, eval_fraction=data.eval_fraction,
        max_size=data.folder_max_size, seed=config.seed)
    if not config.model.num_classes:
      config.model.num_classes = manifest['num_classes']
  elif data.prepare:
    raise ConfigError(f'data.prepare={data.prepare!r}; valid: digits, image_folder, or empty')


def _pure(tree) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(tree))


def initial_weights(config, model_factory: ModelFactory, layouts: Mapping[str, Any], what: str
                    ) -> tuple[dict, dict, str]:
  """(params, model_state, note) of `model.init_checkpoint` for `config`'s model.

  PyTorch state dicts go through the residual importer with `layouts` (torchvision,
  transformers, pycls names); podium folders are read as they are. A classifier head whose
  shape differs (1000 ImageNet classes -> the folder's 5) keeps its fresh initialisation,
  and `note` says so; any other difference is a ConfigError naming the tensors.
  """
  from models.importers import pytorch, pytorch_resnet, weight_files
  path = config.model.init_checkpoint
  create = lambda: model_factory(config.model, nnx.Rngs(int(config.seed)))
  model = nnx.eval_shape(create)  # made for real only where values are needed
  head_shape = tuple(model.head.kernel.shape)
  note = ''
  try:
    fmt = weight_files.detect_format(path)
    if fmt in ('pytorch', 'safetensors'):
      model = create()
      state_dict = weight_files.read_state_dict(path)
      layout_name = pytorch_resnet.detect_layout(state_dict, layouts, what)
      layout = layouts[layout_name]
      targets = pytorch_resnet.residual_targets(model, layout)
      head_keys = {f'{layout.head}.weight', f'{layout.head}.bias'}
      given = state_dict.get(f'{layout.head}.weight')
      given_shape = None if given is None else tuple(pytorch.to_numpy(given).shape)[::-1]
      if given_shape and given_shape[0] == head_shape[0] and given_shape != head_shape:
        note = (f'{path}: classifier head {layout.head} has {given.shape[0]} classes, the model '
                f'{head_shape[1]}: the head starts from a fresh initialisation')
        targets = [t for t in targets if t.key not in head_keys]
        state_dict = {k: v for k, v in state_dict.items() if k not in head_keys}
      pytorch.copy_state_dict(targets, state_dict,
                              ignore=lambda key: key.endswith('.num_batches_tracked'),
                              what=f'podium {config.model.name} ({layout_name} layout)')
      _, params, rest = nnx.split(model, nnx.Param, ...)
      return _pure(params), _pure(rest), note
    saved = weight_files.read_podium(path) if fmt == 'podium' else None
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f'model.init_checkpoint={path}: {e}') from None
  if saved is None:
    raise ConfigError(f'model.init_checkpoint={path} is a {fmt} checkpoint; {what} starts '
                      'from PyTorch state dicts (.pt/.pth/.pyth/.bin/.safetensors) or podium '
                      'folders')
  _, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  saved_head = saved['params'].get('head', {}).get('kernel')
  new_head = (saved_head is not None and saved_head.shape[0] == head_shape[0]
              and tuple(saved_head.shape) != head_shape)
  if new_head:
    note = (f'{path}: classifier head has {saved_head.shape[1]} classes, the model '
            f'{head_shape[1]}: the head starts from a fresh initialisation')
    saved = {'params': {**saved['params'], 'head': params['head']},
             'model_state': saved['model_state']}
  problems = (weight_files.tree_mismatches(params, saved['params']) +
              weight_files.tree_mismatches(rest, saved.get('model_state', {}), 'model state'))
  if problems:
    raise ConfigError(f'model.init_checkpoint={path} does not fit {config.model.name} '
                      f'(model.name must be the one it was trained as): '
                      + weight_files.summarize(problems))
  if new_head:
    saved['params']['head'] = _pure(nnx.state(create().head, nnx.Param))
  cast = lambda tree, like: jax.tree.map(lambda a, b: np.asarray(a, b.dtype), tree, like)
  return cast(saved['params'], params), cast(saved['model_state'], rest), note


class ImageClassificationTask(Task):
  mlperf_benchmark = C.RESNET
  ruleset = '4.0.0'
  quality_name = 'top1'
  progress_unit = 'epoch'

  def __init__(self, config, runtime, model_factory: ModelFactory, *, mlperf_benchmark: str,
               extra_hyperparameters: Mapping[str, Any] | None = None,
               layouts: Mapping[str, Any] | None = None):
    """`extra_hyperparameters` are logged beside the optimizer's (e.g. which model);
    `layouts` name the PyTorch keys `model.init_checkpoint` files may use."""
    self.config = config
    self.layouts = layouts or {}
    self._initial_model_state = None
    self.runtime = runtime
    self.model_factory = model_factory
    self.mlperf_benchmark = mlperf_benchmark
    self.extra_hyperparameters = dict(extra_hyperparameters or {})
    train = config.train
    self.global_batch_size = train.global_batch_size
    self.local_batch_size = runtime.local_batch_size(train.global_batch_size)
    self.local_eval_batch_size = runtime.local_batch_size(train.eval_batch_size)
    self.input_shards = self._input_shards()
    self.target = train.target_accuracy
    self.preprocessing = _preprocessing(config.data)
    self.source = None
    self.train_samples = config.data.train_examples
    self.eval_samples = config.data.eval_examples
    if not config.data.synthetic:
      if not config.data.dir:
        raise ConfigError(f'recipe {config.recipe!r} reads no data: set --set data.dir=PATH '
                          f'(ImageNet TFRecords or a TFDS imagenet2012 directory) or '
                          f'--set data.synthetic=True')
      self.source = imagenet.ImageNetSource.from_dir(config.data.dir)
      self.train_samples = self.source.num_examples('train') or config.data.train_examples
      self.eval_samples = self.source.num_examples('validation') or config.data.eval_examples
      if self.source.num_classes and self.source.num_classes != config.model.num_classes:
        raise ConfigError(f'{config.data.dir} has {self.source.num_classes} classes but '
                          f'model.num_classes is {config.model.num_classes}')
    self.steps_per_epoch = self.train_samples / self.global_batch_size
    self._schedule = self._learning_rate_schedule()
    self._eval_num_batches = None

  # -- model, loss, metric ---------------------------------------------------------------

  def create_model(self, rngs):
    return self.model_factory(self.config.model, rngs)

  def initial_params(self):
    if not self.config.model.init_checkpoint:
      return None
    params, self._initial_model_state, note = initial_weights(
        self.config, self.model_factory, self.layouts, self.mlperf_benchmark)
    if note and self.runtime.process_index == 0:
      print(f'podium: {note}', flush=True)
    return params

  def initial_model_state(self):
    return self._initial_model_state

  def _epoch_step(self, epoch: float) -> int:
    return int(math.ceil(epoch * self.steps_per_epoch - 1e-9))

  @property
  def total_steps(self) -> int:
    return self._epoch_step(self.config.train.max_epochs)

  def _learning_rate_schedule(self):
    opt = self.config.optimizer
    if opt.name == 'lars' and (opt.schedule != 'polynomial' or opt.decay_all_parameters):
      raise ConfigError(f'optimizer.name=lars takes MLPerf\'s polynomial schedule and decays '
                        f'kernels only (optimizer.schedule={opt.schedule!r}, '
                        f'optimizer.decay_all_parameters={opt.decay_all_parameters}); '
                        'use optimizer.name=sgd for the others')
    if opt.schedule == 'cosine':
      max_epochs = self.config.train.max_epochs
      return optimizers.warmup_cosine_by_epoch(
          base_lr=opt.base_learning_rate, total_epochs=max_epochs,
          warmup_epochs=opt.warmup_epochs, warmup_factor=opt.warmup_factor,
          epoch_starts=[self._epoch_step(e) for e in range(1, max_epochs + 1)])
    if opt.schedule != 'polynomial':
      raise ConfigError(f'optimizer.schedule={opt.schedule!r}; valid: polynomial, cosine')
    if opt.warmup_factor:
      raise ConfigError(f'optimizer.warmup_factor={opt.warmup_factor}: the polynomial schedule '
                        'warms up from 0 (MLPerf); warmup_factor is for the cosine schedule')
    warmup = self._epoch_step(opt.warmup_epochs)
    decay = opt.decay_steps or max(self.total_steps - warmup, 1)
    return optimizers.warmup_polynomial_decay(
        base_lr=opt.base_learning_rate, end_lr=opt.end_learning_rate, warmup_steps=warmup,
        decay_steps=decay, power=opt.poly_power)

  def learning_rate(self, step):
    return self._schedule(step)

  def optimizer(self):
    opt = self.config.optimizer
    if opt.name == 'lars':
      return optimizers.lars(self._schedule, momentum=opt.momentum, weight_decay=opt.weight_decay,
                             epsilon=opt.epsilon, trust_coefficient=opt.trust_coefficient,
                             nesterov=opt.nesterov)
    if opt.name == 'sgd':
      return optimizers.sgd_momentum(self._schedule, momentum=opt.momentum,
                                     weight_decay=opt.weight_decay, nesterov=opt.nesterov,
                                     decay_all_parameters=opt.decay_all_parameters)
    raise ConfigError(f'optimizer.name={opt.name!r}; valid: lars, sgd')

  def _images(self, batch):
    """uint8 pixels (data.transfer_dtype='uint8') are normalised here, on the device."""
    image = batch['image']
    if image.dtype == jnp.uint8:
      image = imagenet.normalize_pixels(image, self.preprocessing, jnp)
    return image

  def loss(self, model, batch, rng):
    logits = model(self._images(batch), train=True)
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes),
                                 self.config.train.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
    return loss, {'train_top1': accuracy}

  def eval_sums(self, model, batch):
    logits = model(self._images(batch), train=False)
    mask = batch['mask'].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'correct': jnp.sum(correct * mask), 'count': jnp.sum(mask)}

  def quality(self, sums):
    count = float(sums['count'])
    if self.source is not None and int(count) != self.eval_samples:
      raise RuntimeError(f'eval saw {int(count)} examples, expected exactly {self.eval_samples}')
    return float(sums['correct']) / max(count, 1.0)

  # -- schedule ----------------------------------------------------------------------------

  def blocks(self):
    """Evals every `eval_every_epochs`, the first one `eval_offset_epochs` early (MLPerf: 4, 0-3)."""
    train = self.config.train
    every, offset = train.eval_every_epochs, train.eval_offset_epochs
    if not 0 <= offset < every:
      raise ConfigError(f'train.eval_offset_epochs={offset}: must be in [0, {every})')
    blocks, first_epoch, end_epoch = [], 1, every - offset
    while first_epoch <= train.max_epochs:
      end_epoch = min(end_epoch, train.max_epochs)
      count = end_epoch - first_epoch + 1
      blocks.append(Block(
          end_step=self._epoch_step(end_epoch),
          start_metadata={C.FIRST_EPOCH_NUM: first_epoch, C.EPOCH_COUNT: count},
          eval_metadata={C.EPOCH_NUM: end_epoch},
          progress=float(end_epoch)))
      first_epoch, end_epoch = end_epoch + 1, end_epoch + every
    return blocks

  def hyperparameters(self):
    return {**self._optimizer_hyperparameters(), **self.extra_hyperparameters}

  def _optimizer_hyperparameters(self):
    opt, train = self.config.optimizer, self.config.train
    warmup_steps = self._epoch_step(opt.warmup_epochs)
    decay_steps = opt.decay_steps or max(self.total_steps - warmup_steps, 1)
    if opt.name == 'lars':
      return {
          C.OPT_NAME: C.LARS,
          C.LARS_OPT_BASE_LEARNING_RATE: opt.base_learning_rate,
          C.LARS_OPT_END_LR: opt.end_learning_rate,
          C.LARS_OPT_LR_DECAY_POLY_POWER: opt.poly_power,
          C.LARS_OPT_LR_DECAY_STEPS: decay_steps,
          C.LARS_EPSILON: opt.epsilon,
          C.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS: opt.warmup_epochs,
          C.LARS_OPT_MOMENTUM: opt.momentum,
          C.LARS_OPT_WEIGHT_DECAY: opt.weight_decay,
          # BatchNorm statistics are taken over the whole global batch (GSPMD makes the
          # batch mean global), so that is the span.
          C.MODEL_BN_SPAN: self.global_batch_size,
          'label_smoothing': train.label_smoothing,
      }
    if opt.schedule == 'cosine':
      return {
          C.OPT_NAME: C.SGD,
          'sgd_opt_base_learning_rate': opt.base_learning_rate,
          'sgd_opt_momentum': opt.momentum,
          'sgd_opt_nesterov': opt.nesterov,
          'sgd_opt_weight_decay': opt.weight_decay,
          'sgd_opt_weight_decay_bn_and_bias': opt.decay_all_parameters,
          C.OPT_LR_DECAY_SCHEDULE: 'cosine',
          'opt_learning_rate_decay_epochs': train.max_epochs,
          C.OPT_LR_WARMUP_EPOCHS: opt.warmup_epochs,
          C.OPT_LR_WARMUP_FACTOR: opt.warmup_factor,
          C.MODEL_BN_SPAN: self.global_batch_size,
          'label_smoothing': train.label_smoothing,
      }
    return {
        C.OPT_NAME: C.SGD,
        'sgd_opt_base_learning_rate': opt.base_learning_rate,
        'sgd_opt_end_learning_rate': opt.end_learning_rate,
        'sgd_opt_learning_rate_decay_poly_power': opt.poly_power,
        'sgd_opt_learning_rate_decay_steps': decay_steps,
        'sgd_opt_weight_decay': opt.weight_decay,
        'sgd_opt_momentum': opt.momentum,
        C.MODEL_BN_SPAN: self.global_batch_size,
        'opt_learning_rate_warmup_epochs': opt.warmup_epochs,
        'label_smoothing': train.label_smoothing,
    }

  # -- input -------------------------------------------------------------------------------

  def input_spec(self, *, eval):
    size = self.config.data.image_size
    batch = self.local_eval_batch_size if eval else self.local_batch_size
    spec = {'image': jax.ShapeDtypeStruct((batch, size, size, 3),
                                          jnp.dtype(self.preprocessing.dtype)),
            'label': jax.ShapeDtypeStruct((batch,), jnp.int32)}
    if eval:
      spec['mask'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return spec

  def train_batches(self, start_step=0):
    if self.config.data.synthetic:
      batch = imagenet.synthetic_batches(self.local_batch_size, self.config.data.image_size,
                                         self.config.model.num_classes, self.config.seed,
                                         self.preprocessing.dtype)
      while True:
        yield batch
    shard_batch = self.local_batch_size // len(self.input_shards)
    datasets = [imagenet.train_dataset(
        self.source, local_batch_size=shard_batch, seed=self.config.seed,
        process_index=shard, process_count=self.num_input_shards,
        preprocessing=self.preprocessing, shuffle_buffer=self.config.data.shuffle_buffer,
        start_step=start_step) for shard in self.input_shards]
    yield from imagenet.iterate(_concat(datasets), self.source.files('train'))

  def eval_batches(self):
    if self.config.data.synthetic:
      batch = imagenet.synthetic_batches(self.local_eval_batch_size, self.config.data.image_size,
                                         self.config.model.num_classes, self.config.seed,
                                         self.preprocessing.dtype)
      batch = dict(batch, mask=np.ones((self.local_eval_batch_size,), np.int32))
      for _ in range(math.ceil(self.eval_samples / self.config.train.eval_batch_size)):
        yield batch
      return
    shard_batch = self.local_eval_batch_size // len(self.input_shards)
    if self._eval_num_batches is None:
      # Counted on the first eval, inside the timed run: the dataset is not touched before.
      local = max(imagenet.local_eval_count(self.source, shard, self.num_input_shards)
                  for shard in self.input_shards)
      self._eval_num_batches = math.ceil(self.runtime.max_over_processes(local) / shard_batch)
    datasets = [imagenet.eval_dataset(
        self.source, local_batch_size=shard_batch, num_batches=self._eval_num_batches,
        process_index=shard, process_count=self.num_input_shards,
        preprocessing=self.preprocessing) for shard in self.input_shards]
    yield from imagenet.iterate(_concat(datasets), self.source.files('validation'))


def _preprocessing(data: ml_collections.ConfigDict) -> imagenet.ImagePreprocessing:
  """The data.* keys as ImagePreprocessing; a bad value is a ConfigError naming its key."""
  keys = {'image_size': 'image_size', 'eval_resize': 'eval_resize', 'dtype': 'transfer_dtype',
          'scaled_decode': 'scaled_decode', 'fancy_upscaling': 'fancy_upscaling',
          'dct_method': 'dct_method', 'random_flip': 'random_flip'}
  values = {field: data[key] for field, key in keys.items()}
  try:
    return imagenet.ImagePreprocessing(crop_area_range=(data.crop_area_min, 1.0), **values)
  except ValueError as e:
    for field, key in keys.items():
      if str(e).startswith(field):
        raise ConfigError(f'data.{key}={data[key]!r}: {e}') from None
    raise ConfigError(f'data (crop_area_min={data.crop_area_min}, image_size, eval_resize): '
                      f'{e}') from None


def _concat(datasets):
  """One batch from each input shard, joined along the batch axis in shard order."""
  if len(datasets) == 1:
    return datasets[0]
  return tf.data.Dataset.zip(tuple(datasets)).map(
      lambda *parts: {key: tf.concat([part[key] for part in parts], 0) for key in parts[0]})
