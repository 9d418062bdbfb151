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
from flax import nnx
from mlperf_logging.mllog import constants as C

from benchmarks import checkpointing
from benchmarks import flops as flops_lib
from benchmarks import system_info
from benchmarks.config import ConfigError
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
  resumed: bool = False            # resumed from a checkpoint: not a valid MLPerf time-to-train
  segments: list = dataclasses.field(default_factory=list)


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
  accum = _accumulation_steps(task, runtime)

  def init_from(params):
    model = task.create_model(nnx.Rngs(seed))  # its random parameters are dead code here
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return {'step': jnp.zeros((), jnp.int32), 'params': params,
            'model_state': nnx.to_pure_dict(rest), 'opt_state': tx.init(params)}

  def init():
    model = task.create_model(nnx.Rngs(seed))
    return init_from(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  abstract_state = jax.eval_shape(init)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state['opt_state'], param_shardings,
      transform_non_params=lambda _: runtime.replicated())
  state_shardings = {'step': runtime.replicated(), 'params': param_shardings,
                     'model_state': runtime.tree_shardings(nnx.to_pure_dict(abstract_rest), rest_specs),
                     'opt_state': opt_shardings}

  def gradients(params, model_state, batch, rng):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, model_state)
      loss, metrics = task.loss(model, batch, rng)
      return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))
    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, model_state, dict(metrics, loss=loss)

  def accumulated_gradients(params, model_state, batch, rng):
    # Micro-batch i takes rows i, i+accum, ...: each device's contiguous block of the
    # batch splits in place, so no micro-batch has to move between devices.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

    def body(carry, inputs):
      grad_sum, model_state = carry
      index, micro_batch = inputs
      grads, model_state, metrics = gradients(params, model_state, micro_batch,
                                              jax.random.fold_in(rng, index))
      return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, model_state), metrics = jax.lax.scan(
        body, (zeros, model_state), (jnp.arange(accum), micro))
    return (jax.tree.map(lambda g: g / accum, grad_sum), model_state,
            jax.tree.map(lambda m: m.mean(0), metrics))

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state['step'])
    compute = gradients if accum == 1 else accumulated_gradients
    grads, model_state, metrics = compute(state['params'], state['model_state'], batch, rng)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics, learning_rate=task.learning_rate(state['step']))
    return {'step': state['step'] + 1, 'params': params, 'model_state': model_state,
            'opt_state': opt_state}, metrics

  def eval_sums(state, batch):
    return task.eval_sums(nnx.merge(graphdef, state['params'], state['model_state']), batch)

  def eval_step(state, batch, sums):
    return jax.tree.map(jnp.add, sums, eval_sums(state, batch))

  def zero_sums(state, batch):
    shapes = jax.eval_shape(eval_sums, state, batch)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  return StateFns(init, init_from, train_step, eval_step, zero_sums, state_shardings)


@dataclasses.dataclass
class StateFns:
  init: Any
  init_from: Any          # params -> a fresh state starting from those parameters
  train_step: Any
  eval_step: Any
  zero_sums: Any
  state_shardings: Any


def _accumulation_steps(task: Task, runtime: Runtime) -> int:
  accum = int(task.gradient_accumulation_steps)
  rows_per_shard = task.global_batch_size // runtime.batch_shards
  if accum < 1 or rows_per_shard % accum:
    raise ConfigError(
        f'gradient accumulation over {accum} micro-batches needs each of the '
        f'{runtime.batch_shards} batch shards\' {rows_per_shard} rows to split evenly; use a '
        f'divisor of {rows_per_shard}')
  return accum


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
  abstract_state: Any     # shapes, dtypes and shardings of the state (for restoring)


@dataclasses.dataclass
class JittedSteps:
  """The state initialiser and the train/eval steps under `jax.jit` with the run's shardings."""
  init: Any
  init_from: Any
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
  fns = build_state_fns(task, runtime, seed)
  shardings = fns.state_shardings
  batch_sharding, replicated = runtime.batch_sharding(), runtime.replicated()
  return JittedSteps(
      init=jax.jit(fns.init, out_shardings=shardings),
      init_from=jax.jit(fns.init_from, in_shardings=(shardings['params'],),
                        out_shardings=shardings),
      train=jax.jit(fns.train_step, in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, replicated), donate_argnums=0),
      eval=jax.jit(fns.eval_step, in_shardings=(shardings, batch_sharding, replicated),
                   out_shardings=replicated, donate_argnums=2),
      new_sums=jax.jit(fns.zero_sums, out_shardings=replicated),
      state_shardings=shardings, batch_sharding=batch_sharding)


def compile_steps(task: Task, runtime: Runtime, seed: int) -> CompiledSteps:
  """Compiles and warms up the train and eval steps on zeros: before run_start, and without
  touching the dataset, which is first read once the clock runs."""
  jitted = jit_steps(task, runtime, seed)
  initial = task.initial_params()
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
    # The warm-up consumed (donated) the first state; init is deterministic.
    state = (jitted.init() if initial is None else
             _state_from(jitted, initial, task.initial_model_state()))
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
                       step_flops, compile_s, jitted.abstract_state())


def _state_from(jitted: JittedSteps, initial, model_state=None) -> Any:
  """A fresh state starting from `initial` parameters (host arrays) and, when given, that
  `model_state` (BatchNorm statistics), each placed with its sharding."""
  state = jitted.init_from(_placed(initial, jitted.abstract_state()['params'], 'parameters'))
  if model_state is not None:
    state['model_state'] = _placed(model_state, jitted.abstract_state()['model_state'],
                                   'model state (BatchNorm statistics)')
  return state


def _placed(initial, abstract, what: str) -> Any:
  """Host arrays checked against `abstract` (names, shapes) and placed with its shardings."""
  flat_initial = {jax.tree_util.keystr(path): leaf
                  for path, leaf in jax.tree_util.tree_leaves_with_path(initial)}
  flat_model = {jax.tree_util.keystr(path): leaf
                for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  problems = [f'missing {key}' for key in flat_model if key not in flat_initial]
  problems += [f'unexpected {key}' for key in flat_initial if key not in flat_model]
  problems += [f'{key} has shape {tuple(np.shape(flat_initial[key]))}, the model '
               f'{flat_model[key].shape}' for key in flat_model
               if key in flat_initial and tuple(np.shape(flat_initial[key])) != flat_model[key].shape]
  if problems:
    shown = '; '.join(problems[:8]) + (f'; and {len(problems) - 8} more' if len(problems) > 8 else '')
    raise ConfigError(f'the initial {what} do not fit the model: {shown}')

  def place(host, spec):
    host = np.asarray(host, spec.dtype)
    return jax.make_array_from_callback(spec.shape, spec.sharding, lambda index: host[index])
  return jax.tree.map(place, initial, abstract)


@dataclasses.dataclass
class _Ledger:
  """What the run has done so far: saved with every checkpoint, restored on resume.

  Times are seconds summed over the run's segments (one segment per process lifetime).
  """
  result_index: int
  config_hash: str
  seed: int
  step: int = 0
  evals_done: int = 0
  quality: float | None = None
  progress: float = 0.0
  eval_curve: list = dataclasses.field(default_factory=list)  # [progress, value, s since run_start]
  init_s: float = 0.0          # the first segment's init (compile, warm-up): MLPerf's init
  compile_s: float = 0.0
  train_s: float = 0.0
  eval_s: float = 0.0
  data_wait_s: float = 0.0
  checkpoint_s: float = 0.0
  step_times: list = dataclasses.field(default_factory=list)
  segments: list = dataclasses.field(default_factory=list)
  run_start_wall: float | None = None   # time.time() at the first run_start
  saved_at: float | None = None         # time.time() when this ledger was checkpointed

  def to_json(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_json(cls, data: dict) -> '_Ledger':
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in fields})

  @property
  def resumed(self) -> bool:
    return len(self.segments) > 1


def checkpoint_interval(config, task: Task) -> int:
  """Steps between checkpoints from the recipe's `checkpoint` section; 0 when off."""
  spec = config.checkpoint
  if spec.resume not in ('auto', 'never'):
    raise ConfigError(f"checkpoint.resume={spec.resume!r}; valid: 'auto', 'never'")
  if spec.every_steps < 0 or spec.every_epochs < 0 or spec.keep < 1:
    raise ConfigError(f'checkpoint.every_steps={spec.every_steps}, every_epochs='
                      f'{spec.every_epochs}, keep={spec.keep}: steps and epochs must be >= 0 '
                      f'and keep >= 1')
  if spec.every_steps and spec.every_epochs:
    raise ConfigError('set checkpoint.every_steps or checkpoint.every_epochs, not both')
  if spec.every_epochs:
    return max(1, round(spec.every_epochs * task.train_samples / task.global_batch_size))
  return int(spec.every_steps)


def _choose_result(config, runtime, layout, runs_root, config_hash, interval):
  """Process 0 picks the result index: an unfinished run of this config to resume (when
  checkpointing is on), or a fresh index; every process learns its choice."""
  index, previous = 0, None
  if runtime.process_index == 0:
    if interval and config.checkpoint.resume == 'auto':
      previous, notes = checkpointing.find_resumable(runs_root, config_hash)
      for note in notes:
        print(f'podium: {note}', flush=True)
    index = previous.result_index if previous else layout.reserve_result()[0]
  index, resuming = runtime.broadcast_ints([index, previous is not None])
  return index, bool(resuming), previous


def run(config, runtime: Runtime, task: Task, *, output_root: str | None = None) -> RunResult:
  """Runs one timed training run of `task` and writes its MLPerf log and result record.

  With checkpointing on (`checkpoint.every_steps` / `every_epochs`), a run stopped by SIGTERM
  saves and raises RunInterrupted, and running the same command again resumes it: the same
  result index, its log appended to (a `podium_resume` event, then the rest of the run), and
  a record that says `resumed` and lists the segments.
  """
  is_main = runtime.process_index == 0
  output_root = output_root or config.output_dir
  system = system_info.system_name(config, runtime)
  layout = SubmissionLayout(output_root, config.submission.org, system, task.mlperf_benchmark)
  runs_root = os.path.join(output_root, 'runs', config.benchmark, system)
  config_hash = result_record.config_hash(json.loads(config.to_json_best_effort()))
  interval = checkpoint_interval(config, task)
  result_index, resuming, previous = _choose_result(config, runtime, layout, runs_root,
                                                    config_hash, interval)
  log_path = str(layout.log_path(result_index)) if is_main else None
  run_dir = os.path.join(runs_root, f'result_{result_index}')
  checkpoint_dir = None
  # The final state alone is not worth risking on several hosts' local disks: only with a
  # checkpoint.dir that every host sees (a bucket) or on one host.
  save_final = config.checkpoint.save_final and (runtime.process_count == 1
                                                 or bool(config.checkpoint.dir))
  if interval or save_final:
    checkpoint_dir = (os.path.join(config.checkpoint.dir, f'result_{result_index}')
                      if config.checkpoint.dir else os.path.join(run_dir, 'checkpoints'))
  mllog = MLPerfLogger(log_path, enabled=is_main)
  # Imported here: clu's summary writer imports TensorFlow, which building and timing the
  # steps (podium bench, compile) must not need on an accelerator host without it.
  from clu import metric_writers
  writer = metric_writers.create_default_writer(
      os.path.join(run_dir, 'tensorboard') if is_main else None, just_logging=not is_main,
      asynchronous=True)
  watch = checkpointing.PreemptionWatch(runtime.process_count)
  saver = None

  def heartbeat(**fields):
    if is_main:
      checkpointing.write_run_state(run_dir, last_seen=time.time(), **fields)

  segment_wall = time.time()
  try:
    if is_main:
      os.makedirs(run_dir, exist_ok=True)
    heartbeat(status=checkpointing.RUNNING, result_index=result_index, config_hash=config_hash,
              checkpoint_dir=checkpoint_dir, ended=None,
              **({} if resuming else {'last_step': 0}))
    if resuming:
      # The truth, and what the MLPerf checker rejects (init after run_start): a resumed
      # run is never taken for one contiguous time-to-train.
      mllog.start(C.INIT_START, metadata={'podium_resume': True})
    else:
      _log_run_keys(config, runtime, task, mllog, layout, system, run_dir, is_main)
    steps = compile_steps(task, runtime, int(config.seed))
    blocks = task.blocks()
    state = steps.state
    ledger = _Ledger(result_index=result_index, config_hash=config_hash, seed=int(config.seed))
    if checkpoint_dir:
      saver = checkpointing.Checkpointer(checkpoint_dir, keep=config.checkpoint.keep)
    downtime_s = None
    if resuming:
      state, ledger, downtime_s = _restore(saver, steps, previous, segment_wall)
    elif task.initial_eval:
      quality = _evaluate(task, runtime, steps, state)
      if is_main:
        print(f'initial {task.quality_name} {quality:.5f}', flush=True)
      mllog.event('initial_eval_accuracy', quality)
  except BaseException:
    # A run that never started is no result: keep its log beside the results, out of the count.
    _close(writer, mllog, task, saver, watch)
    if is_main and not resuming:
      checkpointing.write_run_state(run_dir, status=checkpointing.FINISHED, ended='init_failed')
      if os.path.exists(log_path):
        os.replace(log_path, f'{log_path}.init_failed')
    raise
  compiled_train = steps.train
  runtime.sync('init_done')
  segment = {'segment': len(ledger.segments), 'start_step': ledger.step,
             'started_at': result_record.iso_time(segment_wall),
             'init_s': time.time() - segment_wall}
  if resuming:
    segment['downtime_s'] = downtime_s
  ledger.segments.append(segment)
  ledger.compile_s += steps.compile_s
  if resuming:
    mllog.end(C.INIT_STOP, metadata={'podium_resume': True})
    mllog.event('podium_resume', {key: segment.get(key) for key in (
        'segment', 'start_step', 'init_s', 'downtime_s')} | {
            'lost_steps': ledger.segments[-2].get('lost_steps'),
            'note': 'resumed from a checkpoint: not a valid MLPerf time-to-train'})
    if is_main:
      print(f'podium: resumed result_{result_index} at step {ledger.step} (segment '
            f'{segment["segment"]}); the run is marked as resumed in its log and record',
            flush=True)
  else:
    ledger.init_s = segment['init_s']
    mllog.end(C.INIT_STOP)
    mllog.start(C.RUN_START)
    ledger.run_start_wall = time.time()
  run_start = time.perf_counter()

  status = C.ABORTED
  progress_line = _Progress(blocks[-1].end_step, task.global_batch_size, task.progress_unit,
                            is_main, steps.flops)
  data_wait = [0.0]
  data_wait_base = ledger.data_wait_s

  def save(wait=False):
    ledger.data_wait_s = data_wait_base + data_wait[0]
    ledger.saved_at = time.time()
    saver.save(ledger.step, state, ledger.to_json(), wait=wait)
    ledger.checkpoint_s = saver.save_s
    heartbeat(last_step=ledger.step, checkpoint_step=ledger.step)

  try:
    batches = _prefetch_to_device(task.train_batches(ledger.step), runtime,
                                  config.prefetch_batches, data_wait)
    pending = None            # metrics of the step before, read once the next is dispatched
    interval_start, interval_steps, interval_wait = time.perf_counter(), 0, 0.0
    for block in blocks[ledger.evals_done:]:
      mllog.start(C.BLOCK_START, metadata=dict(block.start_metadata))
      mark = time.perf_counter()
      while ledger.step < block.end_step:
        state, metrics = compiled_train(state, next(batches))
        ledger.step += 1
        step = ledger.step
        interval_steps += 1
        if pending is not None and (step % config.log_every_steps == 0 or step == block.end_step):
          values = jax.device_get(pending)
          _check_finite(values, step - 1)
          now = time.perf_counter()
          step_time = (now - interval_start) / interval_steps
          data_share = (data_wait[0] - interval_wait) / max(now - interval_start, 1e-9)
          progress_now = block.progress * step / block.end_step if block.end_step else 0.0
          ledger.step_times.append(step_time)
          progress_line.show(step, step_time, data_share, values, progress_now)
          mfu = steps.flops.mfu(step_time)
          writer.write_scalars(step - 1, dict(
              {k: float(v) for k, v in values.items()},
              step_time_ms=step_time * 1e3, examples_per_s=task.global_batch_size / step_time,
              data_wait_share=data_share, **({'mfu': mfu} if mfu is not None else {})))
          heartbeat(last_step=step)
          interval_start, interval_steps, interval_wait = now, 0, data_wait[0]
        pending = metrics
        preempted = watch.reached(step)
        if interval and (preempted or step % interval == 0):
          # Never checkpoint a diverged state: a resume would only diverge again.
          _check_finite(jax.device_get(metrics), step - 1)
          ledger.train_s += time.perf_counter() - mark
          save(wait=preempted)
          mark = time.perf_counter()
          interval_start, interval_steps = mark, 0
        if preempted:
          raise checkpointing.RunInterrupted(step, checkpoint_dir if interval else None)
      jax.block_until_ready(state)
      ledger.train_s += time.perf_counter() - mark
      mllog.end(C.BLOCK_STOP, metadata=dict(block.start_metadata))

      eval_start = time.perf_counter()
      mllog.start(C.EVAL_START, metadata=dict(block.eval_metadata))
      ledger.quality = _evaluate(task, runtime, steps, state)
      ledger.progress = block.progress
      mllog.event(C.EVAL_ACCURACY, ledger.quality, metadata=dict(block.eval_metadata))
      mllog.end(C.EVAL_STOP, metadata=dict(block.eval_metadata))
      ledger.eval_s += time.perf_counter() - eval_start
      ledger.evals_done += 1
      ledger.eval_curve.append([ledger.progress, ledger.quality,
                                time.time() - ledger.run_start_wall])
      progress_line.eval(task.quality_name, ledger.quality, ledger.progress)
      writer.write_scalars(ledger.step, {f'eval/{task.quality_name}': ledger.quality})
      interval_start, interval_steps = time.perf_counter(), 0
      if task.reached(ledger.quality):
        status = C.SUCCESS
        break
  except BaseException as error:
    interrupted = isinstance(error, checkpointing.RunInterrupted)
    mllog.end(C.RUN_STOP, metadata={C.STATUS: C.ABORTED, **(
        {'podium_interrupted_at_step': ledger.step} if interrupted else {})})
    ledger.data_wait_s = data_wait_base + data_wait[0]
    ended = 'interrupted' if interrupted else 'aborted'
    segment.update(end_step=ledger.step, ended_at=result_record.now_iso(), ended=ended,
                   run_s=time.perf_counter() - run_start)
    _close(writer, mllog, task, saver, watch)
    ledger.checkpoint_s = saver.save_s if saver else 0.0
    # A diverged run is over; anything else (SIGTERM, a vanished file, Ctrl-C) can resume.
    heartbeat(status=(checkpointing.FINISHED if isinstance(error, RunAborted)
                      else checkpointing.INTERRUPTED), ended=ended, last_step=ledger.step)
    _write_record(config, runtime, task, layout, log_path, C.ABORTED, None, ledger, steps.flops,
                  error=f'{type(error).__name__}: {error}')
    raise
  mllog.end(C.RUN_STOP, metadata={C.STATUS: status})
  time_to_train = (time.time() - ledger.run_start_wall if ledger.resumed
                   else time.perf_counter() - run_start)
  ledger.data_wait_s = data_wait_base + data_wait[0]
  segment.update(end_step=ledger.step, ended_at=result_record.now_iso(), ended=status,
                 run_s=time.perf_counter() - run_start)
  if saver:
    # The final state, for `podium export` and fine-tuning; after run_stop: untimed.
    save(wait=True)
  _close(writer, mllog, task, saver, watch)
  heartbeat(status=checkpointing.FINISHED, ended=status, last_step=ledger.step)
  record_path = _write_record(config, runtime, task, layout, log_path, status, time_to_train,
                              ledger, steps.flops)
  return RunResult(status=status, quality=ledger.quality, target=task.target,
                   progress=ledger.progress, time_to_train_s=time_to_train,
                   init_s=ledger.init_s,
                   examples_per_s=(ledger.step * task.global_batch_size / ledger.train_s
                                   if ledger.train_s else None),
                   log_path=log_path, record_path=record_path,
                   eval_curve=[tuple(point) for point in ledger.eval_curve], state=state,
                   resumed=ledger.resumed, segments=ledger.segments)


def _log_run_keys(config, runtime, task, mllog, layout, system, run_dir, is_main):
  """From init_start: what the run is (the MLPerf keys); the config and system files."""
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
  hyperparameters = task.hyperparameters()
  mllog.event(C.GRADIENT_ACCUMULATION_STEPS, task.gradient_accumulation_steps)
  mllog.event(C.TRAIN_SAMPLES, task.train_samples)
  mllog.event(C.EVAL_SAMPLES, task.eval_samples)
  for key, value in hyperparameters.items():
    if key != C.GRADIENT_ACCUMULATION_STEPS:
      mllog.event(key, value)
  if is_main:
    with open(os.path.join(run_dir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    system_info.write_system_json(layout.system_json_path, config, runtime, system)


def _restore(saver, steps: CompiledSteps, previous, segment_wall: float):
  """The state and ledger of the newest checkpoint, and the time since the run was last seen;
  closes the segment that ended unseen."""
  step = saver.latest_step()
  if step is None:
    raise RuntimeError(f'no complete checkpoint in {saver.directory} to resume from')
  state, saved = saver.restore(step, steps.abstract_state)
  ledger = _Ledger.from_json(saved)
  if ledger.step != step:
    raise RuntimeError(f'checkpoint {saver.directory}/{step} holds the progress of step '
                       f'{ledger.step}: it is corrupt')
  run_state = previous.run_state if previous is not None else {}
  last_step = max(int(run_state.get('last_step') or step), step)
  last_seen = float(run_state.get('last_seen') or ledger.saved_at or segment_wall)
  ledger.segments[-1].update(
      end_step=last_step, ended_at=result_record.iso_time(last_seen),
      # A process that died without a word (SIGKILL, a lost machine) left its status 'running'.
      ended=run_state.get('ended') or 'killed',
      lost_steps=last_step - step,
      lost_s=max(0.0, last_seen - (ledger.saved_at or last_seen)))
  return state, ledger, max(0.0, segment_wall - last_seen)


def _evaluate(task: Task, runtime: Runtime, steps: CompiledSteps, state) -> float:
  sums = steps.new_sums(state, steps.eval_batch0)
  for eval_batch in task.eval_batches():
    sums = steps.eval(state, runtime.global_batch(eval_batch), sums)
  return float(task.quality(jax.device_get(sums)))


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


def _close(writer, mllog: MLPerfLogger, task: Task, saver, watch) -> None:
  writer.flush()
  writer.close()
  mllog.close()
  task.close()
  watch.close()
  if saver is not None:
    saver.close()


def _write_record(config, runtime, task, layout, log_path, status, time_to_train,
                  ledger: _Ledger, step_flops, error=None):
  if runtime.process_index != 0:
    return None
  commit, dirty = result_record.podium_revision()
  step_times = ledger.step_times
  record = result_record.ResultRecord(
      benchmark=config.benchmark,
      recipe=config.recipe,
      status=status,
      time_to_train_s=time_to_train,
      init_s=ledger.init_s,
      quality_metric=task.quality_name,
      quality_value=ledger.quality,
      quality_target=task.target,
      epochs_or_samples_to_converge=ledger.progress if status == C.SUCCESS else None,
      progress_unit=task.progress_unit,
      eval_curve=[list(point) for point in ledger.eval_curve],
      throughput=(ledger.step * task.global_batch_size / ledger.train_s) if ledger.train_s else None,
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
      resumed=ledger.resumed,
      segments=ledger.segments,
      phases=dict(init=ledger.init_s, compile=ledger.compile_s, train=ledger.train_s,
                  eval=ledger.eval_s, data_wait=ledger.data_wait_s,
                  checkpoint=ledger.checkpoint_s),
      extra=dict(steps=ledger.step, error=error,
                 step_time_s=_distribution(step_times),
                 compiled_flops_per_device=step_flops.compiled_per_device,
                 peak_flops_per_device=step_flops.peak.flops_per_device if step_flops.peak else None,
                 peak_source=step_flops.peak.source if step_flops.peak else None),
  )
  path = layout.record_path(ledger.result_index)
  result_record.write_record(path, record)
  return path
