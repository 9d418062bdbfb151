"""The wav2vec2 tasks: bucketed static shapes compiled once, the bucket switch's gradient,
WER in the eval step, schedules, hyperparameters, recipes against their rule files."""

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import registry
from benchmarks import wav2vec2 as bench
from benchmarks import wer
from benchmarks.train import build_state_fns
from input_pipelines import librispeech
from launch.runtime import Runtime, logical_axis_rules, make_mesh
from models import wav2vec2 as w2v
from results import compliance
from tests.test_librispeech import write_layout

SMALL = dataclasses.replace(
    w2v.WAV2VEC2_CONFIGS['tiny'], conv_dim=(16,) * 7, hidden_size=32, num_layers=1,
    num_heads=2, intermediate_size=32, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    codevector_dim=16, proj_codevector_dim=8)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('w2vtask')
  layout = str(root / 'LibriSpeech')
  write_layout(layout, 'train', (12, 10, 14), seed=3, min_s=0.6, max_s=1.6)
  write_layout(layout, 'dev', (4, 3), seed=4, min_s=0.6, max_s=1.6)
  out = str(root / 'records')
  librispeech.write_dataset(layout, out, ['train', 'dev'], num_shards={'train': 2, 'dev': 1})
  return out


@pytest.fixture(autouse=True)
def small_model(monkeypatch):
  monkeypatch.setitem(w2v.WAV2VEC2_CONFIGS, 'test_small', SMALL)


def make_task(benchmark, data_dir, *overrides):
  config = registry.resolve(benchmark, 'espeak_cpu', [
      f'data.dir={data_dir}', 'data.prepare=""', 'model.name=test_small', 'data.workers=1',
      'train.global_batch_size=4', 'train.eval_batch_size=4', 'loss.num_negatives=10'
      if benchmark == bench.PRETRAIN else 'loss.mask_channel_length=4', *overrides])
  runtime = Runtime(make_mesh({'data': 1}, jax.devices()[:1]), logical_axis_rules(config.sharding_rules))
  return registry.load_benchmark(benchmark).build_task(config, runtime), runtime


def test_bucketed_train_step_compiles_once_for_every_bucket_shape(data_dir):
  task, _ = make_task(bench.PRETRAIN, data_dir, 'data.bucket_lengths=(9600,12800,16000)')
  fns = build_state_fns(task, Runtime(make_mesh({'data': 1}, jax.devices()[:1]), ()), seed=0)
  step = jax.jit(fns.train_step, donate_argnums=0)
  state = jax.jit(fns.init)()
  batches = task.train_batches(0)
  shapes, buckets = set(), set()
  for _ in range(2 * task.steps_per_epoch):
    batch = next(batches)
    shapes.add(tuple(batch['audio'].shape))
    buckets.add(int(batch['bucket'][0]))
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss']))
  # One array shape reaches the step; the bucket picks one of three static lengths inside it.
  assert shapes == {(4, 16000)}
  assert buckets == {0, 1, 2}
  assert step._cache_size() == 1          # no recompiles after the first step
  # The compiled step holds exactly one branch per bucket length.
  text = jax.jit(fns.train_step).lower(state, batch).as_text()
  assert len(set(re.findall(r'tensor<4x(9600|12800|16000)xf32>', text))) == 3


@pytest.mark.slow  # ~2.5 min: XLA:CPU's convolution gradients inside a bucket switch are slow
def test_bucket_switch_gives_the_gradient_of_the_bucket_alone(data_dir):
  """The custom VJP around lax.switch: same loss and gradient as a one-bucket task."""
  many, _ = make_task(bench.PRETRAIN, data_dir, 'data.bucket_lengths=(9600,12800,16000)')
  one, _ = make_task(bench.PRETRAIN, data_dir, 'data.bucket_lengths=(12800,)')
  batches = many.train_batches(0)
  batch = next(b for b in batches if b['bucket'][0] == 1)
  single = dict(batch, audio=batch['audio'][:, :12800], bucket=np.zeros_like(batch['bucket']))
  model = many.create_model(__import__('flax').nnx.Rngs(0))
  from flax import nnx
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = jax.random.key(5)

  def loss(task, params, batch):
    return task.loss(nnx.merge(graphdef, params, rest), batch, rng)

  (a, ma), ga = jax.value_and_grad(lambda p: loss(many, p, batch), has_aux=True)(params)
  (b, mb), gb = jax.value_and_grad(lambda p: loss(one, p, single), has_aux=True)(params)
  assert float(a) == pytest.approx(float(b), rel=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-6)
  assert float(ma['codebook_perplexity']) == pytest.approx(float(mb['codebook_perplexity']), rel=1e-5)


def test_ctc_eval_counts_word_errors_of_greedy_decoding(data_dir):
  task, _ = make_task(bench.CTC, data_dir)
  from flax import nnx
  model = task.create_model(nnx.Rngs(0))
  sums = None
  refs, hyps = [], []
  eval_fn = jax.jit(lambda batch: task.eval_sums(model, batch))
  for batch in task.eval_batches():
    out = jax.device_get(eval_fn(batch))
    sums = out if sums is None else {k: sums[k] + out[k] for k in out}
    # The same, on the host: every frame's argmax, repeats collapsed, blanks dropped.
    bucket = task.eval_bucketing.lengths[batch['bucket'][0]]
    logits, frames = model(jnp.asarray(batch['audio'][:, :bucket]), jnp.asarray(batch['length']))
    for row in np.flatnonzero(batch['mask']):
      best = np.asarray(jnp.argmax(logits[row], -1))[:int(frames[row].sum())]
      collapsed = [int(t) for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
      hyps.append(librispeech.decode_tokens(collapsed))
      refs.append(librispeech.decode_tokens(batch['labels'][row, :batch['label_length'][row]]))
  assert int(sums['utterances']) == task.eval_samples == 7
  errors = sum(wer.python_word_errors(r, h)[0] for r, h in zip(refs, hyps))
  words = sum(len(r.split()) for r in refs)
  assert (int(sums['errors']), int(sums['words'])) == (errors, words)
  assert task.quality(sums) == pytest.approx(errors / words)


def test_ctc_step_trains_and_the_loss_is_per_utterance(data_dir):
  # No warmup: the recipe's tri-stage schedule would still be warming up at step 15.
  task, runtime = make_task(bench.CTC, data_dir, 'optimizer.learning_rate=5e-3',
                            'optimizer.schedule=polynomial', 'optimizer.warmup_fraction=0.0')
  fns = build_state_fns(task, runtime, seed=0)
  state = jax.jit(fns.init)()
  step = jax.jit(fns.train_step, donate_argnums=0)
  batch = next(task.train_batches(0))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0]
  assert float(metrics['feasible_share']) == 1.0


def test_schedules_follow_fairseq():
  tri = bench.optimizers.tri_stage(base_lr=1.0, warmup_steps=10, hold_steps=40, decay_steps=50,
                                   init_lr_scale=0.01, final_lr_scale=0.05)
  assert float(tri(0)) == pytest.approx(0.01)
  assert float(tri(5)) == pytest.approx(0.01 + 0.99 * 5 / 10)
  assert float(tri(10)) == float(tri(49)) == 1.0
  assert float(tri(75)) == pytest.approx(math.exp(-(-math.log(0.05) / 50) * 25))
  assert float(tri(100)) == pytest.approx(0.05)
  assert float(tri(1000)) == pytest.approx(0.05)


def test_pretraining_recipe_logs_the_paper_setup_and_gumbel_schedule(data_dir):
  task, _ = make_task(bench.PRETRAIN, data_dir)
  hp = task.hyperparameters()
  assert hp['opt_name'] == 'adam' and hp['wav2vec2_codebook_groups'] == 2
  assert hp['wav2vec2_codebook_entries'] == 320 and hp['wav2vec2_mask_length'] == 10
  assert all(isinstance(v, (int, float, str)) for v in hp.values())
  assert float(task.temperature(0)) == 2.0
  assert task.learning_rate(0) == 0.0


def rule_targets(benchmark):
  text = open(compliance.RULES_DIR / f'{benchmark}.yaml').read()
  return {m[0]: (float(m[1]), m[2]) for m in
          re.findall(r"'([a-z]+:[a-z0-9,.-]+)': \(([0-9.]+), '([a-z-]+)'\)", text)}


@pytest.mark.parametrize('benchmark', [bench.PRETRAIN, bench.CTC])
def test_every_recipe_has_its_target_in_the_rule_file(benchmark):
  targets = rule_targets(benchmark)
  assert targets
  for name in registry.recipes(benchmark):
    config = registry.resolve(benchmark, name)
    key = f'{config.model.name}:{",".join(config.data.train_splits)}'
    assert key in targets, f'{benchmark}/{name}: {key} not in the rule file'
    assert targets[key] == (config.train.target, config.data.eval_split), f'{benchmark}/{name}'


def test_rule_files_are_found_for_both_benchmarks():
  for benchmark in (bench.PRETRAIN, bench.CTC):
    ruleset, config = compliance.ruleset_for(benchmark)
    assert ruleset == '5.0.0' and os.path.basename(config) == f'{benchmark}.yaml'


def test_ctc_starts_from_a_fairseq_style_pretraining_file_encoder_only(data_dir, tmp_path,
                                                                        monkeypatch):
  """`model.init_checkpoint` = a torch.save'd pretraining checkpoint that wraps its state dict
  as fairseq does ({'args': Namespace, 'model': ...}): the encoder loads exactly, the CTC
  head starts fresh (the model's own initialisation)."""
  import argparse
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from flax import nnx
  from models.importers import pytorch_wav2vec2 as importer
  torch.manual_seed(0)
  from tests.test_wav2vec2_parity import hf_config as tiny_hf_config
  hf_config = tiny_hf_config('large')
  reference = transformers.Wav2Vec2ForPreTraining(hf_config)
  path = tmp_path / 'pretrained.pt'
  torch.save({'args': argparse.Namespace(arch='wav2vec2'), 'model': reference.state_dict()}, path)
  monkeypatch.setitem(w2v.WAV2VEC2_CONFIGS, 'from_hf', importer.config_from_transformers(hf_config))
  task, _ = make_task(bench.CTC, data_dir, 'model.name=from_hf', f'model.init_checkpoint={path}')
  params = task.initial_params()

  expected = w2v.Wav2Vec2ForPreTraining(importer.config_from_transformers(hf_config),
                                        rngs=nnx.Rngs(0))
  importer.load_pytorch_wav2vec2(expected, reference.state_dict())
  expected = nnx.to_pure_dict(nnx.state(expected, nnx.Param))['wav2vec2']
  for got, want in zip(jax.tree.leaves(params['wav2vec2']), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  fresh = nnx.to_pure_dict(nnx.state(task.create_model(nnx.Rngs(int(task.config.seed))),
                                     nnx.Param))['lm_head']
  for got, want in zip(jax.tree.leaves(params['lm_head']), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(got, want)
