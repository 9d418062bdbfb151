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
  # name -> fn(model, inputs) -> one array (or a dict of them), computed in inference mode.
  functions: dict[str, Callable[[Any, Any], Any]]
  description: str = ''
  # Several named inputs instead (TF Hub text encoders): name -> (shape with the batch axis,
  # str dims symbolic, e.g. ('b', 's')), dtype); the functions then take a dict of them.
  inputs: dict[str, tuple[tuple[Any, ...], str]] | None = None
  serving: str = 'classify'                    # the function that is `serving_default`
  constraints: tuple[str, ...] = ()            # on the symbolic dims, e.g. 's <= 512'


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
                      f'{config.model.get("name", config.benchmark)} as config.json describes it')
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
  inputs = spec.inputs or {'inputs': (('b', *spec.input_shape), spec.input_dtype)}
  names = list(inputs)
  polymorphic = ['(' + ', '.join(str(d) for d in shape) + ')' for shape, _ in inputs.values()]
  tensor_specs = [tf.TensorSpec([None if isinstance(d, str) else d for d in shape], dtype,
                                name=name) for name, (shape, dtype) in inputs.items()]

  # A plain trackable object (tf.Module's variable properties cannot be assigned): the
  # attributes below are saved as they are and come back on `tf.saved_model.load`.
  module = tf.train.Checkpoint()
  signatures = {}
  for name, fn in spec.functions.items():
    def apply(param_leaves, state_leaves, *arrays, fn=fn):
      model = nnx.merge(graphdef, jax.tree.unflatten(param_def, param_leaves),
                        jax.tree.unflatten(state_def, state_leaves))
      return fn(model, dict(zip(names, arrays)) if spec.inputs else arrays[0])
    converted = jax2tf.convert(apply, with_gradient=True,
                               polymorphic_shapes=[None, None, *polymorphic],
                               polymorphic_constraints=spec.constraints)
    function = tf.function(_bind_variables(converted, param_vars, state_vars),
                           autograph=False, input_signature=tensor_specs)
    setattr(module, name, function)
    signatures['serving_default' if name == spec.serving else name] = function
  # TF Hub's reusable SavedModel attributes: what hub.KerasLayer and TFSMLayer train.
  module.variables = param_vars + state_vars
  module.trainable_variables = param_vars
  module.regularization_losses = []
  tf.saved_model.save(module, str(out_dir), signatures=signatures)
  (out_dir / 'podium_export.json').write_text(json.dumps({
      'benchmark': config.benchmark, 'recipe': config.recipe,
      'model': config.model.get('name', config.benchmark),
      'run_dir': str(Path(run_dir).resolve()), 'functions': sorted(spec.functions),
      'serving_default': spec.serving,
      'inputs': {name: {'shape': [d if isinstance(d, int) else None for d in shape],
                        'dtype': dtype} for name, (shape, dtype) in inputs.items()},
      'description': spec.description}, indent=2) + '\n')
  return out_dir


def _bind_variables(converted, param_vars, state_vars):
  """inputs -> converted(variables, inputs): the signature's arguments are the batch only."""
  def call(*inputs):
    return converted(param_vars, state_vars, *inputs)
  return call


# -- podium import ---------------------------------------------------------------------------

IMPORT_INFO = 'podium_import.json'


def import_weights(source: str | os.PathLike, benchmark: str, recipe: str,
                   overrides: list[str], out_dir: str | os.PathLike) -> Path:
  """`podium import`: published weights -> a podium checkpoint folder for `--init_from`.

  The recipe's model reads `source` exactly as a run with `model.init_checkpoint=source`
  would (the benchmark's own importer: every mismatched tensor named), on the CPU, without
  its data; the parameters and model state are written as one orbax step (0) that
  `model.init_checkpoint` and `checkpointing.read_state` accept, with podium_import.json
  saying where they came from. A TPU host then needs neither torch nor the original file.
  """
  import jax
  import numpy as np
  from flax import nnx
  from benchmarks import checkpointing, registry
  from launch import runtime as runtime_lib
  from models.importers import weight_files

  out_dir = Path(out_dir)
  if out_dir.exists() and any(out_dir.iterdir()):
    raise ConfigError(f'{out_dir} exists and is not empty: choose a new folder (nothing was '
                      f'overwritten)')
  try:
    fmt = weight_files.detect_format(source)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  # The model only: no data is read or written, whatever the recipe says.
  config = registry.resolve(benchmark, recipe, [
      *overrides, f'model.init_checkpoint={os.fspath(source)}', 'data.synthetic=True',
      'data.prepare='])
  if 'num_classes' in config.model and not config.model.num_classes:
    raise ConfigError(f'recipe {recipe!r} takes model.num_classes from its data: set '
                      '--set model.num_classes=N for the weights to import')
  runtime = runtime_lib.Runtime.from_config(config, devices=jax.local_devices(backend='cpu')[:1])
  task = registry.load_benchmark(benchmark).build_task(config, runtime)
  params = task.initial_params()
  model_state = task.initial_model_state()
  if model_state is None:  # the model's own (e.g. no BatchNorm): what a run would start with
    model = task.create_model(nnx.Rngs(int(config.seed)))
    model_state = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
  state = jax.tree.map(np.asarray, {'params': params, 'model_state': model_state})
  info = {'source': str(Path(source).resolve()), 'format': fmt, 'benchmark': benchmark,
          'recipe': recipe, 'overrides': list(overrides), 'model': config.model.to_dict()}
  out_dir.mkdir(parents=True, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(out_dir, keep=1, async_save=False)
  try:
    checkpointer.save(0, state, {'podium_import': info}, wait=True)
    if checkpointer.failures:
      raise ConfigError(f'writing {out_dir} failed: {checkpointer.failures[-1]}')
  finally:
    checkpointer.close()
  (out_dir / IMPORT_INFO).write_text(json.dumps(info, indent=2, default=str) + '\n')
  return out_dir
