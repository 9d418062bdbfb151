"""`podium export`: a trained podium model as a TensorFlow SavedModel, TF Hub style.

A run directory (`runs/<benchmark>/<system>/result_<i>`) holds the resolved `config.json`
and the run's final state (`checkpoints/`, saved after run_stop). Export rebuilds the
model from the config, loads the state, and converts the benchmark's inference functions
with jax2tf (StableHLO inside the SavedModel: TensorFlow alone runs it, no JAX needed):

  classify        inputs -> logits            (also the `serving_default` signature)
  feature_vector  inputs -> backbone features (also a `feature_vector` signature)

Both take a batch of any size. The parameters are `tf.Variable`s listed in
`trainable_variables` (BatchNorm statistics in `variables` only), and gradients flow
through the converted functions, so `keras.layers.TFSMLayer(path, call_endpoint=
'feature_vector', trainable=True)` or `hub.KerasLayer(path, trainable=True)` fine-tunes
it. BatchNorm runs in inference mode (moving statistics), as TF Hub image modules do.

A benchmark makes itself exportable with `export_spec(config) -> ExportSpec` in its module.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import ml_collections

from benchmarks.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ExportSpec:
  """What a benchmark exports: its model, one input, and named inference functions."""
  create_model: Callable[[Any], Any]           # nnx.Rngs -> the model (random init)
  input_shape: tuple[int, ...]                 # one example, without the batch axis
  input_dtype: str
  # name -> fn(model, inputs) -> one array, computed in inference mode.
  functions: dict[str, Callable[[Any, Any], Any]]
  description: str = ''


def image_classifier_spec(config, model_factory) -> ExportSpec:
  """Image classifiers (ResNet, RegNet): float images in [0, 1] (the TF Hub image
  convention), [b, size, size, 3]; normalised inside with the training mean and stddev."""
  import jax.numpy as jnp
  size = config.data.image_size
  mean = jnp.asarray((123.68, 116.78, 103.94), jnp.float32)
  stddev = jnp.asarray((58.393, 57.12, 57.375), jnp.float32)

  def normalize(images):
    return (images * 255.0 - mean) / stddev

  return ExportSpec(
      create_model=lambda rngs: model_factory(config.model, rngs),
      input_shape=(size, size, 3), input_dtype='float32',
      functions={
          'classify': lambda model, images: model(normalize(images), train=False),
          'feature_vector': lambda model, images: model.embed(normalize(images), train=False),
      },
      description=(f'{config.model.name} trained by podium ({config.benchmark}/{config.recipe}); '
                   f'inputs: float32 RGB images in [0, 1], {size}x{size}'))


def load_run_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  path = Path(run_dir) / 'config.json'
  if not path.is_file():
    raise ConfigError(f'{run_dir} is not a podium run directory: it has no config.json '
                      f'(expected runs/<benchmark>/<system>/result_<i>)')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def checkpoint_dir(run_dir: str | os.PathLike, config) -> Path:
  if config.checkpoint.dir:
    return Path(config.checkpoint.dir) / Path(run_dir).name
  return Path(run_dir) / 'checkpoints'


def trained_model(run_dir: str | os.PathLike, step: int | None = None):
  """(config, spec, graphdef, params, model_state) of the run's final (or `step`) state."""
  import jax
  from flax import nnx
  from benchmarks import checkpointing, registry
  config = load_run_config(run_dir)
  module = registry.load_benchmark(config.benchmark)
  if not hasattr(module, 'export_spec'):
    raise ConfigError(f'benchmark {config.benchmark!r} cannot be exported yet (its module '
                      f'{module.__name__} has no export_spec)')
  spec = module.export_spec(config)
  directory = checkpoint_dir(run_dir, config)
  if checkpointing.latest_step(directory) is None:
    raise ConfigError(f'{directory} holds no complete checkpoint: the run saved no final state '
                      f'(it ran with checkpoint.save_final=False, or did not finish)')
  state = checkpointing.read_state(directory, step)
  abstract = nnx.eval_shape(lambda: spec.create_model(nnx.Rngs(0)))
  graphdef, abstract_params, abstract_rest = nnx.split(abstract, nnx.Param, ...)
  expected = jax.tree.structure(nnx.to_pure_dict(abstract_params))
  if jax.tree.structure(state['params']) != expected:
    raise ConfigError(f'the checkpoint in {directory} does not hold the parameters of '
                      f'{config.model.name} as config.json describes it')
  return config, spec, graphdef, state['params'], state['model_state']


def export_savedmodel(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      step: int | None = None) -> Path:
  """Writes the SavedModel of the run's trained model to `out_dir`; returns its path."""
  import jax
  import numpy as np
  import tensorflow as tf
  from flax import nnx
  from jax.experimental import jax2tf

  config, spec, graphdef, params, model_state = trained_model(run_dir, step)
  out_dir = Path(out_dir)
  if out_dir.exists() and any(out_dir.iterdir()):
    raise ConfigError(f'{out_dir} exists and is not empty: choose a new folder (nothing was '
                      f'overwritten)')

  def to_variables(tree, trainable, prefix):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    variables = [tf.Variable(np.asarray(leaf), trainable=trainable,
                             name=prefix + jax.tree_util.keystr(path).replace("'", '')
                             .replace('][', '/').strip('[]'))
                 for path, leaf in flat]
    return variables, treedef

  param_vars, param_def = to_variables(params, True, 'params/')
  state_vars, state_def = to_variables(model_state, False, 'state/')
  batch_shape = '(b, ' + ', '.join(str(d) for d in spec.input_shape) + ')'

  # A plain trackable object (tf.Module's variable properties cannot be assigned): the
  # attributes below are saved as they are and come back on `tf.saved_model.load`.
  module = tf.train.Checkpoint()
  signatures = {}
  for name, fn in spec.functions.items():
    def apply(param_leaves, state_leaves, inputs, fn=fn):
      model = nnx.merge(graphdef, jax.tree.unflatten(param_def, param_leaves),
                        jax.tree.unflatten(state_def, state_leaves))
      return fn(model, inputs)
    converted = jax2tf.convert(apply, with_gradient=True,
                               polymorphic_shapes=[None, None, batch_shape])
    function = tf.function(
        _bind_variables(converted, param_vars, state_vars), autograph=False,
        input_signature=[tf.TensorSpec((None, *spec.input_shape), spec.input_dtype,
                                       name='inputs')])
    setattr(module, name, function)
    signatures['serving_default' if name == 'classify' else name] = function
  # TF Hub's reusable SavedModel attributes: what hub.KerasLayer and TFSMLayer train.
  module.variables = param_vars + state_vars
  module.trainable_variables = param_vars
  module.regularization_losses = []
  tf.saved_model.save(module, str(out_dir), signatures=signatures)
  (out_dir / 'podium_export.json').write_text(json.dumps({
      'benchmark': config.benchmark, 'recipe': config.recipe, 'model': config.model.name,
      'run_dir': str(Path(run_dir).resolve()), 'functions': sorted(spec.functions),
      'input_shape': ['batch', *spec.input_shape], 'input_dtype': spec.input_dtype,
      'description': spec.description}, indent=2) + '\n')
  return out_dir


def _bind_variables(converted, param_vars, state_vars):
  """inputs -> converted(variables, inputs): the signature's only argument is the batch."""
  def call(inputs):
    return converted(param_vars, state_vars, inputs)
  return call
