"""One process of a multi-process podium run, for tests (not collected by pytest).

usage: multiprocess_worker.py OUT_DIR DATA_DIR NUM_PROCESSES PROCESS_ID COORDINATOR [--set k=v ...]

Runs the digits recipe through `benchmarks.train.run` (the real loop, log and all) under
`jax.distributed`, then process 0 saves the final parameters to OUT_DIR/params.npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import xla_flags  # noqa: E402

xla_flags.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import registry, train  # noqa: E402
from launch import runtime as runtime_lib  # noqa: E402


def main(argv):
  out, data, num_processes, process_id, coordinator, *rest = argv
  overrides = [value for flag, value in zip(rest[::2], rest[1::2]) if flag == '--set']
  if int(num_processes) > 1:
    runtime_lib.initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = registry.resolve('resnet50', 'digits_cpu', [f'data.dir={data}', 'data.prepare=""',
                                                       *overrides])
  runtime = runtime_lib.Runtime.from_config(config)
  task = registry.load_benchmark('resnet50').build_task(config, runtime)
  result = train.run(config, runtime, task, output_root=out)
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), result.state['params'])
  if jax.process_index() == 0:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    np.savez(os.path.join(out, 'params.npz'),
             **{jax.tree_util.keystr(path): value for path, value in flat})
    with open(os.path.join(out, 'curve.txt'), 'w') as f:
      f.write(repr(result.eval_curve and [round(q, 6) for _, q, _ in result.eval_curve]))


if __name__ == '__main__':
  main(sys.argv[1:])
