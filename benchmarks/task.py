"""The one small interface between the time-to-train loop and a benchmark.

`benchmarks/train.py` knows a benchmark only through a `Task`: how to build the model and the
optimizer, the loss and the eval metric, the input, the schedule of train blocks and evals,
and the hyperparameters to log. A benchmark module exposes `build_task(config, runtime)`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator, Mapping

import jax
import optax
from flax import nnx

from benchmarks.config import ConfigError

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Block:
  """Training up to `end_step`, then one eval; metadata as MLPerf logs it."""
  end_step: int
  start_metadata: Mapping[str, Any]   # block_start / block_stop, e.g. first_epoch_num, epoch_count
  eval_metadata: Mapping[str, Any]    # eval_* lines, e.g. epoch_num
  progress: float                     # epochs (or samples) trained at `end_step`


class Task(abc.ABC):
  """What one benchmark under one recipe gives the loop."""

  # MLPerf identity of the log: `submission_benchmark` keyword and the compliance ruleset.
  mlperf_benchmark: str
  ruleset: str
  quality_name: str          # e.g. 'top1'; logged as eval_accuracy
  target: float
  progress_unit: str         # 'epoch' or 'samples': the unit of Block.progress
  global_batch_size: int
  train_samples: int
  eval_samples: int
  # The train step splits each global batch into this many micro-batches and applies one
  # optimizer update for their mean gradient (MLPerf `gradient_accumulation_steps`).
  gradient_accumulation_steps: int = 1
  # Evaluate the starting weights once before training (e.g. an imported checkpoint's
  # masked-LM accuracy); printed, and logged as `initial_eval_accuracy` before init_stop.
  initial_eval: bool = False
  # False for error rates (WER): the target is then reached at or below it.
  quality_higher_is_better: bool = True

  @abc.abstractmethod
  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model with freshly initialised parameters."""

  @abc.abstractmethod
  def optimizer(self) -> optax.GradientTransformation:
    ...

  @abc.abstractmethod
  def learning_rate(self, step) -> jax.Array:
    """The schedule, for the progress line and TensorBoard."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Training loss (train mode) and scalar metrics to report."""

  @abc.abstractmethod
  def eval_sums(self, model: nnx.Module, batch: Batch) -> dict:
    """Masked sums over one eval batch (e.g. correct, count); summed over all eval batches."""

  @abc.abstractmethod
  def quality(self, sums: Mapping[str, float]) -> float:
    """The quality metric from the summed eval sums."""

  @abc.abstractmethod
  def blocks(self) -> list[Block]:
    """Train blocks, each followed by an eval, until the recipe's maximum length."""

  @abc.abstractmethod
  def input_spec(self, *, eval: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one host-local batch (for compiling and warming up)."""

  @abc.abstractmethod
  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Host-local training batches from `start_step` on, forever."""

  @abc.abstractmethod
  def eval_batches(self) -> Iterator[dict]:
    """Host-local eval batches with a `mask`; every process yields the same number."""

  @abc.abstractmethod
  def hyperparameters(self) -> dict[str, Any]:
    """MLPerf hyperparameter keys and values, derived from the config."""

  def initial_params(self) -> Mapping[str, Any] | None:
    """Starting parameters instead of the random init (an imported checkpoint), as host
    arrays with the structure of `nnx.to_pure_dict(nnx.state(model, nnx.Param))`."""
    return None

  def initial_model_state(self) -> Mapping[str, Any] | None:
    """The non-parameter state (BatchNorm statistics) that goes with `initial_params`, as
    host arrays with the structure of `nnx.to_pure_dict` of the rest; None: the model's own.
    Called after `initial_params`."""
    return None

  def reached(self, quality: float) -> bool:
    """Whether `quality` meets the target."""
    return quality >= self.target if self.quality_higher_is_better else quality <= self.target

  @property
  def target_text(self) -> str:
    """E.g. 'top1 >= 0.759' or 'wer <= 0.3'."""
    return f'{self.quality_name} {">=" if self.quality_higher_is_better else "<="} {self.target}'

  def close(self) -> None:
    """Releases input resources."""

  # -- for tasks that read sharded input (they set config, runtime and the local batches) --

  def _input_shards(self) -> list[int]:
    return process_input_shards(self.config, self.runtime, self.local_batch_size,
                                self.local_eval_batch_size)

  @property
  def num_input_shards(self) -> int:
    """Input shards across all processes (`data.input_shards`, 0: one per process)."""
    return self.config.data.input_shards or self.runtime.process_count


def process_input_shards(config, runtime, local_batch_size: int,
                         local_eval_batch_size: int) -> list[int]:
  """The input shards this process reads (`data.input_shards`, 0: one per process); each
  yields an equal part of the local batches. ConfigError when they do not divide evenly."""
  count = config.data.input_shards or runtime.process_count
  processes = runtime.process_count
  per_process = count // processes
  if (count % processes or local_batch_size % max(per_process, 1)
      or local_eval_batch_size % max(per_process, 1)):
    raise ConfigError(
        f'data.input_shards={count} must be a multiple of the {processes} processes, and '
        f"each process's batch ({local_batch_size} train, {local_eval_batch_size} "
        f'eval) a multiple of its {max(per_process, 1)} shards')
  first = runtime.process_index * per_process
  return list(range(first, first + per_process))


def sample_blocks(ends: list[int], global_batch_size: int) -> list[Block]:
  """Blocks ending at the steps `ends`, with progress and MLPerf metadata in samples (the
  'epoch' keys count samples, as BERT's and wav2vec2's logs do)."""
  from mlperf_logging.mllog import constants as C  # pylint: disable=import-outside-toplevel
  blocks, start = [], 0
  for end in ends:
    blocks.append(Block(
        end_step=end,
        start_metadata={C.FIRST_EPOCH_NUM: start * global_batch_size,
                        C.EPOCH_COUNT: (end - start) * global_batch_size},
        eval_metadata={C.EPOCH_NUM: end * global_batch_size},
        progress=float(end * global_batch_size)))
    start = end
  return blocks
