"""Ahead-of-time compile of a recipe's train step for a TPU slice, on a machine without TPUs.

A pod booking is expensive and a recipe that does not fit in HBM fails only after the job
has started on hundreds of hosts. libtpu can compile for a TPU topology that is not there
(`jax.experimental.topologies`, as MaxText's `train_compile.py` does), so `podium compile`
builds the recipe's real task, state shardings and mesh over the slice's devices, and
compiles exactly the train step that `benchmarks.train.run` compiles. It reports what XLA
says: HBM per device against the chip's, FLOPs per step, the collectives in the program and
the compile time.

The process keeps JAX on the CPU platform: the TPU devices here are compile-only, and on a
TPU VM this leaves the chips to whatever job holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import tempfile
import time
from typing import Callable, Iterable, Sequence

from benchmarks.config import ConfigError
from launch import chips as chips_lib
from launch.chips import GiB, MiB, TopologySpec

INSTALL_COMMAND = "pip install -e '.[tpu]'"
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')


class LibtpuUnavailable(RuntimeError):
  """libtpu is missing or cannot build TPU topologies; the message says how to fix it."""


# -- libtpu ------------------------------------------------------------------------------------

def libtpu_problem() -> str | None:
  """None when libtpu can build TPU topologies in this process; else one line saying why not."""
  if importlib.util.find_spec('libtpu') is None:
    return (f'podium compile needs libtpu to compile for TPU slices on this machine, and it is '
            f'not installed: {INSTALL_COMMAND}  (about 700 MB; `make aot` does it)')
  try:
    topology_devices(chips_lib.parse_topology('v5e-1'))
  except Exception as error:  # libtpu's errors have no common type
    import jax
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f'libtpu is installed but cannot build a TPU topology here: {first} '
            f'(jax {jax.__version__} needs the libtpu that {INSTALL_COMMAND} installs)')
  return None


def require_libtpu() -> None:
  problem = libtpu_problem()
  if problem:
    raise LibtpuUnavailable(problem)


@contextlib.contextmanager
def _quiet_stderr():
  """libtpu prints warnings about the TPU VM it is not on (no metadata server, no worker
  hostnames) straight to file descriptor 2 when it first loads; they are noise here."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def relaunch_with_unlimited_stack(args: Sequence[str]) -> None:
  """Re-executes `podium ARGS` with no soft stack limit, if it has one and may drop it.

  libtpu 0.0.42's TPU7x compiler overflows a thread's stack on ResNet train steps
  (SIGSEGV in MigrateInstructionUsers) unless the process starts with `ulimit -s unlimited`:
  8 MiB, 64 MiB and even 1 GiB limits all crash it. The limit counts only at process start,
  so the command runs itself again. Call it before JAX is imported.
  """
  import resource
  soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
  if soft == resource.RLIM_INFINITY or hard != resource.RLIM_INFINITY or 'jax' in sys.modules:
    return
  resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, hard))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, '-c',
                            'import sys; from launch.cli import main; sys.exit(main(sys.argv[1:]))',
                            *args])


def topology_devices(spec: TopologySpec) -> list:
  """Compile-only TPU devices of the slice(s), in JAX's order."""
  from jax.experimental import topologies
  # libtpu takes /tmp/libtpu_lockfile so that one process at a time drives the chips. These
  # devices are compile-only, so two compiles (or test workers) may run at once, and a
  # compile may run beside a training job on a TPU VM.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  kwargs = {'num_slices': spec.num_slices} if spec.num_slices > 1 else {}
  with _quiet_stderr():
    topology = topologies.get_topology_desc(
        platform='tpu', topology_name=spec.topology_name, chip_config_name=spec.chip_config_name,
        chips_per_host_bounds=spec.chips_per_host_bounds, wrap=spec.wrap, **kwargs)
  return list(topology.devices)


# -- the mesh ----------------------------------------------------------------------------------

def make_mesh(axes, devices: Sequence, num_slices: int, dcn_axes=None):
  """The recipe's mesh over the slice's devices, as `Runtime.from_config` builds it on the pod.

  Across slices `axes` is the mesh inside one slice and `dcn_axes` (the recipe's `dcn_mesh`)
  splits it over the data-center network; a recipe that names no split gets its data axis
  split over the slices. Returns the mesh and the split used.
  """
  from launch import runtime as runtime_lib
  dcn = {name: int(size) for name, size in dict(dcn_axes or {}).items() if int(size) != 1}
  split = math.prod(dcn.values())
  if num_slices > 1 and split == 1:
    dcn = {'data': num_slices}
  elif split != num_slices:
    raise ConfigError(f'dcn_mesh {dcn} splits the mesh over {split} slices but the topology has '
                      f'{num_slices}; set --set dcn_mesh.data={num_slices} (or pick another '
                      f'topology)')
  mesh = runtime_lib.make_mesh(dict(axes), devices, dcn if num_slices > 1 else None)
  return mesh, (dcn if num_slices > 1 else {})


# -- what XLA reports --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MemoryUse:
  """Per-device HBM of one compiled step, from `compiled.memory_analysis()`."""
  argument: int
  output: int
  temp: int
  alias: int        # outputs that reuse donated argument buffers: counted once
  code: int         # generated code, reported beside the total

  @property
  def total(self) -> int:
    return self.argument + self.output + self.temp - self.alias

  @classmethod
  def from_compiled(cls, compiled) -> 'MemoryUse':
    stats = compiled.memory_analysis()
    return cls(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
               temp=stats.temp_size_in_bytes, alias=stats.alias_size_in_bytes,
               code=stats.generated_code_size_in_bytes)


_OOM = re.compile(r'required for HLO temporaries \((?P<need>[\d.]+)(?P<nu>[KMGT]?)\) exceeds '
                  r'available HBM \((?P<have>[\d.]+)(?P<hu>[KMGT]?)\)')
_OOM_USED = re.compile(r'Used (?P<need>[\d.]+)(?P<nu>[KMGT]?) of (?P<have>[\d.]+)(?P<hu>[KMGT]?) hbm')
_UNITS = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
  """(bytes needed, bytes XLA can use) from XLA:TPU's out-of-HBM compile error, else None."""
  for pattern in (_OOM, _OOM_USED):
    match = pattern.search(message)
    if match:
      return (int(float(match['need']) * _UNITS[match['nu']]),
              int(float(match['have']) * _UNITS[match['hu']]))
  return None


def usable_hbm_bytes(device) -> int | None:
  """HBM that XLA lets one program use on `device` (a little under the chip's: the runtime
  keeps some). XLA says it only in its out-of-memory error, so this compiles a copy of an
  argument far larger than any chip and reads the error; it takes well under a second."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import SingleDeviceSharding
  too_big = jax.ShapeDtypeStruct((2**39,), jnp.int8, sharding=SingleDeviceSharding(device))
  try:
    jax.jit(lambda x: x + 1).lower(too_big).compile()
  except Exception as error:  # XlaRuntimeError: RESOURCE_EXHAUSTED
    parsed = parse_out_of_memory(str(error))
    return parsed[1] if parsed else None
  return None


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collectives in optimized HLO, by kind. An async pair (`-start`/`-done`) counts once, and
  so does one collective that XLA:TPU split over several async-collective fusions (the
  pieces share its channel_id)."""
  counts = {}
  for kind in COLLECTIVES:
    seen = set()
    for number, line in enumerate(re.findall(rf'\s{kind}(?:-start)?\(.*', hlo_text)):
      channel = re.search(r'channel_id=(\d+)', line)
      seen.add(channel[1] if channel else f'op{number}')
    if seen:
      counts[kind] = len(seen)
  return counts


def _flops(compiled_or_lowered) -> float | None:
  cost = compiled_or_lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per partition
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


# -- one recipe --------------------------------------------------------------------------------

@dataclasses.dataclass
class CompileReport:
  benchmark: str
  recipe: str
  topology: TopologySpec
  mesh_shape: dict[str, int] = dataclasses.field(default_factory=dict)
  dcn_axes: dict[str, int] = dataclasses.field(default_factory=dict)  # split over slices
  global_batch_size: int = 0
  compile_s: float | None = None
  memory: MemoryUse | None = None
  usable_hbm: int | None = None         # per device, as XLA says
  needed_hbm: int | None = None         # from an out-of-memory compile error
  flops_per_device: float | None = None  # XLA:TPU's count for the compiled, partitioned step
  model_flops: float | None = None       # the whole step before partitioning (all devices)
  while_loops: int = 0                   # in the compiled program
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  error: str | None = None              # a failure that is not out-of-memory

  @property
  def name(self) -> str:
    return f'{self.benchmark}/{self.recipe}'

  @property
  def hbm_per_device(self) -> int:
    return self.topology.chip.hbm_bytes_per_device

  @property
  def needs(self) -> int | None:
    return self.memory.total if self.memory else self.needed_hbm

  @property
  def limit(self) -> int:
    return self.usable_hbm or self.hbm_per_device

  @property
  def fits(self) -> bool:
    return self.error is None and self.needs is not None and self.needs <= self.limit

  @property
  def flops_total(self) -> float | None:
    return None if self.flops_per_device is None else self.flops_per_device * self.topology.num_devices

  @property
  def model_flops_per_device(self) -> float | None:
    return None if self.model_flops is None else self.model_flops / self.topology.num_devices

  def verdict(self) -> str:
    """'fits (uses X GiB of Y GiB, Z%)' or 'does NOT fit: needs X GiB, ...'."""
    if self.error:
      return f'did not compile: {self.error}'
    unit = _device_word(self.topology.chip)
    have = _gib(self.hbm_per_device)
    if self.fits:
      usable = f'; XLA may use {_gib(self.usable_hbm)}' if self.usable_hbm else ''
      return (f'fits (uses {_gib(self.needs)} of {have} per {unit}, '
              f'{_percent(self.needs, self.hbm_per_device)}{usable})')
    over = self.needs - self.limit
    usable = f' ({_gib(self.usable_hbm)} usable)' if self.usable_hbm else ''
    return (f'does NOT fit: needs {_gib(self.needs)}, {unit} has {have}{usable}, '
            f'over by {_gib(over)}')

  def lines(self) -> list[str]:
    spec = self.topology
    header = f'{self.name} on {spec.name} ({spec.describe()})'
    if self.mesh_shape:
      mesh = ' '.join(f'{k}={v}' for k, v in self.mesh_shape.items())
      if self.dcn_axes:
        mesh += ' (' + ', '.join(f'{k} split over {v} slices' for k, v in self.dcn_axes.items()) + ')'
      header += f', mesh {mesh}'
    if self.global_batch_size:
      header += f', global batch {self.global_batch_size:,}'
    out = [header]
    if self.error:
      return out + [f'  {self.verdict()}']
    if self.compile_s is not None:
      out.append(f'  compile       {self.compile_s:.1f} s')
    out.append(f'  HBM           {self.verdict()}')
    if self.memory:
      m = self.memory
      out.append(f'                arguments {_size(m.argument)} + outputs {_size(m.output)} + '
                 f'temporaries {_size(m.temp)} - aliased {_size(m.alias)}; code {_size(m.code)}')
    word = _device_word(spec.chip)
    if self.model_flops is not None:
      peak = spec.chip.peak_flops_per_device('bfloat16')
      ideal = (f': at least {_duration(self.model_flops_per_device / peak)}/step at the bf16 peak'
               if peak else '')
      out.append(f'  FLOPs/step    model {_flop(self.model_flops)} ({_flop(self.model_flops_per_device)} '
                 f'per {word}){ideal}')
    if self.flops_per_device is not None:
      low = ''
      if (self.while_loops and self.model_flops_per_device
          and self.flops_per_device < 0.95 * self.model_flops_per_device):
        low = (f'; too low: XLA counts the body of each of its {self.while_loops} while loops '
               f'once')
      label = '              ' if self.model_flops is not None else 'FLOPs/step    '
      out.append(f'  {label}compiled program {_flop(self.flops_per_device)} per {word} '
                 f'({_flop(self.flops_total)} in all){low}')
    if self.memory is not None:
      out.append(f'  collectives   {format_collectives(self.collectives)}')
    return out


def _device_word(chip) -> str:
  return 'chip' if chip.devices_per_chip == 1 else 'device'


def format_collectives(counts: dict[str, int]) -> str:
  return ', '.join(f'{kind} {n}' for kind, n in counts.items()) or 'none'


def _gib(n: float) -> str:
  if n < GiB:
    return f'{n / MiB:.0f} MiB'
  return f'{n / GiB:.2f} GiB' if n % GiB else f'{n // GiB} GiB'


def _percent(part: float, whole: float) -> str:
  share = 100 * part / whole
  return '<1%' if 0 < share < 1 else f'{share:.0f}%'


def _size(n: int) -> str:
  return f'{n / GiB:.2f} GiB' if n >= GiB else f'{n / MiB:.0f} MiB'


def _duration(seconds: float) -> str:
  return f'{seconds * 1e3:.3g} ms' if seconds >= 1e-3 else f'{seconds * 1e6:.3g} µs'


def _flop(n: float) -> str:
  for scale, unit in ((1e15, 'PFLOP'), (1e12, 'TFLOP'), (1e9, 'GFLOP'), (1e6, 'MFLOP')):
    if n >= scale:
      return f'{n / scale:.2f} {unit}'
  return f'{n:.3g} FLOP'


def resolve(benchmark: str, recipe: str, overrides: Iterable[str] = (),
            topology: str | None = None):
  """The recipe's config with synthetic input, and the slice it is compiled for."""
  from benchmarks import registry
  config = registry.resolve(benchmark, recipe,
                            [*overrides, 'data.synthetic=True', 'data.prepare=""'])
  name = topology or config.get('topology', '')
  if not name:
    raise ConfigError(f'recipe {benchmark}/{recipe} names no TPU topology; pass one, e.g. '
                      f'--topology v5p-256')
  return config, chips_lib.parse_topology(name)


def compile_recipe(config, spec: TopologySpec, *, devices: Sequence | None = None,
                   usable_hbm: int | None = None) -> CompileReport:
  """Compiles `config`'s train step for `spec` exactly as `benchmarks.train.run` does."""
  from benchmarks import registry
  from benchmarks.flops import lowered_flops
  from benchmarks.train import jit_steps
  from launch.runtime import Runtime, logical_axis_rules

  report = CompileReport(config.benchmark, config.recipe, spec, usable_hbm=usable_hbm)
  devices = list(devices if devices is not None else topology_devices(spec))
  mesh, report.dcn_axes = make_mesh(config.mesh, devices, spec.num_slices,
                                    config.get('dcn_mesh'))
  report.mesh_shape = dict(mesh.shape)
  runtime = Runtime(mesh, logical_axis_rules(config.sharding_rules))
  task = registry.load_benchmark(config.benchmark).build_task(config, runtime)
  report.global_batch_size = task.global_batch_size
  jitted = jit_steps(task, runtime, int(config.seed))  # exactly what benchmarks.train.run compiles
  start = time.perf_counter()
  try:
    with runtime.activate():
      lowered = jitted.train.lower(jitted.abstract_state(), jitted.global_batch_spec(task))
      compiled = lowered.compile()
    # Without a TPU client XLA cannot cost the unpartitioned program; count it on a CPU.
    report.model_flops = lowered_flops(lowered) or cpu_model_flops(config)
  except Exception as error:  # XlaRuntimeError; out of HBM is a result, anything else a failure
    report.compile_s = time.perf_counter() - start
    oom = parse_out_of_memory(str(error))
    if oom is None:
      report.error = f'{type(error).__name__}: {_first_line(error)}'
    else:
      report.needed_hbm, usable = oom
      report.usable_hbm = report.usable_hbm or usable
    return report
  finally:
    task.close()
  report.compile_s = time.perf_counter() - start
  report.memory = MemoryUse.from_compiled(compiled)
  report.flops_per_device = _flops(compiled)
  hlo = compiled.as_text()
  report.collectives = count_collectives(hlo)
  report.while_loops = len(re.findall(r'\swhile\(', hlo))
  return report


def cpu_model_flops(config) -> float | None:
  """FLOPs of the whole train step, lowered (not compiled) for one CPU device: the model's
  work, MFU's numerator. The compiled TPU count is per device and counts a while loop's body
  once, and FSDP convolutions become such loops, so it runs low."""
  import jax
  from benchmarks import registry
  from benchmarks.flops import lowered_flops
  from benchmarks.train import jit_steps
  from launch.runtime import Runtime, logical_axis_rules, make_mesh as cpu_mesh
  runtime = Runtime(cpu_mesh({'data': 1}, jax.devices('cpu')[:1]),
                    logical_axis_rules(config.sharding_rules))
  task = registry.load_benchmark(config.benchmark).build_task(config, runtime)
  try:
    jitted = jit_steps(task, runtime, int(config.seed))
    with runtime.activate():
      return lowered_flops(jitted.train.lower(jitted.abstract_state(),
                                              jitted.global_batch_spec(task))) or None
  finally:
    task.close()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else ''


# -- the command -------------------------------------------------------------------------------

def pod_recipes(benchmark: str | None = None) -> list[tuple[str, str]]:
  """(benchmark, recipe) of every registered recipe that names a TPU topology."""
  from benchmarks import registry
  names = [benchmark] if benchmark else registry.benchmark_names()
  found = []
  for bench in names:
    for recipe, entry in registry.recipes(bench).items():
      if entry.build().get('topology', ''):
        found.append((bench, recipe))
  return found


def run(targets: Sequence[tuple[str, str]], overrides: Sequence[str] = (),
        topology: str | None = None, print_fn: Callable[[str], None] = print) -> list[CompileReport]:
  """Compiles each (benchmark, recipe) and prints its report as it is done, then a summary."""
  resolved = [resolve(b, r, overrides, topology) for b, r in targets]  # bad names fail first
  require_libtpu()
  import jax
  from importlib import metadata
  print_fn(f'podium compile: XLA:TPU ahead-of-time compiles on this {jax.devices()[0].platform.upper()} '
           f'machine (jax {jax.__version__}, libtpu {metadata.version("libtpu")})')
  reports, devices_of, usable_of = [], {}, {}
  for config, spec in resolved:
    if spec.name not in devices_of:
      devices_of[spec.name] = topology_devices(spec)
      usable_of[spec.name] = usable_hbm_bytes(devices_of[spec.name][0])
    print_fn('')
    print_fn(f'compiling {config.benchmark}/{config.recipe} for {spec.name} ...')
    try:
      report = compile_recipe(config, spec, devices=devices_of[spec.name],
                              usable_hbm=usable_of[spec.name])
    except Exception as error:  # one recipe's failure must not hide the others' results
      message = (str(error) if isinstance(error, ConfigError)
                 else f'{type(error).__name__}: {_first_line(error)}')
      report = CompileReport(config.benchmark, config.recipe, spec, error=message)
    for line in report.lines():
      print_fn(line)
    reports.append(report)
  if len(reports) > 1:
    print_fn('')
    print_fn(summary_table(reports))
  return reports


def summary_table(reports: Sequence[CompileReport]) -> str:
  rows = [('recipe', 'topology', 'chips', 'HBM need / have', 'fits', 'model FLOPs/step',
           'collectives', 'compile')]
  for r in reports:
    need = f'{r.needs / GiB:.2f} / {_gib(r.hbm_per_device)}' if r.needs is not None else '-'
    rows.append((r.name, r.topology.name, str(r.topology.num_chips), need,
                 'yes' if r.fits else ('ERROR' if r.error else 'NO'),
                 _flop(r.model_flops) if r.model_flops else '-',
                 format_collectives(r.collectives) if r.memory is not None else '-',
                 f'{r.compile_s:.0f} s' if r.compile_s is not None else '-'))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def exit_code(reports: Sequence[CompileReport]) -> int:
  return 0 if reports and all(r.fits for r in reports) else 1
