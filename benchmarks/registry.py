"""The registry of benchmarks and their recipes (Lingvo/Pax "task params", checked in as code).

A recipe is a function returning an `ml_collections.ConfigDict`, registered with `@recipe`
in its benchmark's module. Its docstring states its source (paper, MLPerf submission, RCP),
the hardware it is for, and the expected result; `podium recipes` prints it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable, Iterable

import ml_collections

from benchmarks.config import ConfigError, apply_overrides

# Benchmark name -> the module that defines it (imported lazily: importing a benchmark pulls
# in its model and input pipeline).
BENCHMARK_MODULES = {
    'bert': 'benchmarks.bert',
    'resnet50': 'benchmarks.resnet50',
    'regnet': 'benchmarks.regnet',
    'wav2vec2_ctc': 'benchmarks.wav2vec2',
    'wav2vec2_pretrain': 'benchmarks.wav2vec2',
}

_RECIPES: dict[str, dict[str, 'Recipe']] = {}


@dataclasses.dataclass(frozen=True)
class Recipe:
  benchmark: str
  name: str
  build: Callable[[], ml_collections.ConfigDict]

  @property
  def doc(self) -> str:
    return inspect.cleandoc(self.build.__doc__ or '')

  @property
  def summary(self) -> str:
    return self.doc.splitlines()[0] if self.doc else ''


def recipe(benchmark: str):
  """Registers the decorated function as recipe `<function name>` of `benchmark`."""
  def register(fn):
    if not (fn.__doc__ or '').strip():
      raise TypeError(f'recipe {fn.__name__} needs a docstring: source, hardware, expected result')
    _RECIPES.setdefault(benchmark, {})[fn.__name__] = Recipe(benchmark, fn.__name__, fn)
    return fn
  return register


def benchmark_names() -> list[str]:
  return sorted(BENCHMARK_MODULES)


def load_benchmark(name: str):
  """Imports and returns the benchmark module `name` (it has `build_task(config, runtime)`)."""
  if name not in BENCHMARK_MODULES:
    raise ConfigError(f'unknown benchmark {name!r}; valid benchmarks: {", ".join(benchmark_names())}')
  return importlib.import_module(BENCHMARK_MODULES[name])


def recipes(benchmark: str) -> dict[str, Recipe]:
  load_benchmark(benchmark)
  return dict(sorted(_RECIPES.get(benchmark, {}).items()))


def get_recipe(benchmark: str, name: str) -> Recipe:
  available = recipes(benchmark)
  if name not in available:
    raise ConfigError(
        f'unknown recipe {name!r} for benchmark {benchmark!r}; valid recipes: {", ".join(available)}')
  return available[name]


def resolve(benchmark: str, name: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """The recipe's config with `key=value` overrides applied; the result is locked."""
  config = get_recipe(benchmark, name).build()
  config.benchmark = benchmark
  config.recipe = name
  apply_overrides(config, overrides)
  config.lock()
  return config
