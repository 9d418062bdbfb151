"""`podium bench`: how fast podium trains on this machine, beside what users would otherwise run.

For each model (ResNet-50, RegNetY-1.6GF, BERT-base pretraining, wav2vec 2.0 BASE
pretraining) at a given batch, input size and dtype, on the current device:

  podium    the real train step of the benchmark's task (model, loss, optimizer, donated
            state: what `podium run` compiles), on a synthetic batch already on one device:
            median step time, examples/s, compile time, the step's memory (XLA's memory
            analysis), model FLOPs (cost analysis), achieved FLOP/s and MFU against the chip
            table or, on a CPU, a measured matmul rate; with --profile, the costliest XLA ops
            from a jax.profiler trace.
  PyTorch   the same architecture from transformers, same batch, loss and optimizer (LARS
            and LAMB from torch_optimizers), forward + backward + the optimizer step in
            train mode, eager and under
            torch.compile, on the same device with XLA's thread count.

podium and PyTorch steps are timed in interleaved rounds (A B C A B C ...) so that load from
other work on a shared machine falls on all of them; the ratio podium / PyTorch is reported
per model and per round. Each input pipeline is measured alone, per host core (CPU time):
the ImageNet train map against the common baseline (decode the whole JPEG, then crop), on the
same records, with the cost per image for sizing TPU hosts.

Writes `bench.json`, `bench.md` (the tables) and `bench.png` under `--out`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import bench_pipelines


# -- the cases ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchCase:
  """One model to measure: a podium recipe with overrides, and its PyTorch twin.

  `overrides` give the measured size; `accelerator` adds to them on a GPU or TPU (the size the
  issue's anchors are quoted at, e.g. BERT-large at sequence 512); `quick` shrinks it to check
  the machinery in seconds. `twin` says how the PyTorch side differs, for the table's notes."""
  name: str
  benchmark: str
  recipe: str
  overrides: tuple[str, ...]
  unit: str                                   # what one example is: 'images', 'sequences'
  input: str                                  # the input size, for the table
  torch_step: Callable[..., Any] | None = None  # (config, batch, device, dtype) -> TorchStep
  quick: tuple[str, ...] = ()
  quick_input: str = ''
  cpu_batch: int = 8
  accelerator_batch: int = 256
  accelerator: tuple[str, ...] = ()
  accelerator_input: str = ''
  twin: str = ''


_STARTED = time.perf_counter()


def progress(message: str) -> None:
  """One line of progress, with the minutes and seconds since `podium bench` started."""
  minutes, seconds = divmod(int(time.perf_counter() - _STARTED), 60)
  print(f'podium bench [{minutes:2d}:{seconds:02d}]: {message}', flush=True)


def _median_time(step: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times), times


def _on_accelerator() -> bool:
  import jax
  return jax.devices()[0].platform != 'cpu'


def _config(case: BenchCase, *, quick: bool, extra: tuple[str, ...] = ()):
  from benchmarks import registry
  sized = case.accelerator if _on_accelerator() and not quick else ()
  return registry.resolve(case.benchmark, case.recipe, [
      *case.overrides, *sized, *(case.quick if quick else ()), 'data.synthetic=True',
      'data.prepare=""', *extra])


# -- the podium side -----------------------------------------------------------------------

@dataclasses.dataclass
class Measured:
  """A built train step to time, and what was learnt building it."""
  step: Callable[[], None]
  info: dict
  close: Callable[[], None] = lambda: None


def podium_step(case: BenchCase, *, batch: int, dtype: str, quick: bool,
                overrides: tuple[str, ...] = ()) -> Measured:
  """podium's real train step (the state and step builders `podium run` compiles), on one
  device -- the device PyTorch runs on -- with a synthetic batch already on it."""
  import jax
  from benchmarks import registry, train
  from launch import runtime as runtime_lib
  from benchmarks import flops as flops_lib
  config = _config(case, quick=quick, extra=(
      *overrides, f'train.global_batch_size={batch}', f'train.eval_batch_size={batch}',
      f'model.dtype={dtype}'))
  runtime = runtime_lib.Runtime.from_config(config, devices=jax.devices()[:1])
  task = registry.load_benchmark(case.benchmark).build_task(config, runtime)
  jitted = train.jit_steps(task, runtime, seed=0)
  with runtime.activate():
    start = time.perf_counter()
    state = jitted.init()
    global_batch = runtime.global_batch(next(task.train_batches(0)))
    lowered = jitted.train.lower(state, global_batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  flops = flops_lib.StepFlops(
      model_flops=flops_lib.lowered_flops(lowered) or flops_lib.compiled_flops(compiled),
      num_devices=1, peak=flops_lib.peak_per_device(jax.devices()[:1]))
  memory = compiled.memory_analysis()
  step_bytes = None
  if memory is not None:
    step_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], global_batch)
    jax.block_until_ready(metrics)

  device = jax.devices()[0]
  return Measured(step, {
      'compile_s': compile_s, 'step_memory_bytes': step_bytes,
      'model_flops_per_step': flops.model_flops, 'flops': flops,
      'peak_source': flops.peak.source if flops.peak else None,
      'devices': 1, 'device_kind': device.device_kind, 'platform': device.platform,
      'threads': _xla_threads(device.platform)}, task.close)


def _xla_threads(platform_name: str) -> int | None:
  """XLA:CPU's intra-op pool: one thread per core this process may run on."""
  if platform_name != 'cpu':
    return None
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


# -- the PyTorch side ----------------------------------------------------------------------

@dataclasses.dataclass
class TorchStep:
  model: Any
  optimizer: Any
  inputs: dict
  loss_of: Callable[[Any], Any] = lambda output: output.loss


def _torch_dtype(dtype: str):
  import torch
  return {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]


def _images(config, batch: int, device: str, generator) -> dict:
  import torch
  size = config.data.image_size
  return {'pixel_values': torch.randn(batch, 3, size, size, generator=generator).to(device),
          'labels': torch.randint(0, config.model.num_classes, (batch,), generator=generator).to(device)}


def torch_resnet(config, batch: int, device: str) -> TorchStep:
  """transformers' ResNet with podium's depth, width and classes; podium's LARS
  (`torch_optimizers.Lars`, MLPerf's: PyTorch has none in core) with the recipe's momentum,
  weight decay and trust coefficient."""
  import torch
  import transformers
  from models import resnet as resnet_models
  spec = resnet_models.RESNET_CONFIGS[config.model.name]
  if spec.get('stem', 'imagenet') != 'imagenet':
    raise ValueError(f'{config.model.name} has a stem transformers\' ResNet does not build')
  depths = list(spec['stage_sizes'])
  width = spec.get('width', 64)
  bottleneck = spec['block'] == 'bottleneck'
  hidden = [width * 2**i * (4 if bottleneck else 1) for i in range(len(depths))]
  model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
      embedding_size=width, hidden_sizes=hidden, depths=depths,
      layer_type='bottleneck' if bottleneck else 'basic', num_labels=config.model.num_classes,
      downsample_in_bottleneck=False)).to(device)
  from benchmarks import torch_optimizers
  opt = config.optimizer
  optimizer = torch_optimizers.Lars(model.parameters(), lr=0.1, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay, eps=opt.epsilon,
                                    trust_coefficient=opt.trust_coefficient, nesterov=opt.nesterov)
  return TorchStep(model, optimizer, _images(config, batch, device, torch.Generator().manual_seed(0)))


def torch_regnet(config, batch: int, device: str) -> TorchStep:
  """transformers' RegNet with podium's (pycls's) widths, depths and group width; SGD with
  Nesterov momentum, pycls's optimizer, as podium's RegNet recipes use."""
  import torch
  import transformers
  from models import regnet as regnet_models
  params = regnet_models.REGNET_CONFIGS[config.model.name]
  stages = regnet_models.stages(params)
  model = transformers.RegNetForImageClassification(transformers.RegNetConfig(
      embedding_size=params.stem_width, hidden_sizes=[s.width for s in stages],
      depths=[s.depth for s in stages], groups_width=params.group_width,
      layer_type='y' if params.se_ratio else 'x', hidden_act='relu',
      downsample_in_first_stage=True, num_labels=config.model.num_classes)).to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=5e-5)
  return TorchStep(model, optimizer, _images(config, batch, device, torch.Generator().manual_seed(0)))


def torch_bert(config, batch: int, device: str) -> TorchStep:
  """transformers' BertForPreTraining with podium's config, and MLPerf's loss as podium
  computes it: the masked-LM head on the masked positions only (gathered, as the MLPerf
  reference does; BertForPreTraining alone would run the 30k-word head on every position),
  weighted masked-LM cross-entropy plus next-sentence cross-entropy; podium's LAMB
  (`torch_optimizers.Lamb`: clipping, Adam, decay and trust ratio with MLPerf's exclusions)."""
  import torch
  import transformers
  from benchmarks import bert as bert_benchmark
  from input_pipelines import bert_pretraining
  c = bert_benchmark.model_config(config)
  activation = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu'}[c.hidden_act]
  reference = transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
      hidden_act=activation, hidden_dropout_prob=c.hidden_dropout,
      attention_probs_dropout_prob=c.attention_dropout,
      max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
      layer_norm_eps=c.layer_norm_eps))

  class MlperfLoss(torch.nn.Module):
    def __init__(self, model):
      super().__init__()
      self.model = model

    def forward(self, input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,
                masked_lm_weights, next_sentence_labels):
      out = self.model.bert(input_ids=input_ids, attention_mask=input_mask,
                            token_type_ids=segment_ids)
      sequence, pooled = out[0], out[1]
      index = masked_lm_positions.unsqueeze(-1).expand(-1, -1, sequence.shape[-1])
      mlm_logits = self.model.cls.predictions(torch.gather(sequence, 1, index))
      nsp_logits = self.model.cls.seq_relationship(pooled)
      mlm_ce = torch.nn.functional.cross_entropy(
          mlm_logits.flatten(0, 1).float(), masked_lm_ids.flatten(), reduction='none')
      weights = masked_lm_weights.flatten()
      mlm = torch.sum(weights * mlm_ce) / (torch.sum(weights) + 1e-5)
      return mlm + torch.nn.functional.cross_entropy(nsp_logits.float(), next_sentence_labels)

  model = MlperfLoss(reference).to(device)
  data = config.data
  host = bert_pretraining.synthetic_batch(batch, data.max_seq_length, data.max_predictions_per_seq,
                                          c.vocab_size, config.seed)
  inputs = {key: torch.as_tensor(np.asarray(value)).to(device) for key, value in host.items()}
  for key in inputs:
    if key != 'masked_lm_weights':
      inputs[key] = inputs[key].long()
  from benchmarks import optimizers, torch_optimizers
  opt = config.optimizer
  optimizer = torch_optimizers.Lamb(
      model.named_parameters(), lr=1e-4, betas=(opt.beta_1, opt.beta_2), eps=opt.epsilon,
      weight_decay=opt.weight_decay, exclude=optimizers.BERT_EXCLUDE_FROM_WEIGHT_DECAY,
      clip_norm=opt.clip_norm or None)
  return TorchStep(model, optimizer, inputs, loss_of=lambda loss: loss)


def transformers_wav2vec2_config(c, **extra):
  """A transformers Wav2Vec2Config of podium's `models.wav2vec2.Wav2Vec2Config` (the inverse
  of the importer's `config_from_transformers`)."""
  import transformers
  return transformers.Wav2Vec2Config(
      conv_dim=list(c.conv_dim), conv_kernel=list(c.conv_kernel), conv_stride=list(c.conv_stride),
      conv_bias=c.conv_bias, feat_extract_norm=c.feature_norm,
      do_stable_layer_norm=c.stable_layer_norm, hidden_size=c.hidden_size,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
      intermediate_size=c.intermediate_size, layer_norm_eps=c.layer_norm_eps,
      num_conv_pos_embeddings=c.num_conv_pos_embeddings,
      num_conv_pos_embedding_groups=c.num_conv_pos_embedding_groups,
      num_codevector_groups=c.num_codevector_groups,
      num_codevectors_per_group=c.num_codevectors_per_group, codevector_dim=c.codevector_dim,
      proj_codevector_dim=c.proj_codevector_dim,
      contrastive_logits_temperature=c.contrastive_temperature, hidden_dropout=c.hidden_dropout,
      attention_dropout=c.attention_dropout, activation_dropout=c.activation_dropout,
      feat_proj_dropout=c.feat_proj_dropout, feat_quantizer_dropout=c.feat_quantizer_dropout,
      final_dropout=c.final_dropout, layerdrop=c.layerdrop, vocab_size=c.vocab_size,
      initializer_range=c.initializer_range, **extra)


def torch_wav2vec2(config, batch: int, device: str) -> TorchStep:
  """transformers' Wav2Vec2ForPreTraining with podium's config: contrastive loss over the
  same span masks (mask_prob, mask_length) and distractor count, plus the diversity loss
  with podium's weight; Adam with decoupled weight decay, as podium's. The masks and
  distractors are drawn once outside the step (podium draws them inside its step)."""
  import torch
  from transformers.models.wav2vec2 import modeling_wav2vec2 as hf
  from benchmarks import wav2vec2 as w2v_benchmark
  c = w2v_benchmark.model_config(config)
  loss = config.loss
  model = hf.Wav2Vec2ForPreTraining(transformers_wav2vec2_config(
      c, num_negatives=loss.num_negatives, diversity_loss_weight=loss.diversity_weight,
      mask_time_prob=loss.mask_prob, mask_time_length=loss.mask_length)).to(device)
  samples = config.data.bucket_lengths[-1]
  frames = c.num_frames(samples)
  rng = np.random.default_rng(config.seed)
  np.random.seed(config.seed)  # transformers' mask helpers draw from numpy's global state
  mask = hf._compute_mask_indices((batch, frames), mask_prob=loss.mask_prob,
                                  mask_length=loss.mask_length, min_masks=loss.min_masks)
  negatives = hf._sample_negative_indices((batch, frames), loss.num_negatives, mask)
  inputs = {'input_values': torch.as_tensor(rng.standard_normal((batch, samples), np.float32)),
            'mask_time_indices': torch.as_tensor(mask), 'sampled_negative_indices':
            torch.as_tensor(negatives).long()}
  inputs = {key: value.to(device) for key, value in inputs.items()}
  opt = config.optimizer
  optimizer = torch.optim.AdamW(model.parameters(), lr=opt.learning_rate,
                                betas=(opt.beta_1, opt.beta_2), eps=opt.epsilon,
                                weight_decay=opt.weight_decay)
  return TorchStep(model, optimizer, inputs)


def torch_step(case: BenchCase, *, batch: int, dtype: str, quick: bool, compiled: bool,
               threads: int | None, overrides: tuple[str, ...] = ()) -> Measured:
  """The PyTorch twin's train step: forward, loss, backward, optimizer step; train mode.
  bfloat16 is autocast over float32 parameters, podium's mixed precision."""
  import torch
  if threads:
    torch.set_num_threads(threads)
  config = _config(case, quick=quick, extra=overrides)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  built = case.torch_step(config, batch, device)
  built.model.train()
  model = torch.compile(built.model) if compiled else built.model
  autocast = dtype != 'float32'

  def step():
    built.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=_torch_dtype(dtype), enabled=autocast):
      loss = built.loss_of(model(**built.inputs))
    loss.backward()
    built.optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  step()  # the first step compiles under torch.compile
  return Measured(step, {'first_step_s': time.perf_counter() - start,
                         'threads': torch.get_num_threads(), 'device': device,
                         'torch': torch.__version__})


# -- where the time goes -------------------------------------------------------------------

def op_profile(step: Callable[[], None], trace_dir: str, *, steps: int = 2, top: int = 12) -> list[dict]:
  """The XLA ops that take the most time in `steps` steps, from a jax.profiler trace.

  The trace (TensorBoard's profile plugin reads it) is written under `trace_dir`; its
  per-op events are summed by name here with the XPlane protobuf that TensorFlow ships.
  Op instances are summed by kind (`convolution.12` -> `convolution`), in thread time: on
  XLA:CPU's executor and intra-op threads. Returns [{'op', 'ms_per_step', 'share'}],
  largest first ([] if TensorFlow's protobuf module is missing).
  """
  import collections
  import glob
  import jax
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      step()
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
  except ImportError:
    return []
  import re
  totals = collections.Counter()
  for path in glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True):
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    for plane in space.planes:
      names = {key: meta.name for key, meta in plane.event_metadata.items()}
      for line in plane.lines:
        if not line.name.startswith('tf_XLA'):  # XLA:CPU's executor and Eigen pool threads
          continue
        for event in line.events:
          name = names.get(event.metadata_id, '')
          if not name or name.startswith(('end: ', 'ThreadpoolListener', 'ThunkExecutor')):
            continue
          totals[re.sub(r'\.\d+$', '', name)] += event.duration_ps  # op kinds, not instances
  whole = sum(totals.values()) or 1
  return [{'op': name, 'ms_per_step': ps / 1e9 / steps, 'share': ps / whole}
          for name, ps in totals.most_common(top)]


# -- side by side --------------------------------------------------------------------------

def interleaved(steps: dict[str, Callable[[], None]], *, rounds: int, per_round: int,
                warmup: int) -> dict[str, list[list[float]]]:
  """Step times of each variant, taken in alternating rounds (A B C A B C ...): a burst of
  load on a shared machine then falls on every variant, not on one."""
  for step in steps.values():
    for _ in range(warmup):
      step()
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      _, taken = _median_time(step, per_round, 0)
      times[name].append(taken)
  return times


def _summary(rounds: list[list[float]], batch: int) -> dict:
  flat = [t for block in rounds for t in block]
  median = statistics.median(flat)
  return {'step_s': median, 'step_times_s': flat, 'examples_per_s': batch / median,
          'round_medians_s': [statistics.median(block) for block in rounds]}


def bench_model(case: BenchCase, *, batch: int, dtype: str, rounds: int, per_round: int,
                warmup: int, torch_modes: tuple[str, ...], quick: bool,
                trace_dir: str | None = None, overrides: tuple[str, ...] = ()) -> dict:
  """podium and its PyTorch twins on one model, built once each and timed interleaved;
  with `trace_dir`, then a profile of podium's step (`op_profile`)."""
  import gc
  label = case.quick_input if quick else (
      case.accelerator_input if case.accelerator and _on_accelerator() else case.input)
  row = {'model': case.name, 'dtype': dtype, 'batch': batch, 'unit': case.unit,
         'input': label, 'twin': case.twin, 'overrides': list(overrides)}
  progress(f'{case.name}: podium compile ...')
  podium = podium_step(case, batch=batch, dtype=dtype, quick=quick, overrides=overrides)
  steps = {'podium': podium.step}
  infos = {'podium': podium.info}
  for mode in (torch_modes if case.torch_step is not None else ()):
    key = f'torch_{mode}'
    progress(f'{case.name}: {key} build ...')
    try:
      measured = torch_step(case, batch=batch, dtype=dtype, quick=quick,
                            compiled=mode == 'compile', threads=podium.info['threads'],
                            overrides=overrides)
    except Exception as error:  # noqa: BLE001 -- a missing compiler is a table cell
      row[key] = None
      row[f'{key}_error'] = f'{type(error).__name__}: {error}'[:500]
      continue
    steps[key], infos[key] = measured.step, measured.info
  progress(f'{case.name}: timing {", ".join(steps)} in {rounds} interleaved rounds ...')
  times = interleaved(steps, rounds=rounds, per_round=per_round, warmup=warmup)
  for key, rounds_taken in times.items():
    info = dict(infos[key])
    flops = info.pop('flops', None)
    row[key] = dict(info, **_summary(rounds_taken, batch))
    if flops is not None:
      step_s = row[key]['step_s']
      row[key]['achieved_flops_per_device'] = (
          flops.achieved_per_device(step_s) if flops.model_flops else None)
      row[key]['mfu'] = flops.mfu(step_s)
  for key in times:
    if key != 'podium':
      # Per round, podium's and the twin's medians were taken within seconds of each other.
      ratios = [t / p for p, t in zip(row['podium']['round_medians_s'], row[key]['round_medians_s'])]
      row[f'ratio_vs_{key}'] = row[key]['step_s'] / row['podium']['step_s']
      row[f'round_ratios_vs_{key}'] = ratios
  if trace_dir:
    row['podium']['top_ops'] = op_profile(podium.step, os.path.join(trace_dir, case.name))
  podium.close()
  del steps, podium
  gc.collect()
  return row


# -- tables --------------------------------------------------------------------------------

def _cell(value, spec: str, suffix: str = '') -> str:
  return 'n/a' if value is None else format(value, spec) + suffix


def _rate(row: dict, key: str):
  return (row.get(key) or {}).get('examples_per_s')


def markdown(results: dict) -> str:
  """The MoveNet-style table per device (model, dtype, batch, examples/s, MFU, device),
  PyTorch's eager and torch.compile beside podium, and podium / PyTorch."""
  lines = []
  if results['models']:
    lines += ['| model | dtype | batch | input | podium ex/s | PyTorch eager ex/s | torch.compile '
              'ex/s | podium / eager | podium / compile | MFU | step memory | compile s | device |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for row in results['models']:
    podium = row['podium']
    mfu = None if podium.get('mfu') is None else 100 * podium['mfu']
    memory = podium.get('step_memory_bytes')
    lines.append('| ' + ' | '.join([
        row['model'], row['dtype'], str(row['batch']), row.get('input', ''),
        _cell(podium['examples_per_s'], '.2f'), _cell(_rate(row, 'torch_eager'), '.2f'),
        _cell(_rate(row, 'torch_compile'), '.2f'),
        _cell(row.get('ratio_vs_torch_eager'), '.2f', 'x'),
        _cell(row.get('ratio_vs_torch_compile'), '.2f', 'x'), _cell(mfu, '.1f', '%'),
        _cell(memory and memory / 2**30, '.2f', ' GiB'), _cell(podium['compile_s'], '.0f'),
        results['device']]) + ' |')
  if results['models']:
    threads = {row['model']: (row['podium'].get('threads'),
                              (row.get('torch_eager') or row.get('torch_compile') or {}).get('threads'))
               for row in results['models']}
    lines += ['', f'{results["device"]} ({results.get("host", "")}, {results.get("cores")} cores), '
              f'jax {results.get("jax")}, torch {results.get("torch", "n/a")}; threads (XLA / '
              f'PyTorch): ' + ', '.join(f'{m} {x}/{t}' for m, (x, t) in threads.items())
              + f'; load average at start {results.get("load_average", "n/a")}. Medians of '
              f'{results.get("timing", "")}; podium / PyTorch is the ratio of examples/s.']
    for row in results['models']:
      if row.get('twin'):
        lines.append(f'- {row["model"]}: {row["twin"]}')
      if row.get('overrides'):
        lines.append(f'- {row["model"]}: measured with {", ".join(row["overrides"])}')
      if row['podium'].get('top_ops'):
        lines.append(f'- {row["model"]} podium profile (thread time per step): ' + ', '.join(
            f'{op["op"]} {op["ms_per_step"]:.0f} ms ({100 * op["share"]:.0f}%)'
            for op in row['podium']['top_ops'][:5]))
      for key in ('torch_eager', 'torch_compile'):
        if row.get(f'{key}_error'):
          lines.append(f'- {row["model"]} {key}: not measured ({row[f"{key}_error"]})')
  for note in results.get('notes', ()):
    lines.append(f'- {note}')
  lines += bench_pipelines.markdown(results.get('pipelines'))
  return '\n'.join(lines) + '\n'


def plot(results: dict, path: Path) -> None:
  """podium's examples/s relative to PyTorch eager per model (1.0 = parity), so models of
  very different speeds share one axis; the absolute numbers are in the table."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = results['models']
  names = [row['model'] for row in rows]
  series = {'podium': 'podium', 'PyTorch eager': 'torch_eager', 'torch.compile': 'torch_compile'}
  fig, ax = plt.subplots(figsize=(7, 3.5))
  width = 0.8 / len(series)
  for i, (label, key) in enumerate(series.items()):
    values = [(_rate(row, key) or 0) / (_rate(row, 'torch_eager') or _rate(row, 'podium'))
              for row in rows]
    bars = ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
    ax.bar_label(bars, labels=[_cell(_rate(row, key), '.2f') for row in rows], fontsize=7)
  ax.axhline(1.0, color='grey', linewidth=0.8, linestyle='--')
  ax.set_xticks(np.arange(len(names)) + width, names)
  ax.set_ylabel('examples/s relative to PyTorch eager')
  ax.set_title(f'train step throughput on {results["device"]} (bar labels: examples/s)',
               fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# -- the command ---------------------------------------------------------------------------

_BERT_BASE = ('model.vocab_size=30522', 'model.hidden_size=768', 'model.num_layers=12',
              'model.num_heads=12', 'model.intermediate_size=3072',
              'model.max_position_embeddings=512', 'model.hidden_dropout=0.1',
              'model.attention_dropout=0.1', 'log_every_steps=1000')
_WAV2VEC2_BASE = ('model.name=base', 'model.hidden_dropout=0.1', 'model.attention_dropout=0.1',
                  'model.feat_proj_dropout=0.1', 'model.feat_quantizer_dropout=0.1',
                  'model.layerdrop=0.0', 'loss.feature_penalty_weight=10.0',
                  'log_every_steps=1000')

CASES = {
    'resnet50': BenchCase(
        'resnet50', 'resnet50', 'digits_cpu',
        ('model.name=resnet50', 'model.num_classes=1000', 'data.image_size=224',
         'data.eval_resize=256', 'log_every_steps=1000'),
        'images', '224x224', torch_resnet, cpu_batch=4,
        quick=('model.name=resnet18', 'data.image_size=32', 'data.eval_resize=32'),
        quick_input='resnet18 32x32',
        twin='transformers ResNetForImageClassification (same depths, widths, classes); '
             'podium\'s LARS written for PyTorch (multi-tensor; tested equal to optax\'s).'),
    'regnet': BenchCase(
        'regnet', 'regnet', 'digits_cpu',
        ('model.name=regnety_1_6gf', 'model.num_classes=1000', 'data.image_size=224',
         'data.eval_resize=256', 'log_every_steps=1000'),
        'images', 'RegNetY-1.6GF 224x224', torch_regnet,
        quick=('model.name=regnety_tiny', 'data.image_size=32', 'data.eval_resize=32'),
        quick_input='regnety_tiny 32x32',
        twin='transformers RegNetForImageClassification (pycls widths, depths, group width, '
             'SE); SGD with Nesterov momentum, as podium (pycls).'),
    'bert': BenchCase(
        'bert', 'bert', 'tiny_cpu',
        (*_BERT_BASE, 'data.max_seq_length=128', 'data.max_predictions_per_seq=20'),
        # CPU batch 8: at 2, matmuls were 14% of podium's step and LAMB over 110 M parameters
        # most of the rest, which says little about training at scale. Accelerator batch
        # 16: what fits on an 80 GB H100 beside both PyTorch twins at sequence 512.
        'sequences', 'BERT-base seq 128', torch_bert, cpu_batch=8, accelerator_batch=16,
        accelerator=('model.hidden_size=1024', 'model.num_layers=24', 'model.num_heads=16',
                     'model.intermediate_size=4096', 'data.max_seq_length=512',
                     'data.max_predictions_per_seq=76'),
        accelerator_input='BERT-large seq 512',
        quick=('model.vocab_size=512', 'model.hidden_size=64', 'model.num_layers=2',
               'model.num_heads=2', 'model.intermediate_size=128', 'data.max_seq_length=32',
               'data.max_predictions_per_seq=4'),
        quick_input='2 layers, seq 32',
        twin='transformers BertForPreTraining (bert + cls heads), masked-LM head on the '
             'gathered masked positions as in MLPerf, MLM + NSP loss; podium\'s LAMB written '
             'for PyTorch (multi-tensor; tested equal to optax\'s).'),
    'wav2vec2': BenchCase(
        'wav2vec2', 'wav2vec2_pretrain', 'espeak_cpu',
        (*_WAV2VEC2_BASE, 'data.bucket_lengths=(32000,)'),
        'utterances', 'BASE, 2 s audio', torch_wav2vec2, cpu_batch=4, accelerator_batch=6,
        accelerator=('data.bucket_lengths=(250000,)',),
        accelerator_input='BASE, 15.6 s audio (fairseq crop)',
        quick=('model.name=tiny', 'data.bucket_lengths=(4000,)', 'loss.num_negatives=10'),
        quick_input='tiny, 0.25 s',
        twin='transformers Wav2Vec2ForPreTraining: contrastive (100 distractors) + diversity '
             'loss over the same span masks (podium also adds the feature penalty); AdamW; '
             'layerdrop off in both so that every step does the same work.'),
}


# What the profiles of podium's CPU steps found, and what was done (the table's notes).
CPU_NOTES = (
    'XLA flags: the same as `podium run` (launch/xla_flags.py): XLA:CPU\'s YNNPACK '
    'convolution and elementwise fusions off (conv nets 2-5x faster here), its reduce and '
    'dot fusions on (BERT-base 1.05x, wav2vec2 1.06x; conv nets within 2%).',
    'Optimizers: both sides run the same update (podium\'s LARS for ResNet, LAMB for BERT, '
    'written for PyTorch in benchmarks/torch_optimizers.py and tested equal to optax\'s).',
    'Dropout masks (BERT and wav2vec2 share models/layers.dropout): RngBitGenerator bits, 16 '
    'per element (each 32-bit word decides two); the bits are the mask\'s whole cost on '
    'XLA:CPU (10.6 -> 6.0 ms per [8, 128, 768] mask; wav2vec2 BASE\'s step 7.18 -> 7.00 s '
    'against threefry Bernoulli bits).',
    'Grouped convolutions (RegNet\'s 3x3 group convs, wav2vec2\'s positional conv): XLA:CPU '
    'computes their kernel gradient as a batch-group convolution outside its fast conv '
    'kernels, 10-45x slower than PyTorch (RegNetY-1.6GF at batch 8: 1.5-4.5 s per layer). '
    'podium now computes it on CPU as one batched matmul of input patches '
    '(models/layers.grouped_conv_general_dilated; TPU and GPU keep XLA\'s own): 0.1-0.2 s per '
    'layer, and 6.2 -> 3.6 s for wav2vec2 BASE\'s positional conv at batch 8. The patches '
    'are strided slices of the padded input: lax.conv_general_dilated_patches extracts them '
    'with a depthwise convolution, which took 45% of RegNet\'s step (RegNet 1.92 -> 2.97 '
    'images/s). For windows of up to 9 positions (RegNet\'s 3x3) it is one matmul per '
    'position over its strided view, no stacked patch array: RegNet\'s step 3.14 -> 2.76 s.',
    'BatchNorm (ResNet, RegNet): podium\'s BatchNorm (models/layers.batch_norm_train) has a '
    'hand-written backward, four plain reductions and two elementwise passes: one '
    '4x112x112x64 BatchNorm forward + backward 12.7 ms against 27.0 ms through autodiff.',
    'What remains on XLA:CPU (ResNet-50 profile, thread time of the ops its trace names; '
    'convolutions are barely attributed there): transposes feeding the kernel-gradient '
    'convolutions are half of it, and XLA fuses a recomputation of the residual stream\'s '
    'BatchNorms into them. Tried without gain: 1x1 '
    'kernel gradients as matmuls, an optimization barrier on convolution inputs. PyTorch runs '
    'oneDNN\'s fused kernels for both. RegNet (named ops, before the '
    'per-position kernel gradient): transposes 32%, YNN dot fusions 23%, the kernel-gradient '
    'patches\' stack 16% and strided slices 9%.',
    'float32 on CPU: bfloat16 gains nothing on this CPU (no bf16 matmul units) in either '
    'framework.',
)


def run(models: list[str] | None = None, *, batch: int | None = None, dtype: str | None = None,
        rounds: int = 3, per_round: int = 1, warmup: int = 1, out_dir: str = 'bench',
        torch_modes: tuple[str, ...] = ('eager', 'compile'), pipelines: bool = True,
        quick: bool = False, profile: bool = False, overrides: tuple[str, ...] = ()) -> dict:
  """Measures `models` (default: all) and the input pipelines; writes bench.json, bench.md,
  bench.png under `out_dir`.

  Each model's podium and PyTorch steps are timed in `rounds` interleaved rounds of
  `per_round` steps after `warmup` steps each. `dtype` defaults to float32 on a CPU and
  bfloat16 on an accelerator. `quick` shrinks models and inputs to check the machinery,
  not to quote numbers. `overrides` (KEY=VALUE) change every model's config, podium's and
  PyTorch's alike (e.g. model.attention=cudnn). `profile` traces podium's steps into `out_dir`/trace/<model> and
  lists the costliest XLA ops in the table's notes."""
  global _STARTED
  _STARTED = time.perf_counter()
  models = list(CASES) if models is None else models
  unknown = sorted(set(models) - set(CASES))
  if unknown:
    from benchmarks.config import ConfigError
    raise ConfigError(f'podium bench: unknown model(s) {unknown}; valid: {", ".join(CASES)}')
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  import jax
  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  dtype = dtype or ('float32' if on_cpu else 'bfloat16')
  results = {'device': f'{device.device_kind} x1' if not on_cpu else f'CPU ({device.device_kind})',
             'host': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
             'jax': jax.__version__, 'started': time.strftime('%Y-%m-%dT%H:%M:%S'),
             'load_average': ' '.join(f'{x:.2f}' for x in os.getloadavg()),
             'xla_flags': os.environ.get('XLA_FLAGS', ''),
             'timing': f'{rounds} interleaved rounds x {per_round} steps after {warmup} warm-up',
             'models': [], 'notes': list(CPU_NOTES) if on_cpu and not quick else []}
  busy = os.getloadavg()[0]
  if on_cpu and busy > 0.5 * (os.cpu_count() or 1):
    # Seen here: under load ~3.7 on 2 cores PyTorch's eager step ran 5.7x slower than alone,
    # XLA's ~2x; interleaving cannot undo that. The table says so.
    results['notes'].insert(0, f'The machine was busy at the start (load {busy:.1f} on '
                               f'{os.cpu_count()} cores): podium / PyTorch ratios taken under '
                               'load have been off by up to 3x here; measure alone.')
  if torch_modes:
    import torch
    results['torch'] = torch.__version__
  for name in models:
    case = CASES[name]
    size = batch or (case.cpu_batch if on_cpu else case.accelerator_batch)
    if quick and not batch:
      size = 2
    results['models'].append(bench_model(
        case, batch=size, dtype=dtype, rounds=rounds, per_round=per_round, warmup=warmup,
        torch_modes=torch_modes, quick=quick,
        trace_dir=str(out / 'trace') if profile else None, overrides=tuple(overrides)))
    _write(results, out)  # what is measured so far survives a later failure
  if pipelines:
    results['pipelines'] = bench_pipelines.run(
        str(out), quick=quick,
        model_rates={row['model']: row['podium']['examples_per_s'] for row in results['models']})
  _write(results, out)
  if results['models']:
    plot(results, out / 'bench.png')
  progress('done')
  return results


def _write(results: dict, out: Path) -> None:
  (out / 'bench.json').write_text(json.dumps(results, indent=2) + '\n')
  (out / 'bench.md').write_text(markdown(results))
