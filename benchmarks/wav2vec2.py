"""wav2vec 2.0 (Baevski et al. 2020): self-supervised pretraining and CTC fine-tuning.

Two benchmarks share the model (models/wav2vec2.py) and the input (input_pipelines/
librispeech.py):

* ``wav2vec2_pretrain``: the contrastive task on unlabelled audio. Quality is the contrastive
  accuracy on the eval split: the share of masked frames whose context vector picks its own
  quantized latent among K distractors, strictly (a distractor with the target's codes is a
  tie and counts as wrong, so a collapsed codebook scores 0; fairseq's logged accuracy
  excludes such distractors instead). Masks and distractors of eval come from a fixed key
  and each utterance's position, so every eval sees the same ones.
* ``wav2vec2_ctc``: CTC fine-tuning on characters, quality the word error rate of greedy CTC
  decoding on the eval split (lower is better; ``quality_higher_is_better = False``).

Loss (pretraining): the contrastive loss averaged over masked frames + 0.1 x the diversity
loss ((GV - perplexity) / GV) + a weight x the mean squared feature-encoder output
(fairseq's loss_weights [0.1, 10] for BASE); the Gumbel temperature anneals per update as
max(2 * 0.999995^step, 0.5). Codebook perplexity and temperature are logged every
`log_every_steps` (TensorBoard and the result's curves). Fine-tuning: CTC summed over an
utterance's characters and averaged over utterances (fairseq's sentence_avg), span masks on
time and channels, the feature encoder frozen; an utterance whose transcript cannot be
aligned to its frames contributes 0 (fairseq's zero_infinity).

Shapes. Batches are bucketed by length (input_pipelines.librispeech); every batch has one
static shape [B, longest bucket] plus its bucket index, and the train and eval steps
``lax.switch`` over one branch per bucket, each running the model on a static slice
``[:, :L_bucket]``. So the loop compiles one step that holds a handful of static shapes, runs
only the batch's branch, and never recompiles (tests/test_wav2vec2_task.py counts them).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from mlperf_logging.mllog import constants as C

from benchmarks import optimizers
from benchmarks import wer as wer_lib
from benchmarks.config import ConfigError, loop_config
from benchmarks.registry import recipe
from benchmarks.task import Task, sample_blocks
from input_pipelines import librispeech
from input_pipelines import librispeech_records as records
from models import wav2vec2 as w2v

PRETRAIN = 'wav2vec2_pretrain'
CTC = 'wav2vec2_ctc'
RULESET = '5.0.0'  # the checker's parser version podium's own rule files are written for
LIBRISPEECH_960H = ('train-clean-100', 'train-clean-360', 'train-other-500')
# Utterances (LibriSpeech's published counts).
LIBRISPEECH_COUNTS = {'train-clean-100': 28_539, 'train-clean-360': 104_014,
                      'train-other-500': 148_688, 'dev-clean': 2_703, 'dev-other': 2_864}
# Pretraining crops to [2 s, 15.6 s] (fairseq min/max_sample_size of BASE); fine-tuning and
# eval pad up to the longest utterance (LibriSpeech's is 35.2 s).
PRETRAIN_BUCKETS = (32_000, 64_000, 96_000, 128_000, 160_000, 192_000, 250_000)
PAD_BUCKETS = (64_000, 128_000, 192_000, 256_000, 320_000, 400_000)
MODEL_DROPOUTS = ('hidden_dropout', 'attention_dropout', 'activation_dropout',
                  'feat_proj_dropout', 'feat_quantizer_dropout', 'final_dropout', 'layerdrop')


def _common_config() -> ml_collections.ConfigDict:
  config = loop_config()
  config.update(dict(
      model=dict(
          name='base', dtype='bfloat16',
          # fairseq's BASE pretraining values; fine-tuning recipes set their own.
          hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
          feat_proj_dropout=0.1, feat_quantizer_dropout=0.1, final_dropout=0.0, layerdrop=0.05,
          # Gradient scale of the feature encoder: 0.1 (BASE pretraining), 1.0 (LARGE),
          # 0.0 (fine-tuning: frozen).
          feature_grad_mult=0.1,
          # Fine-tuning starts from: a podium checkpoint directory of a wav2vec2_pretrain run
          # (`.../checkpoints`), or a PyTorch file (transformers or fairseq names).
          init_checkpoint=''),
      data=dict(
          dir='', prepare='', synthetic=False, train_splits=LIBRISPEECH_960H,
          eval_split='dev-clean', normalize=False, bucket_lengths=PRETRAIN_BUCKETS,
          eval_bucket_lengths=PAD_BUCKETS,
          # Input shards (0: one per process), as in the ImageNet reader.
          input_shards=0, workers=4,
          # Characters of the longest transcript the label arrays hold (0: from the data).
          max_label_length=0,
          # Used with data.synthetic (no data to count).
          train_examples=281_241, eval_examples=2_703),
      train=dict(global_batch_size=512, eval_batch_size=64, max_steps=400_000,
                 eval_every_steps=25_000, target=0.0),
      optimizer=dict(
          learning_rate=5e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-6, weight_decay=0.01,
          clip_norm=0.0,
          # 'polynomial': linear warmup from 0, then (1 - t)^power decay to end_learning_rate
          # (fairseq polynomial_decay). 'tri_stage': warmup from init_lr_scale x, hold, then
          # exponential decay to final_lr_scale x (fairseq tri_stage). Fractions of max_steps.
          schedule='polynomial', warmup_fraction=0.08, hold_fraction=0.0, decay_fraction=0.0,
          end_learning_rate=0.0, power=1.0, init_lr_scale=0.01, final_lr_scale=0.05),
  ))
  return config


def pretrain_config() -> ml_collections.ConfigDict:
  config = _common_config()
  config.data.bucket_lengths = PRETRAIN_BUCKETS
  config.train.target = 0.6
  config.loss = dict(
      mask_prob=0.65, mask_length=10, min_masks=2, num_negatives=100, diversity_weight=0.1,
      feature_penalty_weight=10.0, max_temperature=2.0, min_temperature=0.5,
      temperature_decay=0.999995)
  return config


def ctc_config() -> ml_collections.ConfigDict:
  config = _common_config()
  config.model.update(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.1,
                      feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, final_dropout=0.0,
                      layerdrop=0.1, feature_grad_mult=0.0)
  config.data.update(train_splits=('train-clean-100',), bucket_lengths=PAD_BUCKETS,
                     max_label_length=640, train_examples=28_539)
  config.train.update(global_batch_size=128, max_steps=80_000, eval_every_steps=5_000,
                      target=0.065)
  config.optimizer.update(learning_rate=3e-5, epsilon=1e-8, weight_decay=0.0,
                          schedule='tri_stage', warmup_fraction=0.1, hold_fraction=0.4,
                          decay_fraction=0.5)
  config.loss = dict(mask_prob=0.65, mask_length=10, min_masks=2, mask_channel_prob=0.5,
                     mask_channel_length=64, freeze_encoder_steps=0)
  return config


def prepare_data(config) -> None:
  """Writes the data set a recipe asks for with `data.prepare` ('espeak'), if absent."""
  if config.data.prepare == 'espeak':
    from input_pipelines import speech_corpus
    speech_corpus.prepare(config.data.dir)
  elif config.data.prepare:
    raise ConfigError(f'data.prepare={config.data.prepare!r}; valid: espeak, or empty')


def model_config(config) -> w2v.Wav2Vec2Config:
  name = config.model.name
  if name not in w2v.WAV2VEC2_CONFIGS:
    raise ConfigError(f'model.name={name!r}; valid: {", ".join(sorted(w2v.WAV2VEC2_CONFIGS))}')
  overrides = {key: float(config.model[key]) for key in MODEL_DROPOUTS}
  try:
    return w2v._config(name, overrides)
  except ValueError as e:
    raise ConfigError(f'model: {e}') from None


class Wav2Vec2Task(Task):
  """What pretraining and fine-tuning share: input, schedule, optimizer, the bucket switch."""

  ruleset = RULESET
  progress_unit = 'samples'
  labels = False
  train_mode = 'crop'

  def __init__(self, config, runtime):
    self.config = config
    self.runtime = runtime
    self.model_config = model_config(config)
    self.dtype = jnp.dtype(config.model.dtype)
    train, data = config.train, config.data
    self.global_batch_size = train.global_batch_size
    self.local_batch_size = runtime.local_batch_size(train.global_batch_size)
    self.local_eval_batch_size = runtime.local_batch_size(train.eval_batch_size)
    self.target = float(train.target)
    self.total_steps = int(train.max_steps)
    if self.total_steps < 1 or train.eval_every_steps < 1:
      raise ConfigError(f'train.max_steps={train.max_steps} and train.eval_every_steps='
                        f'{train.eval_every_steps} must be >= 1')
    self.input_shards = self._input_shards()
    try:
      train_bucketing = librispeech.Bucketing(tuple(data.bucket_lengths), self.train_mode)
      eval_bucketing = librispeech.Bucketing(tuple(data.eval_bucket_lengths), 'pad')
    except ValueError as e:
      raise ConfigError(f'data.bucket_lengths / data.eval_bucket_lengths: {e}') from None
    shortest = self.model_config.conv_kernel[0] + self.model_config.samples_per_frame
    if train_bucketing.lengths[0] < max(shortest, 400):
      raise ConfigError(f'data.bucket_lengths starts at {train_bucketing.lengths[0]} samples; '
                        f'the feature encoder needs at least {max(shortest, 400)}')
    self.batches = None
    if data.synthetic:
      self.train_bucketing, self.eval_bucketing = train_bucketing, eval_bucketing
      self.train_samples, self.eval_samples = int(data.train_examples), int(data.eval_examples)
      self.max_label_length = int(data.max_label_length) or 1
      self.steps_per_epoch = max(self.train_samples // self.global_batch_size, 1)
    else:
      if not data.dir:
        raise ConfigError(f'recipe {config.recipe!r} reads no data: set --set data.dir=PATH '
                          '(speech TFRecords written by `python -m input_pipelines.librispeech`) '
                          'or --set data.synthetic=True')
      source = records.SpeechSource.from_dir(data.dir)
      shards = self.num_input_shards
      self.batches = librispeech.SpeechBatches(
          source, train_splits=tuple(data.train_splits), eval_split=data.eval_split,
          train_bucketing=train_bucketing, eval_bucketing=eval_bucketing,
          batch_per_shard=self.local_batch_size // len(self.input_shards),
          eval_batch_per_shard=self.local_eval_batch_size // len(self.input_shards),
          shards=self.input_shards, num_shards=shards, seed=int(config.seed),
          normalize=bool(data.normalize), labels=self.labels,
          max_label_length=int(data.max_label_length), workers=int(data.workers))
      self.train_bucketing = self.batches.train_bucketing
      self.eval_bucketing = self.batches.eval_bucketing
      self.train_samples = self.batches.train_examples
      self.eval_samples = self.batches.eval_examples
      self.max_label_length = self.batches.max_label_length
      self.steps_per_epoch = self.batches.steps_per_epoch
    self._schedule = self._learning_rate_schedule()

  # -- schedule and optimizer --------------------------------------------------------------

  def _learning_rate_schedule(self):
    opt = self.config.optimizer
    total = self.total_steps
    if opt.schedule == 'polynomial':
      warmup = round(opt.warmup_fraction * total)
      return optimizers.warmup_polynomial_decay(
          base_lr=opt.learning_rate, end_lr=opt.end_learning_rate, warmup_steps=warmup,
          decay_steps=max(total - warmup, 1), power=opt.power)
    if opt.schedule == 'tri_stage':
      fractions = (opt.warmup_fraction, opt.hold_fraction, opt.decay_fraction)
      if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f'optimizer warmup/hold/decay_fraction {fractions} must be >= 0 and '
                          'sum to 1 for the tri-stage schedule (fairseq phase_ratio)')
      return optimizers.tri_stage(
          base_lr=opt.learning_rate, warmup_steps=int(opt.warmup_fraction * total),
          hold_steps=int(opt.hold_fraction * total), decay_steps=int(opt.decay_fraction * total),
          init_lr_scale=opt.init_lr_scale, final_lr_scale=opt.final_lr_scale)
    raise ConfigError(f'optimizer.schedule={opt.schedule!r}; valid: polynomial, tri_stage')

  def learning_rate(self, step):
    return self._schedule(step)

  def optimizer(self):
    """Adam with decoupled weight decay on every parameter (fairseq's adam)."""
    opt = self.config.optimizer
    adam = optax.adamw(self._schedule, b1=opt.beta_1, b2=opt.beta_2, eps=opt.epsilon,
                       weight_decay=opt.weight_decay)
    if opt.clip_norm:
      return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adam)
    return adam

  def _optimizer_hyperparameters(self) -> dict[str, Any]:
    opt = self.config.optimizer
    return {
        C.OPT_NAME: C.ADAM,
        C.OPT_BASE_LR: opt.learning_rate,
        C.OPT_ADAM_BETA_1: opt.beta_1,
        C.OPT_ADAM_BETA_2: opt.beta_2,
        C.OPT_ADAM_EPSILON: opt.epsilon,
        C.OPT_WEIGHT_DECAY: opt.weight_decay,
        'opt_gradient_clip_norm': opt.clip_norm,
        C.OPT_LR_DECAY_SCHEDULE: opt.schedule,
        C.OPT_LR_WARMUP_STEPS: round(opt.warmup_fraction * self.total_steps)
        if opt.schedule == 'polynomial' else int(opt.warmup_fraction * self.total_steps),
        C.OPT_LR_TRAINING_STEPS: self.total_steps,
        'wav2vec2_model': self.config.model.name,
        'wav2vec2_train_splits': ','.join(self.config.data.train_splits),
        'wav2vec2_eval_split': self.config.data.eval_split,
        'wav2vec2_bucket_lengths': ','.join(str(n) for n in self.train_bucketing.lengths),
        'wav2vec2_normalize': bool(self.config.data.normalize),
    }

  # -- schedule of evals -------------------------------------------------------------------

  def blocks(self):
    """An eval every `eval_every_steps` steps and at `max_steps`; progress in utterances."""
    every, batch = self.config.train.eval_every_steps, self.global_batch_size
    ends = list(range(every, self.total_steps, every)) + [self.total_steps]
    return sample_blocks(ends, batch)

  # -- model -------------------------------------------------------------------------------

  def _switch(self, bucketing, model, batch, branch, extras=(), *, differentiate=False):
    """``branch(model, batch, length, extras)`` for the batch's bucket, under one lax.switch.

    Each branch slices the audio to its bucket's static length; XLA runs only the taken one.
    With `differentiate` (the train loss) each branch takes its own gradient and the switch
    returns it (a custom VJP): differentiating through a switch would instead keep every
    branch's activations for the backward pass (JAX joins the branches' residuals), the
    memory of all buckets at once. `extras` are traced values the branches use (keys, the
    temperature), passed explicitly because a custom VJP cannot close over them.
    """
    graphdef, state = nnx.split(model)
    lengths = bucketing.lengths

    def run(length, state, batch, extras):
      return branch(nnx.merge(graphdef, state), dict(batch, audio=batch['audio'][:, :length]),
                    length, extras)

    if len(lengths) == 1:
      return run(lengths[0], state, batch, extras)

    def index(batch):
      return jnp.clip(jnp.max(batch['bucket']), 0, len(lengths) - 1)

    branches = [functools.partial(run, n) for n in lengths]
    if not differentiate:
      return jax.lax.switch(index(batch), branches, state, batch, extras)

    def with_gradient(length):
      def run_and_differentiate(state, batch, extras):
        return jax.value_and_grad(lambda s: run(length, s, batch, extras), has_aux=True)(state)
      return run_and_differentiate

    @jax.custom_vjp
    def bucketed(state, batch, extras):
      return jax.lax.switch(index(batch), branches, state, batch, extras)

    def forward(state, batch, extras):
      return jax.lax.switch(index(batch), [with_gradient(n) for n in lengths], state, batch,
                            extras)

    def backward(gradient, cotangent):
      scale = cotangent[0]
      return jax.tree.map(lambda g: g * scale, gradient), None, None

    bucketed.defvjp(forward, backward)
    return bucketed(state, batch, extras)

  # -- input -------------------------------------------------------------------------------

  def input_spec(self, *, eval):
    batch = self.local_eval_batch_size if eval else self.local_batch_size
    width = (self.eval_bucketing if eval else self.train_bucketing).lengths[-1]
    spec = {'audio': jax.ShapeDtypeStruct((batch, width), jnp.float32),
            'length': jax.ShapeDtypeStruct((batch,), jnp.int32),
            'bucket': jax.ShapeDtypeStruct((batch,), jnp.int32)}
    if eval:
      spec['mask'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
      spec['index'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    else:
      spec['step'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    if self.labels:
      spec['labels'] = jax.ShapeDtypeStruct((batch, self.max_label_length), jnp.int32)
      spec['label_length'] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return spec

  def _synthetic(self, eval: bool, step: int = 0) -> dict:
    """A random batch of the longest bucket (device throughput without data)."""
    spec = self.input_spec(eval=eval)
    rng = np.random.default_rng([int(self.config.seed), int(eval)])
    size, width = spec['audio'].shape
    bucket = len((self.eval_bucketing if eval else self.train_bucketing).lengths) - 1
    batch = {'audio': rng.standard_normal((size, width), np.float32),
             'length': np.full((size,), width, np.int32),
             'bucket': np.full((size,), bucket, np.int32)}
    if eval:
      batch.update(mask=np.ones((size,), np.int32), index=np.arange(size, dtype=np.int32))
    else:
      batch['step'] = np.full((size,), step, np.int32)
    if self.labels:
      n = spec['labels'].shape[1]
      batch['labels'] = rng.integers(5, len(librispeech.VOCABULARY), (size, n)).astype(np.int32)
      batch['label_length'] = np.full((size,), min(n, max(self.model_config.num_frames(width) // 3, 1)),
                                      np.int32)
    return batch

  def train_batches(self, start_step=0):
    if self.batches is None:
      step = start_step
      while True:
        yield self._synthetic(False, step)
        step += 1
    yield from self.batches.train_batches(start_step)

  def eval_batches(self):
    if self.batches is None:
      batch = self._synthetic(True)
      for _ in range(math.ceil(self.eval_samples / self.config.train.eval_batch_size)):
        yield batch
      return
    yield from self.batches.eval_batches()

  def _rngs(self, rng):
    dropout, layerdrop, gumbel = jax.random.split(rng, 3)
    return nnx.Rngs(dropout=dropout, layerdrop=layerdrop, gumbel=gumbel)


class PretrainTask(Wav2Vec2Task):
  mlperf_benchmark = PRETRAIN
  quality_name = 'contrastive_accuracy'
  train_mode = 'crop'

  def create_model(self, rngs):
    return w2v.Wav2Vec2ForPreTraining(self.model_config, dtype=self.dtype, rngs=rngs)

  def temperature(self, step):
    loss = self.config.loss
    return w2v.gumbel_temperature(step, max_temperature=loss.max_temperature,
                                  min_temperature=loss.min_temperature,
                                  decay=loss.temperature_decay)

  def _masks(self, keys, frame_lengths, frames):
    """Span masks and distractors, one key per utterance (vmapped)."""
    loss = self.config.loss

    def one(key, length):
      mask_key, negative_key = jax.random.split(key)
      mask = w2v.span_mask(mask_key, length[None], frames, mask_prob=loss.mask_prob,
                           mask_length=loss.mask_length, min_masks=loss.min_masks)
      negatives = w2v.sample_negatives(negative_key, mask, loss.num_negatives)
      return mask[0], negatives[0]
    return jax.vmap(one)(keys, frame_lengths)

  def loss(self, model, batch, rng):
    cfg, loss_cfg = self.model_config, self.config.loss
    step = jnp.max(batch['step'])
    temperature = self.temperature(step)

    def branch(model, batch, length, extras):
      temperature, rng = extras
      mask_key, model_key = jax.random.split(rng)
      frames = cfg.num_frames(length)
      lengths = batch['length']
      keys = jax.random.split(mask_key, lengths.shape[0])
      mask, negatives = self._masks(keys, cfg.frame_lengths(lengths), frames)
      out = model(batch['audio'], lengths, mask, negatives, temperature=temperature,
                  feature_grad_mult=float(self.config.model.feature_grad_mult), train=True,
                  rngs=self._rngs(model_key))
      masked = jnp.maximum(out.num_masked, 1.0)
      contrastive = out.contrastive_loss / masked
      total = (contrastive + loss_cfg.diversity_weight * out.diversity_loss
               + loss_cfg.feature_penalty_weight * out.features_penalty)
      return total, {'contrastive_loss': contrastive, 'diversity_loss': out.diversity_loss,
                     'features_penalty': out.features_penalty,
                     'codebook_perplexity': out.perplexity,
                     'contrastive_accuracy': out.correct / masked}
    total, metrics = self._switch(self.train_bucketing, model, batch, branch,
                                  (temperature, rng), differentiate=True)
    return total, dict(metrics, gumbel_temperature=temperature)

  def eval_sums(self, model, batch):
    cfg = self.model_config
    base = jax.random.key(int(self.config.seed) + 7919)

    def branch(model, batch, length, extras):
      frames = cfg.num_frames(length)
      lengths = jnp.where(batch['mask'] > 0, batch['length'], 0)
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch['index'])
      mask, negatives = self._masks(keys, cfg.frame_lengths(lengths), frames)
      out = model(batch['audio'], lengths, mask, negatives, train=False)
      return {'correct': out.correct, 'count': out.num_masked,
              'contrastive_loss': out.contrastive_loss}
    return self._switch(self.eval_bucketing, model, batch, branch)

  def quality(self, sums):
    return float(sums['correct']) / max(float(sums['count']), 1.0)

  def hyperparameters(self):
    loss = self.config.loss
    return {**self._optimizer_hyperparameters(),
            'wav2vec2_mask_prob': loss.mask_prob, 'wav2vec2_mask_length': loss.mask_length,
            'wav2vec2_num_negatives': loss.num_negatives,
            'wav2vec2_codebook_groups': self.model_config.num_codevector_groups,
            'wav2vec2_codebook_entries': self.model_config.num_codevectors_per_group,
            'wav2vec2_diversity_weight': loss.diversity_weight,
            'wav2vec2_feature_penalty_weight': loss.feature_penalty_weight,
            'wav2vec2_gumbel_temperature': f'{loss.max_temperature},{loss.min_temperature},'
                                           f'{loss.temperature_decay}'}


class CTCTask(Wav2Vec2Task):
  mlperf_benchmark = CTC
  quality_name = 'wer'
  quality_higher_is_better = False
  labels = True
  train_mode = 'pad'

  def create_model(self, rngs):
    return w2v.Wav2Vec2ForCTC(self.model_config, dtype=self.dtype, rngs=rngs)

  def loss(self, model, batch, rng):
    cfg, loss_cfg = self.model_config, self.config.loss
    step = jnp.max(batch['step'])

    def branch(model, batch, length, extras):
      step, rng = extras
      time_key, channel_key, model_key = jax.random.split(rng, 3)
      frames = cfg.num_frames(length)
      lengths = batch['length']
      frame_lengths = cfg.frame_lengths(lengths)
      size = lengths.shape[0]
      mask_time = mask_channels = None
      if loss_cfg.mask_prob > 0:
        mask_time = w2v.span_mask(time_key, frame_lengths, frames, mask_prob=loss_cfg.mask_prob,
                                  mask_length=loss_cfg.mask_length, min_masks=loss_cfg.min_masks)
      if loss_cfg.mask_channel_prob > 0:
        hidden = cfg.hidden_size
        mask_channels = w2v.span_mask(
            channel_key, jnp.full((size,), hidden, jnp.int32), hidden,
            mask_prob=loss_cfg.mask_channel_prob,
            mask_length=min(loss_cfg.mask_channel_length, hidden))
      logits, frame_mask = model(
          batch['audio'], lengths, mask_time, mask_channels,
          feature_grad_mult=float(self.config.model.feature_grad_mult),
          freeze_encoder=step < loss_cfg.freeze_encoder_steps, train=True,
          rngs=self._rngs(model_key))
      per_utterance, feasible = self._ctc(logits, frame_mask, batch)
      count = jnp.maximum(jnp.sum(feasible), 1.0)
      return jnp.sum(per_utterance * feasible) / count, {'feasible_share': jnp.mean(feasible)}
    return self._switch(self.train_bucketing, model, batch, branch, (step, rng),
                        differentiate=True)

  def _ctc(self, logits, frame_mask, batch):
    """Per-utterance CTC loss and whether the transcript fits the frames (zero_infinity)."""
    labels, label_length = batch['labels'], batch['label_length']
    positions = jnp.arange(labels.shape[1])[None, :]
    label_paddings = (positions >= label_length[:, None]).astype(jnp.float32)
    loss = optax.ctc_loss(logits, 1.0 - frame_mask.astype(jnp.float32), labels, label_paddings,
                          blank_id=librispeech.BLANK)
    repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & (positions[:, 1:] < label_length[:, None]),
                      axis=-1)
    needed = label_length + repeats
    feasible = (jnp.sum(frame_mask, axis=-1) >= needed) & (label_length > 0)
    return loss, feasible.astype(jnp.float32)

  def eval_sums(self, model, batch):
    def branch(model, batch, length, extras):
      lengths = jnp.where(batch['mask'] > 0, batch['length'], 0)
      logits, frame_mask = model(batch['audio'], lengths, train=False)
      hyp, hyp_length = wer_lib.ctc_greedy(logits, frame_mask, librispeech.BLANK)
      errors, words = wer_lib.word_errors(
          hyp, hyp_length, batch['labels'], batch['label_length'],
          delimiter=librispeech.WORD_DELIMITER, vocab_size=self.model_config.vocab_size)
      weight = batch['mask'].astype(jnp.float32)
      return {'errors': jnp.sum(errors * weight), 'words': jnp.sum(words * weight),
              'utterances': jnp.sum(weight)}
    return self._switch(self.eval_bucketing, model, batch, branch)

  def quality(self, sums):
    if self.batches is not None and int(sums['utterances']) != self.eval_samples:
      raise RuntimeError(f'eval saw {int(sums["utterances"])} utterances, expected exactly '
                         f'{self.eval_samples}')
    return float(sums['errors']) / max(float(sums['words']), 1.0)

  def hyperparameters(self):
    loss = self.config.loss
    return {**self._optimizer_hyperparameters(),
            'wav2vec2_mask_prob': loss.mask_prob, 'wav2vec2_mask_length': loss.mask_length,
            'wav2vec2_mask_channel_prob': loss.mask_channel_prob,
            'wav2vec2_mask_channel_length': loss.mask_channel_length,
            'wav2vec2_freeze_encoder_steps': loss.freeze_encoder_steps,
            'wav2vec2_init_checkpoint': self.config.model.init_checkpoint or 'none'}

  def initial_params(self):
    """The encoder of `model.init_checkpoint` (a podium pretraining run, checkpoint or import
    folder, or a transformers / fairseq PyTorch or safetensors file) with a freshly
    initialised CTC head; a fine-tuned file's head comes with it."""
    path = self.config.model.init_checkpoint
    if not path:
      return None
    model = self.create_model(nnx.Rngs(int(self.config.seed)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    from models.importers import weight_files
    try:
      fmt = weight_files.detect_format(path)
      if fmt in ('pytorch', 'safetensors'):  # transformers or fairseq (a restricted unpickler)
        state = weight_files.read_state_dict(path)
      elif fmt == 'podium':
        saved = weight_files.read_podium(path)
      else:
        raise weight_files.WeightFileError(
            f'a {fmt} checkpoint holds no wav2vec2: expected a wav2vec2_pretrain run or '
            'checkpoints folder, a `podium import` folder, or a PyTorch / safetensors file')
    except (ValueError, FileNotFoundError) as e:
      raise ConfigError(f'model.init_checkpoint={path}: {e}') from None
    if fmt != 'podium':
      from models.importers import pytorch_wav2vec2
      whole = any(k.startswith(('lm_head.', 'w2v_encoder.proj.')) for k in state)
      try:
        pytorch_wav2vec2.load_pytorch_wav2vec2(model, state, encoder_only=not whole)
      except ValueError as e:
        raise ConfigError(f'model.init_checkpoint={path}: {e}') from None
      return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    if 'wav2vec2' not in saved.get('params', {}):
      raise ConfigError(f'model.init_checkpoint={path} holds no wav2vec2 encoder parameters')
    params['wav2vec2'] = saved['params']['wav2vec2']
    return params


def build_task(config, runtime):
  prepare_data(config)
  if config.benchmark == PRETRAIN:
    return PretrainTask(config, runtime)
  if config.benchmark == CTC:
    return CTCTask(config, runtime)
  raise ConfigError(f'benchmarks.wav2vec2 defines {PRETRAIN} and {CTC}, not {config.benchmark!r}')



def export_spec(config):
  """`podium export` (benchmarks/export.py): wav2vec 2.0 on raw audio, as TF Hub's ports.

  Inputs `audio` float32 [batch, samples]: 16 kHz waveforms scaled to [-1, 1), zeros after
  each utterance, samples fixed at the longest eval bucket (data.eval_bucket_lengths), any
  batch; `lengths` int32 [batch]: valid samples. With data.normalize the model normalises each
  utterance inside, as the input pipeline does. `features` gives the Transformer's last
  states [b, frames, hidden] and `frame_mask` [b, frames] (1 inside the utterance); a
  wav2vec2_ctc run also gives `ctc_logits` [b, frames, vocab] (its serving_default; greedy
  decoding: input_pipelines.librispeech's characters, blank 0).
  """
  from benchmarks import export  # pylint: disable=import-outside-toplevel
  model_cfg = model_config(config)
  dtype = jnp.dtype(config.model.dtype)
  samples = int(max(config.data.eval_bucket_lengths))
  ctc = config.benchmark == CTC

  def prepare(x):
    audio, lengths = x['audio'], x['lengths']
    if not config.data.normalize:
      return audio, lengths
    valid = jnp.arange(audio.shape[1])[None, :] < lengths[:, None]
    count = jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, audio, 0.0), 1, keepdims=True) / count
    var = jnp.sum(jnp.where(valid, (audio - mean) ** 2, 0.0), 1, keepdims=True) / count
    return (jnp.where(valid, (audio - mean) / jnp.sqrt(var + librispeech.NORMALIZE_EPSILON),
                      0.0), lengths)

  def features(model, x):
    encoded = model.wav2vec2(*prepare(x))
    return {'features': encoded.hidden.astype(jnp.float32),
            'frame_mask': encoded.frame_mask.astype(jnp.int32)}

  def ctc_logits(model, x):
    logits, frame_mask = model(*prepare(x))
    return {'ctc_logits': logits, 'frame_mask': frame_mask.astype(jnp.int32)}

  head = w2v.Wav2Vec2ForCTC if ctc else w2v.Wav2Vec2ForPreTraining
  return export.ExportSpec(
      create_model=lambda rngs: head(model_cfg, dtype=dtype, rngs=rngs),
      input_shape=(), input_dtype='float32',
      inputs={'audio': (('b', samples), 'float32'), 'lengths': (('b',), 'int32')},
      functions={'features': features, **({'ctc_logits': ctc_logits} if ctc else {})},
      serving='ctc_logits' if ctc else 'features',
      description=(f'wav2vec 2.0 {config.model.name} trained by podium ({config.benchmark}/'
                   f'{config.recipe}); inputs: 16 kHz float32 audio [batch, {samples}] and '
                   'int32 lengths [batch]'))

# -- recipes ----------------------------------------------------------------------------------

def _espeak(config, *, batch: int, eval_batch: int) -> None:
  """Points a recipe at the espeak-ng corpus (input_pipelines/speech_corpus.py)."""
  config.data.update(dir='data/espeak', prepare='espeak', train_splits=('train',),
                     eval_split='dev', normalize=True, workers=2)
  config.model.update(name='tiny', dtype='float32')
  config.train.update(global_batch_size=batch, eval_batch_size=eval_batch)
  config.log_every_steps = 10


@recipe(PRETRAIN)
def espeak_cpu():
  """The tiny wav2vec 2.0 pretrained on the offline espeak-ng corpus, on a CPU.

  Source: podium. 1,600 train and 200 dev sentences spoken by espeak-ng in 50 voices
  (input_pipelines/speech_corpus.py), written in the LibriSpeech layout and read through the
  LibriSpeech reader. The model is LARGE's structure (LayerNorm feature encoder, pre-LN
  Transformer) at width 64/128 (3 layers, 512-wide last convolution), with the paper's
  G=2 x V=320 codebook, span masks (0.65, 10) and 100 distractors; every utterance cropped
  to 1.25 s (one bucket: on XLA:CPU a bucket switch makes convolution gradients ~20x slower);
  the dev split in padded buckets of 2, 3 and 4 s. Adam 1e-3, 8% warmup, linear decay over
  3,000 steps, batch 16; no dropout, no feature penalty and the feature encoder fully trained
  (fairseq's LARGE setting). The Gumbel temperature anneals 2 -> 0.5 over the first ~2,000
  steps (x0.9993 per update): fairseq's x0.999995 reaches 0.5 only after 277k updates, and at
  ~2 the training codes stay too noisy to predict within a CPU run.
  Hardware: one CPU (2 cores). Measured (alone, 2026-11-23): ~0.5 s/step; the strict dev
  accuracy went 0.017 (step 300) -> 0.029 (1,000) -> 0.044 (1,600) -> 0.044-0.049 (1,900-
  2,400) -> 0.0512 at step 2,500, stopping there: time to train 1,607 s. Shorter schedules
  fell short: 600 steps at fairseq's decay 0.030; 1,500 steps at x0.9986 0.039. Codebook
  perplexity (of 640): 97 at the start, 342 at step ~200, then 20-30 from step ~800 as the
  temperature falls and code use sharpens (never near the collapsed value 2). BASE's
  structure (post-LN, GroupNorm, gradient x0.1) sat at the plateau log(101) = 4.615.
  Expected (stated target): strict dev contrastive accuracy >= 0.05 (reached once, near the
  end of the schedule: evals are noisy by ~0.005 around it).
  """
  config = pretrain_config()
  _espeak(config, batch=16, eval_batch=25)
  config.data.update(bucket_lengths=(20_000,), eval_bucket_lengths=(32_000, 48_000, 64_000))
  config.model.update(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
                      feat_quantizer_dropout=0.0, layerdrop=0.0, feature_grad_mult=1.0)
  config.loss.update(feature_penalty_weight=0.0, temperature_decay=0.9993)
  config.train.update(max_steps=3000, eval_every_steps=100, target=0.05)
  config.optimizer.update(learning_rate=1e-3, warmup_fraction=0.08)
  return config


def _ctc_espeak_cpu():
  """The tiny wav2vec 2.0 fine-tuned with CTC on the espeak-ng corpus, on a CPU.

  Source: podium; the fine-tuning setup of fairseq's base_100h (tri-stage schedule, span
  masks on time and channels, frozen feature encoder, CTC on characters with greedy
  decoding), shortened. Starts from `model.init_checkpoint` when set (the checkpoints of a
  wav2vec2_pretrain espeak_cpu run), else from scratch.
  Train batches are padded to one 4 s bucket: with three buckets (2, 3, 4 s) the bucket
  switch made a train step take > 10 s on XLA:CPU (2 cores), with one it takes 2.0 s.
  Hardware: one CPU (2 cores). Expected (stated target): WER <= 0.30 on the 200 dev
  sentences (unseen speakers, unseen sentences) within 1,500 steps, started from the
  wav2vec2_pretrain espeak_cpu run (`--init_from runs/runs/wav2vec2_pretrain/cpu-x1/result_0`).
  Measured (2026-11-23, from the 0.0512 pretraining run; the machine shared with other
  work, 1.3-2.7 s/step): dev WER 1.0 (steps 100-200, blanks only) -> 0.91 (300) -> 0.64
  (500) -> 0.41 (700) -> 0.293 at step 900: time to train 2,193 s. From scratch: not run to
  the end.
  """
  config = ctc_config()
  _espeak(config, batch=16, eval_batch=25)
  config.data.update(bucket_lengths=(64_000,), eval_bucket_lengths=(40_000, 64_000),
                     max_label_length=0)
  config.model.update(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.1,
                      final_dropout=0.0, layerdrop=0.0, feature_grad_mult=1.0)
  config.train.update(max_steps=1500, eval_every_steps=100, target=0.30)
  config.optimizer.update(learning_rate=2e-3, epsilon=1e-8, weight_decay=0.0)
  config.loss.update(mask_prob=0.3, mask_channel_prob=0.1, mask_channel_length=16)
  return config


_ctc_espeak_cpu.__name__ = 'espeak_cpu'  # the same recipe name as pretraining's
recipe(CTC)(_ctc_espeak_cpu)


# -- the paper's recipes (fairseq's configs) and their TPU pod versions -------------------------
#
# fairseq batches by samples (max_tokens per GPU); podium by utterances per step, bucketed by
# length. The global batches below hold what fairseq's do: BASE pretraining, 1.4 M samples x 64
# GPUs = 89.6 M samples = 1.6 h of audio, ~512 utterances cropped to <= 15.6 s; fine-tuning,
# 3.2 M samples x 8 (base_100h: 2 GPUs x update_freq 4; base_960h: 8 GPUs) = 25.6 M samples,
# ~128 LibriSpeech utterances of 12.7 s on average.


def _base_pretraining(topology: str = '', batch: int = 512):
  """fairseq's examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml."""
  config = pretrain_config()
  config.topology = topology
  config.data.dir = ''  # --set data.dir=gs://bucket/librispeech (train-* and dev-clean records)
  config.train.update(global_batch_size=batch, eval_batch_size=64, max_steps=400_000,
                      eval_every_steps=25_000, target=0.5)
  return config


def _large_pretraining(topology: str = '', batch: int = 1024):
  """The paper's LARGE on LibriSpeech 960 h (section 4.2) with the architecture and loss of
  fairseq's wav2vec2_large_librivox.yaml."""
  config = pretrain_config()
  config.topology = topology
  config.model.update(name='large', hidden_dropout=0.0, attention_dropout=0.0,
                      feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, layerdrop=0.0,
                      feature_grad_mult=1.0)
  config.data.update(normalize=True, bucket_lengths=PRETRAIN_BUCKETS[:-1] + (224_000, 320_000))
  config.loss.update(feature_penalty_weight=0.0, min_temperature=0.1)
  config.train.update(global_batch_size=batch, eval_batch_size=64, max_steps=250_000,
                      eval_every_steps=25_000, target=0.5)
  config.optimizer.update(learning_rate=3e-4)
  return config


def _base_finetuning(labels: str, topology: str = '', batch: int = 128):
  """fairseq's examples/wav2vec/config/finetuning/base_{100h,960h}.yaml."""
  config = ctc_config()
  config.topology = topology
  if labels == '960h':
    config.data.update(train_splits=LIBRISPEECH_960H, train_examples=281_241)
    config.train.update(max_steps=320_000, eval_every_steps=20_000, target=0.036)
    config.optimizer.update(learning_rate=1e-5)
    config.loss.update(mask_prob=0.5, mask_channel_prob=0.1)
  config.train.global_batch_size = batch
  return config


@recipe(PRETRAIN)
def librispeech_base_960h():
  """wav2vec 2.0 BASE pretrained on the 960 h of LibriSpeech, as the paper and fairseq do.

  Source: Baevski et al. 2020, section 4.2, and fairseq's wav2vec2_base_librispeech.yaml:
  400k updates, Adam (0.9, 0.98, eps 1e-6, weight decay 0.01), lr 5e-4 after a linear warmup
  over 8% of the updates (32k), then linear decay to 0; batch 1.4 M samples per GPU x 64
  GPUs (1.6 h of audio: podium's 512 utterances cropped to 2-15.6 s); span masks p = 0.065
  x 10 frames, K = 100 distractors, G = 2 x V = 320 codebook, Gumbel temperature 2 -> 0.5 by
  x0.999995 per update, loss weights 0.1 (diversity) and 10 (feature penalty), dropout 0.1
  on the Transformer and on the encoder's output and the quantizer's input, LayerDrop 0.05,
  the feature encoder's gradient x0.1; bfloat16 here where fairseq used fp16.
  Hardware: any accelerators holding 512 utterances of <= 15.6 s (fairseq: 64 V100 GPUs,
  ~1.6 days). Expected: the paper reports no pretraining metric; fine-tuned on 100 h of
  labels it gives 6.1 / 13.5 WER on dev-clean / dev-other and 6.1 / 13.3 on test-clean /
  test-other without a language model (Table 1), 3.2 / 8.9 and 3.4 / 8.5 fine-tuned on all
  960 h (Table 2). The contrastive-accuracy target (0.5 on dev-clean) is an estimate to
  calibrate on the first full run.
  """
  return _base_pretraining()


@recipe(PRETRAIN)
def librispeech_large_960h():
  """wav2vec 2.0 LARGE pretrained on the 960 h of LibriSpeech, as in the paper.

  Source: Baevski et al. 2020, section 4.2 (LARGE on LS-960: 250k updates, lr 3e-4 after 8%
  warmup, 128 V100 GPUs), with fairseq's wav2vec2_large_librivox.yaml for the rest: 24
  pre-LN layers of 1024, LayerNorm feature encoder with conv biases, 768-d contrastive space,
  no dropout, no LayerDrop, normalised waveforms, crops up to 20 s, Gumbel temperature
  2 -> 0.1, no feature penalty (loss weights [0.1, 0]), the feature encoder fully trained.
  podium's batch: 1,024 utterances (~2.7 h of audio, the paper's LARGE batch).
  Hardware: a TPU pod (see tpu_v5p_256_large_960h) or 128 GPUs. Expected: fine-tuned on
  100 h of labels, 4.6 / 9.3 WER on dev-clean / dev-other, 4.7 / 9.0 on test (Table 1, no
  LM); the contrastive-accuracy target (0.5) is an estimate to calibrate.
  """
  return _large_pretraining()


@recipe(PRETRAIN)
def tpu_v5p_128_base_960h():
  """librispeech_base_960h on a TPU v5p-128 slice (64 chips: one per fairseq GPU).

  Source: fairseq's wav2vec2_base_librispeech.yaml (see librispeech_base_960h): 8 utterances
  of <= 15.6 s per chip, bfloat16. Hardware: TPU v5p-128 (64 chips, 16 hosts).
  Expected: the contrastive accuracy 0.5 on dev-clean within the 400k updates (estimate);
  fine-tuned on 100 h, the paper's 6.1 WER on dev-clean.
  """
  return _base_pretraining('v5p-128')


@recipe(PRETRAIN)
def tpu_v4_64_base_960h():
  """librispeech_base_960h on a TPU v4-64 slice (32 chips, 16 utterances per chip).

  Source: fairseq's wav2vec2_base_librispeech.yaml (see librispeech_base_960h).
  Hardware: TPU v4-64 (32 chips, 8 hosts). Expected: as tpu_v5p_128_base_960h.
  """
  return _base_pretraining('v4-64')


@recipe(PRETRAIN)
def tpu_v5p_256_large_960h():
  """librispeech_large_960h on a TPU v5p-256 slice (128 chips, 8 utterances each).

  Source: the paper's LARGE on LS-960 (see librispeech_large_960h).
  Hardware: TPU v5p-256 (128 chips, 32 hosts). Expected: fine-tuned on 100 h, 4.6 WER on
  dev-clean (Table 1, no LM).
  """
  return _large_pretraining('v5p-256')


@recipe(CTC)
def finetune_base_100h():
  """BASE fine-tuned with CTC on train-clean-100, as fairseq's base_100h.yaml.

  Source: Baevski et al. 2020 and fairseq's examples/wav2vec/config/finetuning/base_100h.yaml:
  80k updates, Adam (0.9, 0.98, eps 1e-8), lr 3e-5 with the tri-stage schedule (10% warmup
  from 0.01x, 40% hold, 50% exponential decay to 0.05x), batch 3.2 M samples x 2 GPUs x 4
  accumulation (1.6 h: podium's 128 utterances), span masks 0.65 x 10 on time and 0.5 x 64
  on channels, LayerDrop 0.1, activation dropout 0.1, the feature encoder frozen, CTC on
  characters (sentence average, zero_infinity). Start from a BASE pretraining run:
  --set model.init_checkpoint=runs/runs/wav2vec2_pretrain/<system>/result_<i>/checkpoints
  or fairseq's wav2vec_small.pt.
  Hardware: any accelerators holding 128 utterances of up to 35 s (fairseq: 2 V100 GPUs).
  Expected: the paper's 6.1 WER on dev-clean with greedy decoding and no language model
  (Table 1: 6.1 / 13.5 dev-clean / dev-other, 6.1 / 13.3 test); target 0.065 (+0.4 points).
  """
  return _base_finetuning('100h')


@recipe(CTC)
def finetune_base_960h():
  """BASE fine-tuned with CTC on all 960 h of LibriSpeech, as fairseq's base_960h.yaml.

  Source: Baevski et al. 2020 and fairseq's finetuning/base_960h.yaml: 320k updates, lr 1e-5
  (tri-stage 0.1 / 0.4 / 0.5), batch 3.2 M samples x 8 GPUs (podium: 128 utterances), masks
  0.5 x 10 on time and 0.1 x 64 on channels, LayerDrop 0.1, the feature encoder frozen.
  Hardware: any accelerators (fairseq: 8 V100 GPUs). Expected: 3.2 WER on dev-clean without
  a language model (Table 2: 3.2 / 8.9 dev, 3.4 / 8.5 test); target 0.036 (+0.4 points).
  """
  return _base_finetuning('960h')


@recipe(CTC)
def tpu_v4_32_base_100h():
  """finetune_base_100h on a TPU v4-32 slice (16 chips, 8 utterances each).

  Source: fairseq's base_100h.yaml (see finetune_base_100h). Hardware: TPU v4-32 (16 chips, 4 hosts).
  Expected: 6.1 WER on dev-clean (paper, Table 1, no LM); target 0.065.
  """
  return _base_finetuning('100h', 'v4-32')


@recipe(CTC)
def tpu_v5p_64_base_960h():
  """finetune_base_960h on a TPU v5p-64 slice (32 chips, 4 utterances each).

  Source: fairseq's base_960h.yaml (see finetune_base_960h). Hardware: TPU v5p-64 (32 chips, 8 hosts).
  Expected: 3.2 WER on dev-clean (paper, Table 2, no LM); target 0.036.
  """
  return _base_finetuning('960h', 'v5p-64')
