"""`podium bench`: how fast podium trains on this machine, beside what users would otherwise run.

For each model at a given batch, input size and dtype, on the current device:

  podium    the real train step of the benchmark's task (model, loss, optimizer, donated
            state: what `podium run` runs), on synthetic batches already on the device:
            median step time of N after warm-up, examples/s, compile time, the step's
            memory (XLA's memory analysis), model FLOPs (cost analysis), achieved FLOP/s and
            MFU against the chip table or, on a CPU, a measured matmul rate.
  PyTorch   the same architecture from transformers, same batch and dtype, forward +
            backward + the optimizer step, eager and under torch.compile, on the same device;
            the ratio podium / PyTorch.

and each input pipeline alone, per host core (CPU time, so that other load on the machine
does not enter): the ImageNet train map against the common baseline (decode the whole
JPEG, then crop), on the same records, with the cost per image for sizing TPU hosts.

Writes `bench.json`, `bench.md` (the tables) and `bench.png` under `--out`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


# -- the podium side -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchCase:
  """One model to measure: a podium recipe with overrides, and its PyTorch twin."""
  name: str
  benchmark: str
  recipe: str
  overrides: tuple[str, ...]
  unit: str                                   # what one example is: 'images', 'sequences'
  torch_step: Callable[..., Any] | None = None  # (config, batch, device, dtype) -> TorchStep


def _median_time(step: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times), times


def bench_podium(case: BenchCase, *, batch: int, dtype: str, steps: int, warmup: int,
                 extra: tuple[str, ...] = ()) -> dict:
  import jax
  from benchmarks import registry, train
  from launch import runtime as runtime_lib
  config = registry.resolve(case.benchmark, case.recipe, [
      *case.overrides, 'data.synthetic=True', 'data.prepare=""',
      f'train.global_batch_size={batch}', f'train.eval_batch_size={batch}',
      f'model.dtype={dtype}', *extra])
  runtime = runtime_lib.Runtime.from_config(config)
  task = registry.load_benchmark(case.benchmark).build_task(config, runtime)
  compiled = train.compile_steps(task, runtime, seed=0)
  state = [compiled.state]
  with runtime.activate():
    global_batch = runtime.global_batch(next(task.train_batches(0)))

  def step():
    state[0], metrics = compiled.train(state[0], global_batch)
    jax.block_until_ready(metrics)

  median, times = _median_time(step, steps, warmup)
  memory = compiled.train.memory_analysis()
  step_bytes = None
  if memory is not None:
    step_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  flops = compiled.flops
  task.close()
  return {
      'step_s': median, 'step_times_s': times, 'examples_per_s': batch / median,
      'compile_s': compiled.compile_s, 'step_memory_bytes': step_bytes,
      'model_flops_per_step': flops.model_flops,
      'achieved_flops_per_device': flops.achieved_per_device(median) if flops.model_flops else None,
      'mfu': flops.mfu(median), 'peak_source': flops.peak.source if flops.peak else None,
      'devices': runtime.num_devices,
      'device_kind': runtime.mesh.devices.flat[0].device_kind,
      'platform': runtime.mesh.devices.flat[0].platform,
  }


# -- the PyTorch side ----------------------------------------------------------------------

@dataclasses.dataclass
class TorchStep:
  model: Any
  optimizer: Any
  inputs: dict


def torch_resnet(config, batch: int, device: str, dtype: str) -> TorchStep:
  """transformers' ResNet with podium's depth, width and classes; SGD with momentum (LARS
  has no PyTorch core optimizer; its per-layer norms cost little at ResNet-50's size)."""
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
      downsample_in_bottleneck=False))
  model.to(device=device, dtype=_torch_dtype(dtype)).train()
  size = config.data.image_size
  generator = torch.Generator().manual_seed(0)
  inputs = {
      'pixel_values': torch.randn(batch, 3, size, size, generator=generator).to(device, _torch_dtype(dtype)),
      'labels': torch.randint(0, config.model.num_classes, (batch,), generator=generator).to(device),
  }
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  return TorchStep(model, optimizer, inputs)


def _torch_dtype(dtype: str):
  import torch
  return {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]


def bench_torch(case: BenchCase, *, batch: int, dtype: str, steps: int, warmup: int,
                compiled: bool, extra: tuple[str, ...] = ()) -> dict:
  import torch
  from benchmarks import registry
  config = registry.resolve(case.benchmark, case.recipe, [
      *case.overrides, 'data.synthetic=True', 'data.prepare=""', *extra])
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  built = case.torch_step(config, batch, device, dtype)
  model = torch.compile(built.model) if compiled else built.model

  def step():
    built.optimizer.zero_grad(set_to_none=True)
    loss = model(**built.inputs).loss
    loss.backward()
    built.optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  step()  # the first step compiles under torch.compile
  first_s = time.perf_counter() - start
  median, times = _median_time(step, steps, max(warmup - 1, 0))
  return {'step_s': median, 'step_times_s': times, 'examples_per_s': batch / median,
          'first_step_s': first_s, 'threads': torch.get_num_threads(), 'device': device,
          'torch': torch.__version__}


# -- the input pipelines -------------------------------------------------------------------

def photo_records(out_dir: str, count: int = 256) -> str:
  """ImageNet-format TFRecords of real photographs at ImageNet's typical sizes.

  scikit-learn ships two real photos (427x640); random crops of them, rescaled so the
  shorter side is 333-800 pixels (ImageNet's range; most are 375-500) and re-encoded as
  JPEG quality 90, stand in for ImageNet here. Written by podium's ImageNet writer.
  """
  from PIL import Image
  from sklearn.datasets import load_sample_images
  from input_pipelines import image_records
  if image_records.read_manifest(out_dir):
    return out_dir
  photos = load_sample_images().images
  rng = np.random.default_rng(0)

  def examples():
    for i in range(count):
      photo = photos[i % len(photos)]
      height, width = photo.shape[:2]
      crop_h, crop_w = rng.integers(height // 2, height + 1), rng.integers(width // 2, width + 1)
      top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
      shorter = rng.choice([333, 375, 375, 400, 500, 500, 800])
      scale = shorter / min(crop_h, crop_w)
      image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize(
          (int(crop_w * scale), int(crop_h * scale)), Image.BILINEAR)
      buffer = io.BytesIO()
      image.save(buffer, format='JPEG', quality=90)
      yield image_records.ImageExample(buffer.getvalue(), label=i % 10)

  image_records.write_image_classification_split(out_dir, 'train', examples(), 4, 10)
  image_records.write_image_classification_split(out_dir, 'validation', examples(), 1, 10)
  return out_dir


def bench_imagenet_pipeline(data_dir: str, *, rounds: int = 3) -> dict:
  """Images per second per core of the train map (parse, crop, decode, resize, flip,
  normalize), podium's fused decode-and-crop against decoding the whole JPEG first.

  One tf.data thread each, measured in process CPU time: the number is a core's cost, not
  the wall clock of a machine shared with other work. Rounds alternate the two variants.
  """
  import resource
  import tensorflow as tf
  from input_pipelines import imagenet
  source = imagenet.ImageNetSource.from_dir(data_dir)
  records = tf.data.TFRecordDataset(source.files('train')).cache()
  list(records)  # read once: both variants then decode from memory

  def dataset(pp):
    def decode(index, record):
      image_bytes, label = imagenet._parse(source, record)
      seed = tf.stack([index, index * 7 + 1])
      return imagenet.preprocess_train(image_bytes, seed, pp), label
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return records.repeat(2).enumerate().map(decode, num_parallel_calls=1).with_options(options)

  variants = {'podium (decode_and_crop_jpeg)': imagenet.ImagePreprocessing(),
              'baseline (decode, then crop)': imagenet.ImagePreprocessing(fused_crop=False)}
  rates = {name: [] for name in variants}
  datasets = {name: dataset(pp) for name, pp in variants.items()}
  for ds in datasets.values():
    for _ in ds.take(8):  # builds the pipeline and its kernels outside the measurement
      pass
  for _ in range(rounds):
    for name, ds in datasets.items():
      before = resource.getrusage(resource.RUSAGE_SELF)
      count = sum(1 for _ in ds)
      after = resource.getrusage(resource.RUSAGE_SELF)
      cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
      rates[name].append(count / cpu)
  result = {name: {'images_per_core_s': statistics.median(values),
                   'ms_per_image': 1e3 / statistics.median(values)}
            for name, values in rates.items()}
  podium_rate, baseline_rate = (result[name]['images_per_core_s'] for name in variants)
  result['ratio'] = podium_rate / baseline_rate
  # A TPU v4 host feeds 4 chips at ~3,300 images/s each (MLPerf ResNet-50 rates).
  result['cores_for_tpu_v4_host'] = 4 * 3300 / podium_rate
  return result


# -- tables --------------------------------------------------------------------------------

def _cell(value, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def markdown(results: dict) -> str:
  """The MoveNet-style table (model, dtype, batch, examples/s, MFU, device), PyTorch beside."""
  lines = ['| model | dtype | batch | device | podium ex/s | MFU | compile s | PyTorch eager ex/s '
           '| torch.compile ex/s | podium / best PyTorch |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for row in results['models']:
    podium = row['podium']
    eager = (row.get('torch_eager') or {}).get('examples_per_s')
    compiled = (row.get('torch_compile') or {}).get('examples_per_s')
    best = max((rate for rate in (eager, compiled) if rate), default=None)
    mfu = None if podium.get('mfu') is None else 100 * podium['mfu']
    lines.append('| ' + ' | '.join([
        row['model'], row['dtype'], str(row['batch']), results['device'],
        _cell(podium['examples_per_s'], '.2f'), _cell(mfu, '.1f') + ('%' if mfu else ''),
        _cell(podium['compile_s'], '.0f'), _cell(eager, '.2f'), _cell(compiled, '.2f'),
        _cell(best and podium['examples_per_s'] / best, '.2f') + ('x' if best else '')]) + ' |')
  pipe = results.get('imagenet_pipeline')
  if pipe:
    lines += ['', '| ImageNet train map, one core | images/s | ms/image |', '|---|---|---|']
    for name, value in pipe.items():
      if isinstance(value, dict):
        lines.append(f'| {name} | {value["images_per_core_s"]:.0f} | {value["ms_per_image"]:.2f} |')
    lines.append(f'\npodium / baseline: {pipe["ratio"]:.2f}x per core; a TPU v4 host '
                 f'(4 chips x 3,300 images/s) needs {pipe["cores_for_tpu_v4_host"]:.0f} cores '
                 f'of this CPU for podium\'s pipeline.')
  return '\n'.join(lines) + '\n'


def plot(results: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = results['models']
  names = [row['model'] for row in rows]
  series = {'podium': [row['podium']['examples_per_s'] for row in rows],
            'PyTorch eager': [(row.get('torch_eager') or {}).get('examples_per_s', 0) for row in rows],
            'torch.compile': [(row.get('torch_compile') or {}).get('examples_per_s', 0) for row in rows]}
  fig, ax = plt.subplots(figsize=(7, 3.5))
  width = 0.8 / len(series)
  for i, (label, values) in enumerate(series.items()):
    ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
  ax.set_xticks(np.arange(len(names)) + width, names)
  ax.set_ylabel('training examples / s')
  ax.set_title(f'train step throughput on {results["device"]}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# -- the command ---------------------------------------------------------------------------

CASES = {
    'resnet50': BenchCase('resnet50', 'resnet50', 'digits_cpu',
                          ('model.name=resnet50', 'model.num_classes=1000', 'data.image_size=224',
                           'data.eval_resize=256', 'log_every_steps=1000'),
                          'images', torch_resnet),
}


def run(models: list[str], *, batch: int | None, dtype: str, steps: int, warmup: int,
        out_dir: str, torch_modes: tuple[str, ...] = ('eager', 'compile'),
        pipelines: bool = True, quick: bool = False) -> dict:
  """Measures `models` and the input pipelines; writes bench.json, bench.md, bench.png.

  `quick` shrinks inputs (64x64 images, fewer pipeline records) to check the machinery,
  not to quote numbers."""
  unknown = sorted(set(models) - set(CASES))
  if unknown:
    from benchmarks.config import ConfigError
    raise ConfigError(f'podium bench: unknown model(s) {unknown}; valid: {", ".join(CASES)}')
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  import jax
  results = {'device': f'{jax.devices()[0].device_kind} x{jax.device_count()}',
             'host': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
             'jax': jax.__version__, 'started': time.strftime('%Y-%m-%dT%H:%M:%S'),
             'models': []}
  for name in models:
    case = CASES[name]
    size = batch or (8 if jax.devices()[0].platform == 'cpu' else 256)
    extra = ('data.image_size=64', 'data.eval_resize=64') if quick else ()
    row = {'model': name, 'dtype': dtype, 'batch': size, 'unit': case.unit}
    print(f'podium bench: {name} podium ...', flush=True)
    row['podium'] = bench_podium(case, batch=size, dtype=dtype, steps=steps, warmup=warmup,
                                 extra=extra)
    if case.torch_step is not None:
      for mode in torch_modes:
        key, compiled = f'torch_{mode}', mode == 'compile'
        print(f'podium bench: {name} {key} ...', flush=True)
        try:
          row[key] = bench_torch(case, batch=size, dtype=dtype, steps=steps, warmup=warmup,
                                 compiled=compiled, extra=extra)
        except Exception as error:  # noqa: BLE001 -- a missing compiler is a table cell
          row[key] = None
          row[f'{key}_error'] = f'{type(error).__name__}: {error}'[:500]
    results['models'].append(row)
  if pipelines:
    print('podium bench: ImageNet input pipeline ...', flush=True)
    data = photo_records(str(out / 'photo_records'), count=64 if quick else 256)
    results['imagenet_pipeline'] = bench_imagenet_pipeline(data, rounds=1 if quick else 3)
  (out / 'bench.json').write_text(json.dumps(results, indent=2) + '\n')
  (out / 'bench.md').write_text(markdown(results))
  plot(results, out / 'bench.png')
  return results
