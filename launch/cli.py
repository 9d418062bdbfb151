"""The `podium` command.

  podium recipes [BENCHMARK] [-v]                 list registered recipes
  podium run BENCHMARK --recipe NAME [--set k=v]  one timed run: MLPerf log + result record
  podium check PATH [--ruleset R]                 mlperf-logging compliance of logs / a tree
  podium compile BENCHMARK --recipe R | --all     ahead-of-time compile for a TPU topology: fit, FLOPs

JAX is imported only by the commands that need it, after XLA flags are set.
"""

from __future__ import annotations

import argparse
import os
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
  config = registry.resolve(args.benchmark, args.recipe, args.set or [])
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
          f'global batch {task.global_batch_size}, target {task.quality_name} >= {task.target}',
          flush=True)
  result = train.run(config, runtime, task, output_root=args.output)
  if is_main:
    print(summary(result, task))
  return 0 if result.status == 'success' else 1


def summary(result, task) -> str:
  reached = 'reached' if result.status == 'success' else 'did NOT reach'
  ttt = f'{result.time_to_train_s:.1f} s' if result.time_to_train_s is not None else 'n/a'
  lines = [
      f'{reached} the target {task.quality_name} >= {result.target}: '
      f'{task.quality_name} {result.quality:.4f} after {result.progress:g} {task.progress_unit}s',
      f'  time to train   {ttt}   (init {result.init_s:.1f} s, not timed)',
      f'  throughput      {result.examples_per_s:,.0f} examples/s' if result.examples_per_s else '',
      f'  MLPerf log      {result.log_path}',
      f'  result record   {result.record_path}',
  ]
  return '\n'.join(line for line in lines if line)


def cmd_check(args) -> int:
  from results import compliance
  results = compliance.check_tree(args.path, ruleset=args.ruleset)
  print(compliance.format_report(results))
  return 0 if results and all(r.passed for r in results) else 1


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
  p.add_argument('--output', default=None, help='results root (default: the recipe\'s output_dir)')
  p.add_argument('--compilation_cache',
                 default=os.environ.get('PODIUM_COMPILATION_CACHE', '~/.cache/podium/jax'),
                 help="JAX's persistent compilation cache directory; 'none' turns it off")
  p.add_argument('--coordinator_address', default=None, help='host:port of process 0 (multi-process)')
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--process_id', type=int, default=None)
  p.set_defaults(fn=cmd_run)

  p = sub.add_parser('check', help='mlperf-logging compliance of a log, or of every log in a tree')
  p.add_argument('path')
  p.add_argument('--ruleset', default=None, help='override the inferred ruleset, e.g. 4.0.0')
  p.set_defaults(fn=cmd_check)

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
  return parser


def main(argv=None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args)
  except _user_errors() as error:
    print(f'podium: error: {error}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('podium: interrupted', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
