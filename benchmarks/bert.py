"""MLPerf BERT-large pretraining: time to 72.0% masked-LM accuracy (ruleset 5.0.0, the last
round that held it). Recipes are checked in as code; see `podium recipes bert`.

The benchmark (mlcommons/training language_model/tensorflow/bert): BERT-large starts from
MLPerf's checkpoint ``model.ckpt-28252`` and trains with LAMB on Wikipedia records of
sequence length 512 (76 masked positions at most) until masked-LM accuracy on the fixed
10,000-example eval set reaches 0.720. Evals happen every
``floor(0.05 * (230.23 * B + 3,000,000) / 25,000) * 25,000`` training samples (B = global
batch); the log counts progress in samples (``epoch_num`` is samples trained).
"""

from __future__ import annotations

import dataclasses
import math
import os

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
from benchmarks.registry import recipe
from benchmarks.task import Task, sample_blocks
from input_pipelines import bert_pretraining, bert_records
from input_pipelines.errors import DataError
from models import bert as bert_lib
from models.importers import bert_layout

MLPERF_EVAL_EXAMPLES = 10_000
PREPARE = ('counting', 'stdlib_docs')  # input_pipelines/bert_corpus.CORPORA


def mlperf_eval_interval(global_batch_size: int) -> int:
  """Training samples between evals, by MLPerf's rule for BERT."""
  return int(math.floor(0.05 * (230.23 * global_batch_size + 3_000_000) / 25_000)) * 25_000


def base_config() -> ml_collections.ConfigDict:
  """Fields every BERT recipe has; the defaults are MLPerf's BERT-large and its data."""
  config = loop_config()
  model = dataclasses.asdict(bert_lib.BertConfig())
  config.update(dict(
      model=dict(**model, dtype='bfloat16',
                 # MLPerf's starting point: a TF1 checkpoint prefix (.../model.ckpt-28252), a
                 # PyTorch BertForPreTraining file (.bin/.pt/.safetensors) or a podium run /
                 # `podium import` folder; empty: random.
                 init_checkpoint=''),
      data=dict(
          dir='', eval_dir='', train_pattern=bert_pretraining.TRAIN_PATTERN,
          eval_pattern=bert_pretraining.EVAL_PATTERN, prepare='', synthetic=False,
          # The WordPiece vocabulary the records were written with; checked against the
          # model and the checkpoint when given (default: <data.dir>/vocab.txt if present).
          vocab_file='',
          input_shards=0, max_seq_length=512, max_predictions_per_seq=76,
          eval_examples=MLPERF_EVAL_EXAMPLES, shuffle_buffer=10_000,
          # data.prepare='counting' or 'stdlib_docs' writes that corpus with these.
          prepare_vocab_size=4096, prepare_dupe_factor=10, prepare_train_files=4),
      train=dict(
          global_batch_size=8192, eval_batch_size=1024, gradient_accumulation_steps=1,
          # Evals every this many samples; 0: MLPerf's rule (`mlperf_eval_interval`).
          eval_every_samples=0,
          # Training stops after this many steps at most; 0: optimizer.train_steps.
          max_steps=0,
          target_accuracy=0.720),
      optimizer=dict(
          name='lamb', base_learning_rate=0.00288293, train_steps=600, warmup_steps=287,
          start_warmup_step=-76, poly_power=1.0, end_learning_rate=0.0, beta_1=0.88,
          beta_2=0.88, epsilon=1e-6, weight_decay=0.0166629, clip_norm=1.0),
  ))
  return config


def model_config(config) -> bert_lib.BertConfig:
  fields = {f.name for f in dataclasses.fields(bert_lib.BertConfig)}
  try:
    return bert_lib.BertConfig(**{k: v for k, v in config.model.items() if k in fields})
  except ValueError as e:
    raise ConfigError(f'model: {e}') from None


def export_spec(config):
  """`podium export`: a TF Hub BERT encoder (benchmarks/export.py).

  Inputs `input_word_ids`, `input_mask`, `input_type_ids`: int32 [batch, seq], any batch,
  seq = data.max_seq_length (pad shorter text; mask 0). The length is fixed because jax2tf
  drops the constraint `seq <= max_position_embeddings` when it converts the gradient
  (jax 0.8: the VJP export fails on the model's length check), and the SavedModel must be
  trainable. `encoder` (serving_default) gives
  `sequence_output` [b, s, hidden] and `pooled_output` [b, hidden] (tanh of the pooler on
  [CLS], as TF Hub's BERT encoders); `pretraining_logits` gives `mlm_logits` [b, s, vocab]
  at every position and `nsp_logits` [b, 2].
  """
  from benchmarks import export  # pylint: disable=import-outside-toplevel
  bert_config = model_config(config)
  names = ('input_word_ids', 'input_mask', 'input_type_ids')

  def encoder(model, x):
    sequence = model.encode(*(x[n] for n in names))
    return {'sequence_output': sequence.astype(jnp.float32),
            'pooled_output': jnp.tanh(model.pooler(sequence[:, 0])).astype(jnp.float32)}

  def pretraining_logits(model, x):
    mlm_logits, nsp_logits = model(*(x[n] for n in names))
    return {'mlm_logits': mlm_logits, 'nsp_logits': nsp_logits}

  return export.ExportSpec(
      create_model=lambda rngs: bert_lib.BertForPreTraining(
          bert_config, dtype=jnp.dtype(config.model.dtype), rngs=rngs),
      input_shape=(), input_dtype='int32',
      inputs={name: (('b', config.data.max_seq_length), 'int32') for name in names},
      functions={'encoder': encoder, 'pretraining_logits': pretraining_logits},
      serving='encoder',
      description=(f'BERT ({bert_config.num_layers} layers, hidden {bert_config.hidden_size}, '
                   f'vocab {bert_config.vocab_size}) trained by podium ({config.benchmark}/'
                   f'{config.recipe}); inputs: int32 word ids, mask, type ids [batch, seq]'))


def _checkpoint_format(path: str) -> str:
  """'pytorch', 'safetensors', 'tf1' or 'podium' (models/importers/weight_files.py)."""
  from models.importers import weight_files  # pylint: disable=import-outside-toplevel
  try:
    return weight_files.detect_format(path)
  except ValueError as e:
    raise ConfigError(f'model.init_checkpoint: {e}') from None


class BertTask(Task):
  mlperf_benchmark = C.BERT
  ruleset = '5.0.0'
  quality_name = 'masked_lm_accuracy'
  progress_unit = 'samples'

  def __init__(self, config, runtime):
    self.config = config
    self.runtime = runtime
    train, data = config.train, config.data
    self.bert_config = model_config(config)
    self.dtype = jnp.dtype(config.model.dtype)
    self.global_batch_size = train.global_batch_size
    self.gradient_accumulation_steps = int(train.gradient_accumulation_steps)
    if self.gradient_accumulation_steps < 1 or train.global_batch_size % self.gradient_accumulation_steps:
      raise ConfigError(f'train.gradient_accumulation_steps={self.gradient_accumulation_steps} '
                        f'must be >= 1 and divide train.global_batch_size={train.global_batch_size}')
    self.local_batch_size = runtime.local_batch_size(train.global_batch_size)
    self.local_eval_batch_size = runtime.local_batch_size(train.eval_batch_size)
    self.input_shards = self._input_shards()
    self.target = train.target_accuracy
    if data.max_seq_length > self.bert_config.max_position_embeddings:
      raise ConfigError(f'data.max_seq_length={data.max_seq_length} exceeds '
                        f'model.max_position_embeddings={self.bert_config.max_position_embeddings}')
    if data.max_predictions_per_seq > data.max_seq_length:
      raise ConfigError(f'data.max_predictions_per_seq={data.max_predictions_per_seq} exceeds '
                        f'data.max_seq_length={data.max_seq_length}')
    self.total_steps = train.max_steps or config.optimizer.train_steps
    if self.total_steps < 1:
      raise ConfigError(f'optimizer.train_steps={config.optimizer.train_steps} and '
                        f'train.max_steps={train.max_steps}: one of them must be >= 1')
    self.train_samples = self.total_steps * self.global_batch_size
    self.source = None
    self.eval_samples = data.eval_examples
    if not data.synthetic:
      if not data.dir:
        raise ConfigError(f'recipe {config.recipe!r} reads no data: set --set data.dir=PATH (a '
                          'directory of MLPerf BERT TFRecords: part-*-of-00500 and eval_10k) '
                          'or --set data.synthetic=True')
      self.source = bert_pretraining.BertSource.from_dirs(
          data.dir, eval_dir=data.eval_dir, train_pattern=data.train_pattern,
          eval_pattern=data.eval_pattern, max_seq_length=data.max_seq_length,
          max_predictions_per_seq=data.max_predictions_per_seq)
      self.eval_samples = self.source.num_examples('eval') or data.eval_examples
      self._check_vocabulary()
    if config.model.init_checkpoint:
      self._check_checkpoint()
    self.initial_eval = bool(config.model.init_checkpoint)
    self._schedule = optimizers.bert_warmup_polynomial_decay(
        base_lr=config.optimizer.base_learning_rate, train_steps=config.optimizer.train_steps,
        warmup_steps=config.optimizer.warmup_steps,
        start_warmup_step=config.optimizer.start_warmup_step,
        power=config.optimizer.poly_power, end_lr=config.optimizer.end_learning_rate)
    self._eval_total = None

  # -- checks before anything runs -------------------------------------------------------

  def _vocab_file(self) -> str:
    data = self.config.data
    if data.vocab_file:
      if not os.path.isfile(data.vocab_file):
        raise ConfigError(f'data.vocab_file={data.vocab_file}: no such file')
      return data.vocab_file
    default = os.path.join(data.dir, 'vocab.txt') if data.dir else ''
    return default if default and os.path.isfile(default) else ''

  def _check_vocabulary(self) -> None:
    """The records' vocabulary (manifest, vocab file) must be the model's."""
    model_vocab = self.bert_config.vocab_size
    manifest = self.source.manifest or {}
    vocab_file = self._vocab_file()
    if vocab_file:
      from input_pipelines import bert_tokenizer  # pylint: disable=import-outside-toplevel
      size = len(bert_tokenizer.FullTokenizer(vocab_file))
      if size != model_vocab:
        raise ConfigError(f'vocab file {vocab_file} has {size} tokens but model.vocab_size is '
                          f'{model_vocab}: set --set model.vocab_size={size}, or use the vocab '
                          'the model (and its checkpoint) was trained with')
      sha = manifest.get('vocab_sha256')
      if sha and sha != bert_records.file_sha256(vocab_file):
        raise ConfigError(f'vocab file {vocab_file} is not the vocabulary the records in '
                          f'{self.config.data.dir} were written with (its sha256 differs from '
                          f'{bert_records.MANIFEST_NAME}\'s)')
    if manifest.get('vocab_size') not in (None, model_vocab):
      raise ConfigError(f'the records in {self.config.data.dir} were written with a '
                        f'{manifest["vocab_size"]}-token vocabulary but model.vocab_size is '
                        f'{model_vocab}: set --set model.vocab_size={manifest["vocab_size"]}')

  def _check_checkpoint(self) -> None:
    """Names, shapes and vocabulary of the initial checkpoint, without reading a tensor."""
    path = self.config.model.init_checkpoint
    model = nnx.eval_shape(lambda: self._new_model(nnx.Rngs(0)))
    if _checkpoint_format(path) != 'tf1':
      return  # read whole anyway: initial_params checks it then
    from models.importers import tf1_bert  # pylint: disable=import-outside-toplevel
    try:
      rows = tf1_bert.vocab_size(path)
      vocab_file = self._vocab_file()
      if vocab_file:
        from input_pipelines import bert_tokenizer  # pylint: disable=import-outside-toplevel
        size = len(bert_tokenizer.FullTokenizer(vocab_file))
        if size != rows:
          raise ConfigError(
              f'vocab file {vocab_file} has {size} tokens but checkpoint {path} was trained '
              f'with {rows} ({tf1_bert.WORD_EMBEDDINGS} has {rows} rows): the records and the '
              'checkpoint must use the same vocabulary (MLPerf: the uncased 30,522-token '
              'vocab.txt shipped beside model.ckpt-28252)')
      tf1_bert.load_tf1_bert(model, path, check_only=True)
    except FileNotFoundError as e:
      raise ConfigError(f'model.init_checkpoint: {e}') from None
    except bert_layout.CheckpointMismatch as e:
      raise ConfigError(f'model.init_checkpoint: {e}') from None

  # -- model, optimizer, loss, metric ------------------------------------------------------

  def _new_model(self, rngs):
    return bert_lib.BertForPreTraining(self.bert_config, dtype=self.dtype, rngs=rngs)

  def create_model(self, rngs):
    return self._new_model(rngs)

  def initial_params(self):
    path = self.config.model.init_checkpoint
    if not path:
      return None
    fmt = _checkpoint_format(path)
    if fmt == 'podium':
      return self._podium_params(path)
    model = self._new_model(nnx.Rngs(0))
    try:
      if fmt in ('pytorch', 'safetensors'):
        from models.importers import pytorch_bert  # pylint: disable=import-outside-toplevel
        pytorch_bert.load_pytorch_bert_file(model, path)
      else:
        from models.importers import tf1_bert  # pylint: disable=import-outside-toplevel
        tf1_bert.load_tf1_bert(model, path)
    except bert_layout.CheckpointMismatch as e:
      raise ConfigError(f'model.init_checkpoint: {e}') from None
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  def _podium_params(self, path):
    """A podium run's or `podium import`'s parameters, checked against this model."""
    from models.importers import weight_files  # pylint: disable=import-outside-toplevel
    try:
      params = weight_files.read_podium(path)['params']
    except ValueError as e:
      raise ConfigError(f'model.init_checkpoint: {e}') from None
    model = nnx.eval_shape(lambda: self._new_model(nnx.Rngs(0)))
    problems = weight_files.tree_mismatches(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                            params)
    if problems:
      raise ConfigError(f'model.init_checkpoint={path} does not fit this BERT '
                        f'({bert_layout.describe_model(model)}): '
                        + weight_files.summarize(problems))
    return params

  def learning_rate(self, step):
    return self._schedule(step)

  def optimizer(self):
    opt = self.config.optimizer
    if opt.name != 'lamb':
      raise ConfigError(f'optimizer.name={opt.name!r}; valid: lamb (MLPerf BERT closed division)')
    return optimizers.lamb(self._schedule, beta_1=opt.beta_1, beta_2=opt.beta_2,
                           epsilon=opt.epsilon, weight_decay=opt.weight_decay,
                           clip_norm=opt.clip_norm or None)

  @staticmethod
  def _forward(model, batch, *, train, rng=None):
    return model(batch['input_ids'], batch['input_mask'], batch['segment_ids'],
                 batch['masked_lm_positions'], train=train,
                 rngs=nnx.Rngs(dropout=rng) if train else None)

  def loss(self, model, batch, rng):
    """The reference's: weighted masked-LM cross-entropy plus next-sentence cross-entropy."""
    mlm_logits, nsp_logits = self._forward(model, batch, train=True, rng=rng)
    weights = batch['masked_lm_weights']
    mlm_ce = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch['masked_lm_ids'])
    denominator = jnp.sum(weights) + 1e-5
    mlm_loss = jnp.sum(weights * mlm_ce) / denominator
    nsp_loss = optax.softmax_cross_entropy_with_integer_labels(
        nsp_logits, batch['next_sentence_labels']).mean()
    correct = (jnp.argmax(mlm_logits, -1) == batch['masked_lm_ids']).astype(jnp.float32)
    return mlm_loss + nsp_loss, {
        'mlm_loss': mlm_loss, 'nsp_loss': nsp_loss,
        'train_mlm_accuracy': jnp.sum(weights * correct) / denominator,
        'train_nsp_accuracy': jnp.mean(
            (jnp.argmax(nsp_logits, -1) == batch['next_sentence_labels']).astype(jnp.float32))}

  def eval_sums(self, model, batch):
    mlm_logits, nsp_logits = self._forward(model, batch, train=False)
    example = batch['mask'].astype(jnp.float32)
    weights = batch['masked_lm_weights'] * example[:, None]
    correct = (jnp.argmax(mlm_logits, -1) == batch['masked_lm_ids']).astype(jnp.float32)
    mlm_ce = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch['masked_lm_ids'])
    nsp_correct = (jnp.argmax(nsp_logits, -1) == batch['next_sentence_labels']).astype(jnp.float32)
    return {'mlm_correct': jnp.sum(weights * correct), 'mlm_count': jnp.sum(weights),
            'mlm_loss': jnp.sum(weights * mlm_ce), 'nsp_correct': jnp.sum(example * nsp_correct),
            'examples': jnp.sum(example)}

  def quality(self, sums):
    examples = int(round(float(sums['examples'])))
    if self.source is not None and examples != self.eval_samples:
      raise RuntimeError(f'eval saw {examples} examples, expected exactly {self.eval_samples}')
    return float(sums['mlm_correct']) / max(float(sums['mlm_count']), 1.0)

  # -- schedule ----------------------------------------------------------------------------

  @property
  def eval_interval(self) -> int:
    return self.config.train.eval_every_samples or mlperf_eval_interval(self.global_batch_size)

  def blocks(self):
    """An eval at the first step that completes each `eval_interval` samples, and at the end."""
    interval, batch = self.eval_interval, self.global_batch_size
    if interval < 1:
      raise ConfigError(f'train.eval_every_samples={interval} must be >= 1 (0: MLPerf\'s rule)')
    ends, k = [], 1
    while True:
      step = min(math.ceil(k * interval / batch), self.total_steps)
      if not ends or step > ends[-1]:
        ends.append(step)
      if step >= self.total_steps:
        break
      k += 1
    return sample_blocks(ends, batch)

  def hyperparameters(self):
    opt, data = self.config.optimizer, self.config.data
    return {
        C.OPT_NAME: C.LAMB,
        C.OPT_BASE_LR: opt.base_learning_rate,
        C.OPT_LAMB_EPSILON: opt.epsilon,
        C.OPT_LR_TRAINING_STEPS: opt.train_steps,
        C.OPT_LR_WARMUP_STEPS: opt.warmup_steps,
        C.NUM_WARMUP_STEPS: opt.warmup_steps,
        C.START_WARMUP_STEP: opt.start_warmup_step,
        C.OPT_LAMB_BETA_1: opt.beta_1,
        C.OPT_LAMB_BETA_2: opt.beta_2,
        C.OPT_LAMB_WEIGHT_DECAY: opt.weight_decay,
        C.OPT_LAMB_LR_DECAY_POLY_POWER: opt.poly_power,
        C.OPT_END_LR: opt.end_learning_rate,
        C.OPT_GRADIENT_CLIP_NORM: opt.clip_norm,
        C.MAX_SEQUENCE_LENGTH: data.max_seq_length,
        'max_predictions_per_seq': data.max_predictions_per_seq,
        C.GRADIENT_ACCUMULATION_STEPS: self.gradient_accumulation_steps,
    }

  # -- input -------------------------------------------------------------------------------

  def input_spec(self, *, eval):
    batch = self.local_eval_batch_size if eval else self.local_batch_size
    seq, preds = self.config.data.max_seq_length, self.config.data.max_predictions_per_seq
    spec = {
        'input_ids': jax.ShapeDtypeStruct((batch, seq), jnp.int32),
        'input_mask': jax.ShapeDtypeStruct((batch, seq), jnp.int32),
        'segment_ids': jax.ShapeDtypeStruct((batch, seq), jnp.int32),
        'masked_lm_positions': jax.ShapeDtypeStruct((batch, preds), jnp.int32),
        'masked_lm_ids': jax.ShapeDtypeStruct((batch, preds), jnp.int32),
        'masked_lm_weights': jax.ShapeDtypeStruct((batch, preds), jnp.float32),
        'next_sentence_labels': jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    if eval:
      spec['mask'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return spec

  def _synthetic(self, batch):
    data = self.config.data
    return bert_pretraining.synthetic_batch(batch, data.max_seq_length, data.max_predictions_per_seq,
                                            self.bert_config.vocab_size, self.config.seed)

  def train_batches(self, start_step=0):
    data = self.config.data
    if data.synthetic:
      batch = self._synthetic(self.local_batch_size)
      while True:
        yield batch
    shard_batch = self.local_batch_size // len(self.input_shards)
    datasets = [bert_pretraining.train_dataset(
        self.source, local_batch_size=shard_batch, seed=self.config.seed, shard=shard,
        num_shards=self.num_input_shards, shuffle_buffer=data.shuffle_buffer,
        start_step=start_step) for shard in self.input_shards]
    files = [f for shard in self.input_shards
             for f in bert_pretraining.host_files(self.source, shard, self.num_input_shards)]
    yield from bert_pretraining.iterate(_concat(datasets), files, data.max_seq_length,
                                        data.max_predictions_per_seq)

  def eval_batches(self):
    data = self.config.data
    if data.synthetic:
      batch = dict(self._synthetic(self.local_eval_batch_size),
                   mask=np.ones((self.local_eval_batch_size,), np.int32))
      for _ in range(math.ceil(self.eval_samples / self.config.train.eval_batch_size)):
        yield batch
      return
    if self._eval_total is None:
      # Counted at the first eval (inside the timed run) when no manifest says it.
      self._eval_total = bert_pretraining.eval_count(self.source)
      if self._eval_total != self.eval_samples:
        raise DataError(f'the eval files {", ".join(self.source.eval_files)} hold '
                        f'{self._eval_total} records but eval_samples={self.eval_samples} '
                        f'was logged: set --set data.eval_examples={self._eval_total}')
    shard_batch = self.local_eval_batch_size // len(self.input_shards)
    datasets = [bert_pretraining.eval_dataset(
        self.source, local_batch_size=shard_batch, total=self._eval_total, shard=shard,
        num_shards=self.num_input_shards) for shard in self.input_shards]
    yield from bert_pretraining.iterate(_concat(datasets), list(self.source.eval_files),
                                        data.max_seq_length, data.max_predictions_per_seq)


def _concat(datasets):
  """One batch from each input shard, joined along the batch axis in shard order."""
  if len(datasets) == 1:
    return datasets[0]
  return tf.data.Dataset.zip(tuple(datasets)).map(
      lambda *parts: {key: tf.concat([part[key] for part in parts], 0) for key in parts[0]})


def build_task(config, runtime):
  data = config.data
  if data.prepare in PREPARE and not data.synthetic:
    from input_pipelines import bert_corpus  # pylint: disable=import-outside-toplevel
    if not data.dir:
      raise ConfigError(f'data.prepare={data.prepare!r} needs data.dir: where to write the records')
    bert_corpus.write_dataset(
        data.dir, corpus=data.prepare, vocab_size=data.prepare_vocab_size,
        opts=bert_records.MaskingOptions(
            max_seq_length=data.max_seq_length,
            max_predictions_per_seq=data.max_predictions_per_seq,
            dupe_factor=data.prepare_dupe_factor),
        eval_examples=data.eval_examples, num_train_files=data.prepare_train_files)
  elif data.prepare and data.prepare not in PREPARE:
    raise ConfigError(f'data.prepare={data.prepare!r}; valid: {", ".join(PREPARE)}, or empty')
  return BertTask(config, runtime)


# -- recipes ---------------------------------------------------------------------------------


@recipe('bert')
def tiny_cpu():
  """A 2-layer BERT that learns to count in English, on a CPU, through the MLPerf BERT path.

  Source: podium. The corpus is generated (input_pipelines/bert_corpus.counting_documents:
  3,000 documents, each counting on by a fixed step, "counting by three from twelve :
  twelve , fifteen , ..."), so most masked words follow from their neighbours and a small
  model reaches MLPerf's own target, masked-LM accuracy 0.720, within minutes; the log then
  passes the MLPerf 5.0.0 checker as a real BERT log would. Every 10th document is held out;
  the 72-token WordPiece vocabulary is built from the training text; the records are
  written by podium's create_pretraining_data.py (masking 0.15, 80/10/10, NSP pairs, dupe
  factor 10, seed 12345) at sequence length 64 with 10 predictions, into data/bert_counting
  on first use. Training is MLPerf's: LAMB with the reference schedule, masked-LM + NSP
  loss, exactly-once eval of 1,000 held-out records (picked as MLPerf picks its 10,000), log
  in samples; only the eval interval is shorter than MLPerf's rule.
  Hardware: one CPU (2 cores suffice). Expected: masked-LM accuracy >= 0.720 on the
  held-out records after about 19,200 samples (300 steps; measured 0.7250 there); about
  4 minutes of training on 2 busy cores (90-170 examples/s), 1-2 minutes on idle ones.
  """
  config = base_config()
  config.log_every_steps = 25
  config.model.update(vocab_size=72, hidden_size=64, num_layers=2, num_heads=2,
                      intermediate_size=256, max_position_embeddings=64, hidden_dropout=0.0,
                      attention_dropout=0.0, dtype='float32')
  config.data.update(dir='data/bert_counting', prepare='counting', max_seq_length=64,
                     max_predictions_per_seq=10, eval_examples=1000, shuffle_buffer=4096,
                     prepare_vocab_size=512, prepare_dupe_factor=10, prepare_train_files=4)
  config.train.update(global_batch_size=64, eval_batch_size=256, eval_every_samples=3200,
                      target_accuracy=0.720)
  config.optimizer.update(base_learning_rate=2e-2, train_steps=2000, warmup_steps=30,
                          start_warmup_step=0, beta_1=0.9, beta_2=0.999, weight_decay=0.01)
  return config


@recipe('bert')
def docs_cpu():
  """A 2-layer BERT on Python's own documentation (real English prose), on a CPU.

  Source: podium. The corpus is the prose that ships with every Python: the standard
  library's docstrings and the help() topics of the language reference (PSF License;
  input_pipelines/bert_corpus.py; about 1.6 MB, 20,000 sentences with Python 3.11), one
  sentence a line, a document per module or topic; every 10th document is held out. A
  2,048-token WordPiece vocabulary is built from the training text, and the records are
  written by podium's create_pretraining_data.py (masking 0.15, 80/10/10, NSP pairs, dupe
  factor 10, seed 12345) at sequence length 64 with 10 predictions, into data/bert_stdlib
  on first use (about a minute). Training and eval as in tiny_cpu. Natural text is far
  harder to fill in than tiny_cpu's counting, so the target is this recipe's own: the MLPerf
  5.0.0 checker's 0.720 is out of reach here and its log fails that one check.
  Hardware: one CPU (2 cores suffice). Expected: masked-LM accuracy >= 0.13 on the held-out
  records after about 32,000 samples (measured 0.1183 at 25,600 and 0.1377 at 32,000;
  unigram guessing gets about 0.06); 4-5 minutes of training on 2 busy cores.
  """
  config = base_config()
  config.log_every_steps = 50
  config.model.update(vocab_size=2048, hidden_size=64, num_layers=2, num_heads=2,
                      intermediate_size=256, max_position_embeddings=64, hidden_dropout=0.0,
                      attention_dropout=0.0, dtype='float32')
  config.data.update(dir='data/bert_stdlib', prepare='stdlib_docs', max_seq_length=64,
                     max_predictions_per_seq=10, eval_examples=1000, shuffle_buffer=4096,
                     prepare_vocab_size=2048, prepare_dupe_factor=10, prepare_train_files=4)
  config.train.update(global_batch_size=64, eval_batch_size=256, eval_every_samples=6400,
                      target_accuracy=0.13)
  config.optimizer.update(base_learning_rate=1e-2, train_steps=2000, warmup_steps=50,
                          start_warmup_step=0, beta_1=0.9, beta_2=0.999, weight_decay=0.01)
  return config


# MLPerf's reference convergence points for BERT (mlperf-logging 4.1.68,
# rcp_checker/training_5.0.0/rcps_bert.json): global batch -> (base LR, training steps,
# warmup steps, start warmup step, beta_1, beta_2, weight decay, where it was measured,
# samples to 0.720: the olympic mean of its 20 runs, the checker's "RCP Mean"). Epsilon is
# 1e-6 and the decay power 1 in all.
# tests/test_bert_recipes.py checks this table against the JSON.
RCP_BERT = {
    256: (0.00035, 13700, 0, 0, 0.9, 0.999, 0.01, 'Google, TPU-v4-16', 2_549_220),
    448: (0.000425, 6700, 0, 0, 0.9, 0.999, 0.01, 'Google, TPU-v4-32', 2_414_421),
    1536: (0.002, 2254, 0, 0, 0.66, 0.996, 0.01, 'Google, TPU-v4-128', 2_776_278),
    3072: (0.002, 1141, 100, 0, 0.66, 0.998, 0.01, 'Google, TPU-v4-128', 2_764_499),
    4096: (0.0024, 855, 0, 0, 0.66, 0.998, 0.01, 'Google, TPU-v4-128', 2_843_989),
    4608: (0.0035, 700, 0, 0, 0.62, 0.9, 0.01, 'Google, TPU-v4-16', 2_798_080),
    6144: (0.0029293, 700, 0, -700, 0.7206, 0.78921, 0.001, 'Google, TPU-v4-128', 3_319_125),
    6912: (0.0029293, 700, 0, -700, 0.7206, 0.78921, 0.001, 'Google, TPU-v4-128', 3_601_920),
    8192: (0.00288293, 600, 287, -76, 0.88, 0.88, 0.0166629, 'Google, TPU-v4-128', 4_186_112),
    8704: (0.002971656225, 600, 287, -76, 0.88, 0.88, 0.0166629, 'NVIDIA', 4_273_707),
    12288: (0.0031, 500, 300, -100, 0.8, 0.925, 0.0166629, 'NVIDIA', 4_465_067),
    13056: (0.00319540686, 500, 300, -100, 0.8, 0.925, 0.0166629, 'NVIDIA', 4_645_333),
    16384: (0.0033, 600, 290, -100, 0.75, 0.9, 0.0166629, 'NVIDIA (TPU-v3-128)', 5_505_422),
}


def _rcp_recipe(batch: int, topology: str, accumulation: int, eval_batch: int):
  """BERT-large at an RCP's global batch; micro-batches of batch/accumulation per step."""
  lr, steps, warmup, start, beta_1, beta_2, wd, _, _ = RCP_BERT[batch]
  config = base_config()
  config.topology = topology
  config.model.init_checkpoint = ''  # set to .../model.ckpt-28252 (MLPerf's starting point)
  config.train.update(global_batch_size=batch, eval_batch_size=eval_batch,
                      gradient_accumulation_steps=accumulation)
  config.optimizer.update(base_learning_rate=lr, train_steps=steps, warmup_steps=warmup,
                          start_warmup_step=start, beta_1=beta_1, beta_2=beta_2,
                          weight_decay=wd, epsilon=1e-6, poly_power=1.0)
  return config


# (name, global batch, TPU slice, gradient accumulation, eval batch): accumulation keeps each
# chip's micro-batch at 16-32 sequences of 512 (BERT-large activations in bfloat16 fit a v4
# chip's 32 GiB there; v5p has 95 GiB).
_TPU_RECIPES = (
    ('tpu_v4_16_bs256', 256, 'v4-16', 1, 256),
    ('tpu_v4_32_bs448', 448, 'v4-32', 1, 512),
    ('tpu_v4_128_bs1536', 1536, 'v4-128', 1, 1024),
    ('tpu_v4_128_bs3072', 3072, 'v4-128', 2, 1024),
    ('tpu_v4_128_bs4096', 4096, 'v4-128', 2, 1024),
    ('tpu_v4_16_bs4608', 4608, 'v4-16', 18, 256),
    ('tpu_v4_128_bs6144', 6144, 'v4-128', 4, 1024),
    ('tpu_v4_128_bs6912', 6912, 'v4-128', 4, 1024),
    ('tpu_v4_128_bs8192', 8192, 'v4-128', 4, 1024),
    ('tpu_v5p_256_bs8704', 8704, 'v5p-256', 2, 1024),
    ('tpu_v5p_256_bs12288', 12288, 'v5p-256', 2, 1024),
    ('tpu_v5p_256_bs13056', 13056, 'v5p-256', 3, 1024),
    ('tpu_v5p_256_bs16384', 16384, 'v5p-256', 4, 1024),
)


def _register_tpu_recipes():
  for name, batch, topology, accumulation, eval_batch in _TPU_RECIPES:
    lr, steps, warmup, start, beta_1, beta_2, wd, where, mean = RCP_BERT[batch]

    def build(batch=batch, topology=topology, accumulation=accumulation, eval_batch=eval_batch):
      return _rcp_recipe(batch, topology, accumulation, eval_batch)

    build.__name__ = name
    build.__doc__ = f"""BERT-large at global batch {batch:,} with LAMB, for a TPU {topology} slice.

    Source: the MLPerf reference convergence point bert_ref_{batch} shipped in mlperf-logging
    (rcp_checker/training_5.0.0/rcps_bert.json; {where}): base LR {lr}, {steps} training
    steps, {warmup} warmup steps from step {start}, beta_1 {beta_1}, beta_2 {beta_2},
    epsilon 1e-6, weight decay {wd}, linear decay to 0. Sequence length 512, 76 predictions,
    starting from MLPerf's model.ckpt-28252 (--set model.init_checkpoint=PATH, whose
    masked-LM accuracy before training is 0.34085) and MLPerf's records (--set
    data.dir=PATH). Gradient accumulation {accumulation} (micro-batches of
    {batch // accumulation:,}); evals every {mlperf_eval_interval(batch):,} samples.
    Expected: masked-LM accuracy 0.720 after {mean:,} samples on average (the RCP mean:
    olympic mean of 20 reference runs), about {math.ceil(mean / batch)} steps.
    """
    recipe('bert')(build)


_register_tpu_recipes()
