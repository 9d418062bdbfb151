"""The `podium` command.

  podium recipes [BENCHMARK] [-v]                 list registered recipes
  podium run BENCHMARK --recipe NAME [--set k=v]  one timed run: MLPerf log + result record
  podium check PATH [--ruleset R]                 compliance of logs, system JSONs, packages
  podium score PATH [--ruleset R]                 per-run time-to-train and the MLPerf score
  podium compare A B ... [--png P] [--html H]     runs and submissions side by side
  podium compile BENCHMARK --recipe R | --all     ahead-of-time compile for a TPU topology: fit, FLOPs
  podium export RUN_DIR --out DIR                 a trained model as a TensorFlow SavedModel
  podium import SRC --benchmark B --recipe R --out DIR   published weights as a podium checkpoint (--init_from)
  podium bench [--models M,...]                   train-step throughput beside PyTorch; input pipelines
  podium models regnet [NAME ...]                 parameters and multiply-adds of named models
  podium launch tpu-vm ACTION NAME ... | gke ...  a Cloud TPU pod from nothing to results (gcloud, xpk)

JAX is imported only by the commands that need it, after XLA flags are set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions whose message is meant for the user: printed in one line, no traceback."""
  from benchmarks.config import ConfigError
  from input_pipelines.errors import DataError
  errors: list[type[BaseException]] = [ConfigError, DataError]
  try:
    from benchmarks.train import RunAborted
    errors.append(RunAborted)
  except ImportError:
    pass
  return tuple(errors)


def cmd_recipes(args) -> int:
  from benchmarks import registry
  names = [args.benchmark] if args.benchmark else registry.benchmark_names()
  for benchmark in names:
    print(f'{benchmark}:')
    for name, entry in registry.recipes(benchmark).items():
      if args.verbose:
        print(f'  {name}')
        print('\n'.join('      ' + line for line in entry.doc.splitlines()))
        print()
      else:
        print(f'  {name:<24} {entry.summary}')
  return 0


def cmd_run(args) -> int:
  from launch import xla_flags
  xla_flags.configure()
  xla_flags.skip_absent_tpu()
  from benchmarks import registry
  overrides = list(args.set or [])
  if args.init_from:
    overrides.append(f'model.init_checkpoint={args.init_from}')
  config = registry.resolve(args.benchmark, args.recipe, overrides)
  from launch import runtime as runtime_lib
  runtime_lib.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  runtime_lib.enable_compilation_cache(args.compilation_cache)
  runtime = runtime_lib.Runtime.from_config(config)
  from benchmarks import train
  benchmark = registry.load_benchmark(args.benchmark)
  task = benchmark.build_task(config, runtime)
  is_main = runtime.process_index == 0
  if is_main:
    print(f'podium: {args.benchmark}/{args.recipe} on {runtime.num_devices} '
          f'{runtime.mesh.devices.flat[0].platform} device(s), mesh {dict(runtime.mesh.shape)}, '
          f'global batch {task.global_batch_size}, target {task.target_text}',
          flush=True)
  result = train.run(config, runtime, task, output_root=args.output)
  if is_main:
    print(summary(result, task))
  return 0 if result.status == 'success' else 1


def _plural(unit: str) -> str:
  return unit if unit.endswith('s') else unit + 's'   # 'epochs', but 'samples'


def summary(result, task) -> str:
  reached = 'reached' if result.status == 'success' else 'did NOT reach'
  ttt = f'{result.time_to_train_s:.1f} s' if result.time_to_train_s is not None else 'n/a'
  lines = [
      f'{reached} the target {task.target_text}: '
      f'{task.quality_name} {result.quality:.4f} after {result.progress:g} {_plural(task.progress_unit)}',
      f'  time to train   {ttt}   (init {result.init_s:.1f} s, not timed)',
      f'  throughput      {result.examples_per_s:,.0f} examples/s' if result.examples_per_s else '',
      f'  MLPerf log      {result.log_path}',
      f'  result record   {result.record_path}',
  ]
  return '\n'.join(line for line in lines if line)


def _results_command(fn):
  """check/score/compare: results/ only (no JAX); a bad path or ruleset is one line, exit 2."""
  def run(args) -> int:
    try:
      return fn(args)
    except (FileNotFoundError, ValueError) as error:
      print(f'podium: error: {error}', file=sys.stderr)
      return 2
  run.__doc__ = fn.__doc__
  return run


@_results_command
def cmd_check(args) -> int:
  """Exit status 0 only if every log, system JSON and (unless --no-package) package passes."""
  from results import compliance
  results = compliance.check_tree(args.path, ruleset=args.ruleset, package=not args.no_package)
  print(compliance.format_report(results))
  return 0 if results and all(r.passed for r in results) else 1


@_results_command
def cmd_score(args) -> int:
  """Exit status 0 only if every benchmark folder has a valid MLPerf score."""
  from results import scoring
  scores = scoring.score_tree(args.path, ruleset=args.ruleset, check=not args.no_check)
  print(scoring.format_scores(scores), end='')
  return 0 if scores and all(s.valid for s in scores) else 1


@_results_command
def cmd_compare(args) -> int:
  """Exit status 0 once the table (and the PNG/HTML asked for) is written: verdicts are in it."""
  from results import compare
  entries = compare.load(args.sources, ruleset=args.ruleset, check=not args.no_check)
  print(compare.format_table(entries), end='')
  png = None
  if args.png:
    png = compare.plot_curves(entries, args.png)
    print(f'convergence curves: {args.png}')
  if args.html:
    compare.html_report(entries, args.html, png)
    print(f'HTML report: {args.html}')
  return 0


def cmd_models(args) -> int:
  """Parameters (counted in the NNX model) and multiply-adds of a family's named models."""
  from launch import xla_flags
  xla_flags.skip_absent_tpu()
  from models import regnet  # the one family with a catalogue so far
  try:
    for line in regnet.describe(args.names or None, image_size=args.image_size,
                                num_classes=args.num_classes):
      print(line, flush=True)
  except ValueError as error:
    print(f'podium: error: {error}', file=sys.stderr)
    return 2
  return 0


def cmd_export(args) -> int:
  """A trained run's model as a TensorFlow SavedModel (benchmarks/export.py)."""
  from launch import xla_flags
  xla_flags.configure()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # converting needs no accelerator
  from benchmarks import export
  path = export.export_savedmodel(args.run_dir, args.out, step=args.step)
  info = json.loads((path / 'podium_export.json').read_text())
  print(f'SavedModel: {path} (signatures: serving_default = {info["serving_default"]}, '
        f'{", ".join(f for f in info["functions"] if f != info["serving_default"])})')
  return 0


def cmd_import(args) -> int:
  """Published weights (PyTorch, safetensors, TF1, podium) checked against a recipe's model
  and written as a podium checkpoint folder that --init_from reads (benchmarks/export.py)."""
  from launch import xla_flags
  xla_flags.configure()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # reading weights needs no accelerator
  from benchmarks import export
  path = export.import_weights(args.source, args.benchmark, args.recipe, args.set or [],
                               args.out)
  print(f'podium checkpoint: {path} (start a run from it: podium run {args.benchmark} '
        f'--recipe {args.recipe} --init_from {path})')
  return 0


def cmd_bench(args) -> int:
  """Throughput of podium's train steps beside PyTorch's, and of the input pipelines."""
  # JAX and PyTorch share the accelerator here: JAX must not take 75% of its memory up front.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  from launch import xla_flags
  xla_flags.configure()
  xla_flags.skip_absent_tpu()
  from benchmarks import bench
  torch_modes = {'none': (), 'eager': ('eager',), 'both': ('eager', 'compile')}[args.torch]
  models = None if args.models == 'all' else args.models.split(',')
  results = bench.run(models, batch=args.batch, dtype=args.dtype, rounds=args.rounds,
                      per_round=args.steps, warmup=args.warmup, out_dir=args.out,
                      torch_modes=torch_modes, pipelines=not args.no_pipelines,
                      quick=args.quick, profile=args.profile, overrides=args.set or ())
  print(bench.markdown(results), end='')
  print(f'written: {args.out}/bench.json, bench.md, bench.png')
  return 0


def cmd_compile(args) -> int:
  """Ahead-of-time compile for a TPU slice on this machine: does the recipe fit the pod?

  JAX stays on the CPU platform: the TPU devices are compile-only, and on a TPU VM the chips
  stay with whatever training job holds them.
  """
  os.environ['JAX_PLATFORMS'] = 'cpu'
  from launch import aot
  if sys.argv[1:2] == ['compile']:  # this process is the command, not a test calling main()
    aot.relaunch_with_unlimited_stack(sys.argv[1:])
  from benchmarks.config import ConfigError
  if args.all:
    if args.recipe:
      raise ConfigError('give either --recipe NAME or --all, not both')
    targets = aot.pod_recipes(args.benchmark)
    if not targets:
      raise ConfigError(f'no registered recipe of {args.benchmark or "any benchmark"} names a TPU '
                        f'topology')
  else:
    if not args.benchmark or not args.recipe:
      raise ConfigError('name a recipe: podium compile BENCHMARK --recipe NAME (or --all)')
    targets = [(args.benchmark, args.recipe)]
  try:
    reports = aot.run(targets, args.set or [], args.topology)
  except aot.LibtpuUnavailable as error:
    print(f'podium: {error}', file=sys.stderr)
    return 2
  return aot.exit_code(reports)


def cmd_launch(args) -> int:
  """Cloud TPU VMs and GKE through gcloud and xpk (launch/launcher.py); never imports JAX."""
  from launch import launcher
  return launcher.main(args)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='podium', description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('recipes', help='list the registered recipes')
  p.add_argument('benchmark', nargs='?')
  p.add_argument('-v', '--verbose', action='store_true', help='print each recipe\'s docstring')
  p.set_defaults(fn=cmd_recipes)

  p = sub.add_parser('run', help='one timed training run')
  p.add_argument('benchmark')
  p.add_argument('--recipe', required=True)
  p.add_argument('--set', action='append', metavar='KEY=VALUE',
                 help='override a recipe field, e.g. --set train.global_batch_size=256')
  p.add_argument('--init_from', default=None, metavar='PATH',
                 help='start from these weights (= --set model.init_checkpoint=PATH): a '
                      'PyTorch/safetensors state dict, a TF1 checkpoint (BERT), a podium run, '
                      'checkpoint or `podium import` folder')
  p.add_argument('--output', default=None, help='results root (default: the recipe\'s output_dir)')
  p.add_argument('--compilation_cache',
                 default=os.environ.get('PODIUM_COMPILATION_CACHE', '~/.cache/podium/jax'),
                 help="JAX's persistent compilation cache directory; 'none' turns it off")
  p.add_argument('--coordinator_address', default=None, help='host:port of process 0 (multi-process)')
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--process_id', type=int, default=None)
  p.set_defaults(fn=cmd_run)

  p = sub.add_parser('check', help='mlperf-logging compliance of a log, or of every log, system '
                     'JSON and benchmark folder (package checks) in a tree')
  p.add_argument('path')
  p.add_argument('--ruleset', default=None, help='override the inferred ruleset, e.g. 4.0.0')
  p.add_argument('--no-package', action='store_true',
                 help='skip the package checks (run counts, seeds, RCP) of benchmark folders')
  p.set_defaults(fn=cmd_check)

  p = sub.add_parser('score', help='per-run time-to-train and the olympic-mean MLPerf score of '
                     'every benchmark folder in a tree, with the RCP check')
  p.add_argument('path')
  p.add_argument('--ruleset', default=None, help='override the inferred ruleset, e.g. 4.0.0')
  p.add_argument('--no-check', action='store_true',
                 help='do not run the compliance checker (no run is dropped for compliance)')
  p.set_defaults(fn=cmd_score)

  p = sub.add_parser('compare', help='submitter trees, system or benchmark folders, or single '
                     'runs side by side: table, convergence curves (PNG), HTML report')
  p.add_argument('sources', nargs='+', metavar='PATH')
  p.add_argument('--png', default=None, help='write the convergence curves to this PNG file')
  p.add_argument('--html', default=None,
                 help='write one self-contained HTML report (table and curves) to this file')
  p.add_argument('--ruleset', default=None, help='override the inferred ruleset, e.g. 4.0.0')
  p.add_argument('--no-check', action='store_true', help='do not run the compliance checker')
  p.set_defaults(fn=cmd_compare)

  p = sub.add_parser('models', help='parameters and multiply-adds (FLOPs as pycls counts them) '
                     'of every named model of a family')
  p.add_argument('family', choices=['regnet'])
  p.add_argument('names', nargs='*', metavar='NAME', help='only these models (default: all)')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--num_classes', type=int, default=1000)
  p.set_defaults(fn=cmd_models)

  p = sub.add_parser('compile', help="compile a recipe's train step for its TPU slice on this "
                     'machine: HBM per chip, FLOPs, collectives (needs the tpu extra)')
  p.add_argument('benchmark', nargs='?')
  p.add_argument('--recipe', default=None)
  p.add_argument('--all', action='store_true',
                 help='every registered recipe that names a TPU topology (of BENCHMARK if given)')
  p.add_argument('--topology', default=None,
                 help="the slice, overriding the recipe's: v4-64, v5p-256, v5litepod-16, v6e-64, "
                      'tpu7x-128, 2xv5p-256 (two slices), v5p:4x4x8')
  p.add_argument('--set', action='append', metavar='KEY=VALUE',
                 help='override a recipe field, e.g. --set train.global_batch_size=8192')
  p.set_defaults(fn=cmd_compile)
  p = sub.add_parser('bench', help="train-step throughput, MFU and memory of podium's models "
                     'beside PyTorch on this device, and the input pipelines per core')
  p.add_argument('--models', default='all',
                 help='comma-separated: resnet50, regnet, bert, wav2vec2 (default: all)')
  p.add_argument('--batch', type=int, default=None,
                 help="default: each model's batch for a CPU or for an accelerator (bench.CASES)")
  p.add_argument('--dtype', default=None, choices=['float32', 'bfloat16'],
                 help='default: float32 on a CPU, bfloat16 on an accelerator')
  p.add_argument('--rounds', type=int, default=3,
                 help='interleaved rounds of podium and PyTorch steps (medians are reported)')
  p.add_argument('--steps', type=int, default=1, help='timed steps per round and variant')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps per variant first')
  p.add_argument('--torch', default='both', choices=['none', 'eager', 'both'],
                 help='PyTorch modes to measure beside podium (both: eager and torch.compile)')
  p.add_argument('--no_pipelines', action='store_true', help='skip the input pipelines')
  p.add_argument('--quick', action='store_true', help='small inputs: checks the machinery only')
  p.add_argument('--profile', action='store_true',
                 help="trace podium's steps (OUT/trace) and list the costliest XLA ops")
  p.add_argument('--set', action='append', metavar='KEY=VALUE',
                 help='config override for every model, podium and PyTorch alike '
                      '(e.g. model.attention=cudnn)')
  p.add_argument('--out', default='bench')
  p.set_defaults(fn=cmd_bench)

  p = sub.add_parser('export', help="a trained run's model as a TensorFlow SavedModel "
                     '(TF Hub style: serving and feature-vector signatures, trainable)')
  p.add_argument('run_dir', help='runs/<benchmark>/<system>/result_<i> of a finished run')
  p.add_argument('--format', default='savedmodel', choices=['savedmodel'])
  p.add_argument('--out', required=True, help='a new (or empty) folder for the SavedModel')
  p.add_argument('--step', type=int, default=None, help='a checkpoint step (default: the last)')
  p.set_defaults(fn=cmd_export)

  p = sub.add_parser('import', help='published weights (PyTorch, safetensors, TF1, fairseq, '
                     "podium) checked against a recipe's model and written as a podium "
                     'checkpoint folder for --init_from')
  p.add_argument('source', help='a .pt/.pth/.pyth/.bin/.safetensors file, a TF1 checkpoint '
                 'prefix, or a podium run/checkpoint folder')
  p.add_argument('--benchmark', required=True)
  p.add_argument('--recipe', required=True,
                 help='the recipe whose model the weights are for (its model.* fields)')
  p.add_argument('--set', action='append', metavar='KEY=VALUE',
                 help='override a recipe field, e.g. --set model.name=regnety_400mf')
  p.add_argument('--out', required=True, help='a new (or empty) folder for the checkpoint')
  p.set_defaults(fn=cmd_import)

  p = sub.add_parser('launch', help='a Cloud TPU VM slice or GKE cluster from nothing to results: '
                     'create, setup, preflight, run, fetch, delete (gcloud, xpk)')
  from launch import launcher
  launcher.add_arguments(p)
  p.set_defaults(fn=cmd_launch)
  return parser


def main(argv=None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  args = build_parser().parse_args(argv)
  from benchmarks.checkpointing import RunInterrupted  # no JAX: safe for every command
  try:
    return args.fn(args)
  except _user_errors() as error:
    print(f'podium: error: {error}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('podium: interrupted', file=sys.stderr)
    return 130
  except RunInterrupted as error:
    # A preemption notice: the checkpoint is saved; exit as a SIGTERM'd process would, so
    # a supervisor (GKE, a restart loop) knows to run the command again.
    print(f'podium: {error}', file=sys.stderr)
    return 128 + signal.SIGTERM


if __name__ == '__main__':
  sys.exit(main())
