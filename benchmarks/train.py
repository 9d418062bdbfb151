"""The time-to-train loop: one trainer for every benchmark, readable top to bottom.

init_start -> build and shard the state -> compile train and eval steps -> warm up ->
init_stop, run_start -> [train block -> eval] ... -> run_stop (success at the first eval that
reaches the target; aborted at the recipe's limit or on any failure).

The hot loop is a pure function under `jax.jit` over the split NNX state with donated
buffers; metrics are read one step behind so the host never waits on the device; only
process 0 writes the MLPerf log, TensorBoard events and the result record.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers
from flax import nnx
from mlperf_logging.mllog import constants as C

from benchmarks import flops as flops_lib
from benchmarks import system_info
from benchmarks.task import Task
from launch.runtime import Runtime
from results.layout import SubmissionLayout
from results.mllog import MLPerfLogger
from results import record as result_record


@dataclasses.dataclass
class RunResult:
  status: str                      # 'success' or 'aborted'
  quality: float | None            # last eval's quality metric
  target: float
  progress: float                  # epochs (or samples) trained
  time_to_train_s: float | None
  init_s: float
  examples_per_s: float | None
  log_path: str | None
  record_path: str | None
  eval_curve: list = dataclasses.field(default_factory=list)
  state: Any = None                # the final train state (params, model_state, opt_state, step)


class RunAborted(RuntimeError):
  """Training stopped before reaching the target for a reason the user must see."""


def _abstract_split(task: Task, seed: int):
  model = nnx.eval_shape(lambda: task.create_model(nnx.Rngs(seed)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def build_state_fns(task: Task, runtime: Runtime, seed: int):
  """Init, train-step and eval-step functions with their shardings.

  The state is a plain dict of pytrees: {'step', 'params', 'model_state', 'opt_state'};
  `model_state` holds everything that is not a parameter (BatchNorm statistics).
  """
  graphdef, abstract_params, abstract_rest = _abstract_split(task, seed)
  tx = task.optimizer()
  param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
  rest_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_rest))
  param_shardings = runtime.tree_shardings(nnx.to_pure_dict(abstract_params), param_specs)

  def init():
    model = task.create_model(nnx.Rngs(seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return {'step': jnp.zeros((), jnp.int32), 'params': params,
            'model_state': nnx.to_pure_dict(rest), 'opt_state': tx.init(params)}

  abstract_state = jax.eval_shape(init)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state['opt_state'], param_shardings,
      transform_non_params=lambda _: runtime.replicated())
  state_shardings = {'step': runtime.replicated(), 'params': param_shardings,
                     'model_state': runtime.tree_shardings(nnx.to_pure_dict(abstract_rest), rest_specs),
                     'opt_state': opt_shardings}

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state['step'])

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state['model_state'])
      loss, metrics = task.loss(model, batch, rng)
      return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics, loss=loss, learning_rate=task.learning_rate(state['step']))
    return {'step': state['step'] + 1, 'params': params, 'model_state': model_state,
            'opt_state': opt_state}, metrics

  def eval_sums(state, batch):
    return task.eval_sums(nnx.merge(graphdef, state['params'], state['model_state']), batch)

  def eval_step(state, batch, sums):
    return jax.tree.map(jnp.add, sums, eval_sums(state, batch))

  def zero_sums(state, batch):
    shapes = jax.eval_shape(eval_sums, state, batch)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  return init, train_step, eval_step, zero_sums, state_shardings


class _Progress:
  """One line of progress: step, ETA, step time, throughput, MFU, data wait, last eval."""

  def __init__(self, total_steps: int, global_batch: int, unit: str, enabled: bool,
               step_flops: flops_lib.StepFlops):
    self.total_steps, self.global_batch, self.unit, self.enabled = total_steps, global_batch, unit, enabled
    self.step_flops = step_flops
    self.last_eval = ''
    self.tty = enabled and sys.stdout.isatty()

  def show(self, step, step_time, data_share, metrics, progress):
    if not self.enabled:
      return
    eta = (self.total_steps - step) * step_time
    line = (f'step {step}/{self.total_steps} | {self.unit} {progress:.2f} | loss {metrics["loss"]:.4f}'
            f' | {step_time * 1e3:.1f} ms/step | {self.global_batch / step_time:,.0f} ex/s'
            f'{self._mfu(step_time)} | data {100 * data_share:.0f}% | ETA {_hms(eta)}{self.last_eval}')
    print(('\r' + line + '\x1b[K') if self.tty else line, end='' if self.tty else '\n', flush=True)

  def _mfu(self, step_time):
    mfu = self.step_flops.mfu(step_time)
    achieved = self.step_flops.achieved_per_device(step_time)
    return f' | {achieved / 1e12:.3g} TFLOP/s/dev' + (f' MFU {100 * mfu:.1f}%' if mfu is not None else '')

  def eval(self, quality_name, quality, progress):
    self.last_eval = f' | eval {quality_name} {quality:.4f} @ {self.unit} {progress:g}'
    if self.enabled:
      print(('\r\x1b[K' if self.tty else '') + f'eval {quality_name} {quality:.4f} at {self.unit} {progress:g}', flush=True)


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _prefetch_to_device(batches: Iterator[dict], runtime: Runtime, size: int, wait: list):
  """Turns host batches into global device arrays `size` batches ahead; adds host wait time."""
  queue = collections.deque()
  while True:
    start = time.perf_counter()
    try:
      host_batch = next(batches)
    except StopIteration:
      break
    wait[0] += time.perf_counter() - start
    queue.append(runtime.global_batch(host_batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


@dataclasses.dataclass
class CompiledSteps:
  """The compiled train and eval steps, a fresh state, and what they cost."""
  state: Any
  train: Any
  eval: Any
  new_sums: Any
  eval_batch0: Any
  flops: flops_lib.StepFlops
  compile_s: float


@dataclasses.dataclass
class JittedSteps:
  """The state initialiser and the train/eval steps under `jax.jit` with the run's shardings."""
  init: Any
  train: Any
  eval: Any
  new_sums: Any
  state_shardings: Any
  batch_sharding: Any

  def abstract_state(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        jax.eval_shape(self.init), self.state_shardings)

  def global_batch_spec(self, task: Task, *, eval: bool = False):
    """The global batch the step takes (input_spec is per process), split over the batch axes."""
    size = task.global_batch_size if not eval else None
    spec = task.input_spec(eval=eval)
    return {key: jax.ShapeDtypeStruct((size or s.shape[0] * jax.process_count(), *s.shape[1:]),
                                      s.dtype, sharding=self.batch_sharding)
            for key, s in spec.items()}


def jit_steps(task: Task, runtime: Runtime, seed: int) -> JittedSteps:
  """What `run`, `podium compile` and the sharding tests all compile: one definition."""
  # Built outside the mesh context: nnx.eval_shape would read logical names as mesh axes.
  init_fn, train_step, eval_step, zero_sums, state_shardings = build_state_fns(task, runtime, seed)
  batch_sharding, replicated = runtime.batch_sharding(), runtime.replicated()
  return JittedSteps(
      init=jax.jit(init_fn, out_shardings=state_shardings),
      train=jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                    out_shardings=(state_shardings, replicated), donate_argnums=0),
      eval=jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding, replicated),
                   out_shardings=replicated, donate_argnums=2),
      new_sums=jax.jit(zero_sums, out_shardings=replicated),
      state_shardings=state_shardings, batch_sharding=batch_sharding)


def compile_steps(task: Task, runtime: Runtime, seed: int) -> CompiledSteps:
  """Compiles and warms up the train and eval steps on zeros: before run_start, and without
  touching the dataset, which is first read once the clock runs."""
  jitted = jit_steps(task, runtime, seed)
  with runtime.activate():
    start = time.perf_counter()
    state = jitted.init()
    train_batch0 = runtime.global_batch(_zeros(task.input_spec(eval=False)))
    eval_batch0 = runtime.global_batch(_zeros(task.input_spec(eval=True)))
    eval_zero = jitted.new_sums(state, eval_batch0)
    lowered_train = jitted.train.lower(state, train_batch0)
    compiled_train = lowered_train.compile()
    compiled_eval = jitted.eval.lower(state, eval_batch0, eval_zero).compile()
    warm_state, warm_metrics = compiled_train(state, train_batch0)  # donates `state`
    jax.block_until_ready(compiled_eval(warm_state, eval_batch0,
                                        jitted.new_sums(warm_state, eval_batch0)))
    del warm_state, warm_metrics
    state = jitted.init()  # the warm-up consumed (donated) the first one; init is deterministic
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
  compiled_per_device = flops_lib.compiled_flops(compiled_train)
  step_flops = flops_lib.StepFlops(
      # A backend that cannot cost the unpartitioned program gets the compiled count instead.
      model_flops=(flops_lib.lowered_flops(lowered_train)
                   or compiled_per_device * runtime.num_devices),
      num_devices=runtime.num_devices,
      peak=flops_lib.peak_per_device(list(runtime.mesh.devices.flat)),
      compiled_per_device=compiled_per_device)
  return CompiledSteps(state, compiled_train, compiled_eval, jitted.new_sums, eval_batch0,
                       step_flops, compile_s)


def _initialize(config, runtime, task, mllog, layout, system, run_dir, is_main):
  """From init_start up to init_stop: log what the run is, then compile and warm up."""
  mllog.event(C.CACHE_CLEAR, True)
  mllog.start(C.INIT_START)
  # submission_division must come before init_stop: it sets the checker's init time limit.
  mllog.event(C.SUBMISSION_ORG, config.submission.org)
  mllog.event(C.SUBMISSION_DIVISION, config.submission.division)
  mllog.event(C.SUBMISSION_STATUS, config.submission.status)
  mllog.event(C.SUBMISSION_PLATFORM, system)
  mllog.event(C.SUBMISSION_BENCHMARK, task.mlperf_benchmark)
  mllog.event(C.SEED, int(config.seed))
  mllog.event(C.GLOBAL_BATCH_SIZE, task.global_batch_size)
  mllog.event(C.GRADIENT_ACCUMULATION_STEPS, 1)
  mllog.event(C.TRAIN_SAMPLES, task.train_samples)
  mllog.event(C.EVAL_SAMPLES, task.eval_samples)
  for key, value in task.hyperparameters().items():
    mllog.event(key, value)

  if is_main:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    system_info.write_system_json(layout.system_json_path, config, runtime, system)

  blocks = task.blocks()
  steps = compile_steps(task, runtime, int(config.seed))
  return steps, blocks, blocks[-1].end_step


def run(config, runtime: Runtime, task: Task, *, output_root: str | None = None) -> RunResult:
  """Runs one timed training run of `task` and writes its MLPerf log and result record."""
  is_main = runtime.process_index == 0
  output_root = output_root or config.output_dir
  system = system_info.system_name(config, runtime)
  layout = SubmissionLayout(output_root, config.submission.org, system, task.mlperf_benchmark)
  log_path = None
  result_index = None
  if is_main:
    result_index, log_path = layout.reserve_result()
  run_dir = os.path.join(output_root, 'runs', config.benchmark, system, f'result_{result_index}')
  mllog = MLPerfLogger(log_path, enabled=is_main)
  writer = metric_writers.create_default_writer(
      os.path.join(run_dir, 'tensorboard') if is_main else None, just_logging=not is_main,
      asynchronous=True)

  init_wall = time.time()
  try:
    steps, blocks, total_steps = _initialize(config, runtime, task, mllog, layout, system,
                                             run_dir, is_main)
  except BaseException:
    # A run that never started is no result: keep its log beside the results, out of the count.
    _finish(writer, mllog, task)
    if log_path and os.path.exists(log_path):
      os.replace(log_path, f'{log_path}.init_failed')
    raise
  state, compiled_train, compiled_eval = steps.state, steps.train, steps.eval
  new_sums, eval_batch0, step_flops, compile_s = (steps.new_sums, steps.eval_batch0, steps.flops,
                                                  steps.compile_s)
  runtime.sync('init_done')
  mllog.end(C.INIT_STOP)
  init_s = time.time() - init_wall
  mllog.start(C.RUN_START)
  run_start = time.perf_counter()

  status, quality, progress = C.ABORTED, None, 0.0
  eval_curve = []
  progress_line = _Progress(total_steps, task.global_batch_size, task.progress_unit, is_main,
                            step_flops)
  step_times = []
  data_wait = [0.0]
  train_time = eval_time = 0.0
  step = 0
  try:
    batches = _prefetch_to_device(task.train_batches(0), runtime, config.prefetch_batches, data_wait)
    pending = None            # metrics of the step before, read once the next is dispatched
    interval_start, interval_steps, interval_wait = time.perf_counter(), 0, 0.0
    for block in blocks:
      mllog.start(C.BLOCK_START, metadata=dict(block.start_metadata))
      block_start = time.perf_counter()
      while step < block.end_step:
        state, metrics = compiled_train(state, next(batches))
        step += 1
        interval_steps += 1
        if pending is not None and (step % config.log_every_steps == 0 or step == block.end_step):
          values = jax.device_get(pending)
          _check_finite(values, step - 1)
          now = time.perf_counter()
          step_time = (now - interval_start) / interval_steps
          data_share = (data_wait[0] - interval_wait) / max(now - interval_start, 1e-9)
          epoch_now = block.progress * step / block.end_step if block.end_step else 0.0
          step_times.append(step_time)
          progress_line.show(step, step_time, data_share, values, epoch_now)
          mfu = step_flops.mfu(step_time)
          writer.write_scalars(step - 1, dict(
              {k: float(v) for k, v in values.items()},
              step_time_ms=step_time * 1e3, examples_per_s=task.global_batch_size / step_time,
              data_wait_share=data_share, **({'mfu': mfu} if mfu is not None else {})))
          interval_start, interval_steps, interval_wait = now, 0, data_wait[0]
        pending = metrics
      jax.block_until_ready(state)
      train_time += time.perf_counter() - block_start
      mllog.end(C.BLOCK_STOP, metadata=dict(block.start_metadata))

      eval_start = time.perf_counter()
      mllog.start(C.EVAL_START, metadata=dict(block.eval_metadata))
      sums = new_sums(state, eval_batch0)
      for eval_batch in task.eval_batches():
        sums = compiled_eval(state, runtime.global_batch(eval_batch), sums)
      quality = float(task.quality(jax.device_get(sums)))
      progress = block.progress
      mllog.event(C.EVAL_ACCURACY, quality, metadata=dict(block.eval_metadata))
      mllog.end(C.EVAL_STOP, metadata=dict(block.eval_metadata))
      eval_time += time.perf_counter() - eval_start
      eval_curve.append((progress, quality, time.perf_counter() - run_start))
      progress_line.eval(task.quality_name, quality, progress)
      writer.write_scalars(step, {f'eval/{task.quality_name}': quality})
      if quality >= task.target:
        status = C.SUCCESS
        break
  except BaseException as error:
    mllog.end(C.RUN_STOP, metadata={C.STATUS: C.ABORTED})
    _finish(writer, mllog, task)
    _write_record(config, runtime, task, layout, result_index, log_path, C.ABORTED, quality,
                  progress, None, init_s, compile_s, train_time, eval_time, data_wait[0], step,
                  eval_curve, step_flops, step_times, error=f'{type(error).__name__}: {error}')
    raise
  mllog.end(C.RUN_STOP, metadata={C.STATUS: status})
  time_to_train = time.perf_counter() - run_start
  _finish(writer, mllog, task)
  examples_per_s = step * task.global_batch_size / train_time if train_time else None
  record_path = _write_record(config, runtime, task, layout, result_index, log_path, status,
                              quality, progress, time_to_train, init_s, compile_s, train_time,
                              eval_time, data_wait[0], step, eval_curve, step_flops, step_times)
  return RunResult(status=status, quality=quality, target=task.target, progress=progress,
                   time_to_train_s=time_to_train, init_s=init_s, examples_per_s=examples_per_s,
                   log_path=log_path, record_path=record_path, eval_curve=eval_curve,
                   state=state)


def _distribution(values) -> dict | None:
  """Median and spread of the step times measured between progress lines."""
  if not values:
    return None
  values = np.asarray(values)
  return {'median': float(np.median(values)), 'p10': float(np.percentile(values, 10)),
          'p90': float(np.percentile(values, 90)), 'count': int(values.size)}


def _zeros(spec: dict) -> dict:
  return {key: np.zeros(s.shape, s.dtype) for key, s in spec.items()}


def _check_finite(metrics: dict, step: int) -> None:
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise RunAborted(f'the training loss is {loss} at step {step}: stopping (check the learning '
                     f'rate, the data and the dtype)')


def _finish(writer, mllog: MLPerfLogger, task: Task) -> None:
  writer.flush()
  writer.close()
  mllog.close()
  task.close()


def _write_record(config, runtime, task, layout, result_index, log_path, status, quality,
                  progress, time_to_train, init_s, compile_s, train_s, eval_s, data_wait_s,
                  steps, eval_curve, step_flops, step_times, error=None):
  if runtime.process_index != 0 or result_index is None:
    return None
  commit, dirty = result_record.podium_revision()
  record = result_record.ResultRecord(
      benchmark=config.benchmark,
      recipe=config.recipe,
      status=status,
      time_to_train_s=time_to_train,
      init_s=init_s,
      quality_metric=task.quality_name,
      quality_value=quality,
      quality_target=task.target,
      epochs_or_samples_to_converge=progress if status == C.SUCCESS else None,
      progress_unit=task.progress_unit,
      eval_curve=[list(point) for point in eval_curve],
      throughput=(steps * task.global_batch_size / train_s) if train_s else None,
      model_flops_per_step=step_flops.model_flops or None,
      mfu=step_flops.mfu(float(np.median(step_times))) if step_times else None,
      global_batch_size=task.global_batch_size,
      num_devices=runtime.num_devices,
      device_kind=system_info.device_kind(),
      mesh_shape=dict(runtime.mesh.shape),
      config=json.loads(config.to_json_best_effort()),
      versions=system_info.versions(),
      podium_commit=commit,
      podium_dirty=dirty,
      log_path=log_path,
      extra=dict(compile_s=compile_s, train_s=train_s, eval_s=eval_s, data_wait_s=data_wait_s,
                 steps=steps, error=error,
                 step_time_s=_distribution(step_times),
                 compiled_flops_per_device=step_flops.compiled_per_device,
                 peak_flops_per_device=step_flops.peak.flops_per_device if step_flops.peak else None,
                 peak_source=step_flops.peak.source if step_flops.peak else None),
  )
  path = layout.record_path(result_index)
  result_record.write_record(path, record)
  return path
