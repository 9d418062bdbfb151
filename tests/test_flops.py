"""FLOPs from XLA's cost analysis against analytic counts, and the MFU arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import flops


def test_dense_layer_flops_match_the_analytic_count():
  layer = nnx.Linear(256, 512, use_bias=False, rngs=nnx.Rngs(0))
  x = jnp.ones((64, 256))
  compiled = jax.jit(lambda x: layer(x)).lower(x).compile()
  assert flops.compiled_flops(compiled) == 2 * 64 * 256 * 512


def test_conv_flops_match_the_analytic_count():
  x = jnp.ones((8, 14, 14, 16))
  valid = nnx.Conv(16, 32, (3, 3), padding='VALID', use_bias=False, rngs=nnx.Rngs(0))
  compiled = jax.jit(lambda x: valid(x)).lower(x).compile()
  assert flops.compiled_flops(compiled) == 2 * 8 * 12 * 12 * 3 * 3 * 16 * 32
  # With SAME padding XLA counts only taps that land on the image: per spatial dim, 12
  # outputs see 3 taps and the 2 border outputs 2, i.e. 40 of 42 taps.
  same = nnx.Conv(16, 32, (3, 3), padding='SAME', use_bias=False, rngs=nnx.Rngs(0))
  compiled = jax.jit(lambda x: same(x)).lower(x).compile()
  assert flops.compiled_flops(compiled) == 2 * 8 * 40 * 40 * 16 * 32


def test_cost_analysis_is_per_device_under_gspmd():
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=NamedSharding(mesh, P('data')))
  w = jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=NamedSharding(mesh, P()))
  lowered = jax.jit(lambda x, w: x @ w).lower(x, w)
  # Before partitioning: the whole step. After: one device's share.
  assert flops.lowered_flops(lowered) == 2 * 64 * 256 * 512
  assert flops.compiled_flops(lowered.compile()) == 2 * 8 * 256 * 512
  step = flops.StepFlops(flops.lowered_flops(lowered), 8, flops.Peak(1e9, 'test'))
  assert step.per_device == 2 * 8 * 256 * 512
  # 2,097,152 FLOPs per device in 1 ms against a 1 GFLOP/s peak: MFU 2097 (the test's peak).
  assert step.achieved_per_device(1e-3) == pytest.approx(2 * 8 * 256 * 512 / 1e-3)
  assert step.mfu(1e-3) == pytest.approx(2 * 8 * 256 * 512 / 1e-3 / 1e9)


def test_cpu_peak_is_a_measured_matmul_rate():
  peak = flops.peak_per_device(jax.devices()[:8])
  assert 'measured' in peak.source
  assert 1e8 < peak.flops_per_device * 8 < 1e13   # a plausible CPU, whatever this one is
  assert flops.StepFlops(1.0, 1, None).mfu(1.0) is None


def test_plugin_backends_are_costed_by_xla_cpus_analysis_of_the_same_program():
  """GPU and TPU plugins cannot cost a lowered program (Lowered.cost_analysis is None there);
  lowered_flops then asks XLA:CPU's analysis of the same HLO. On a CPU both paths must agree,
  convolutions included (XLA:GPU's compiled count leaves out cuDNN's)."""
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  lowered = conv.lower(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)))
  expected = 2 * 2 * 6 * 6 * 4 * 3 * 3 * 3
  assert flops._cpu_analysis_flops(lowered) == lowered.cost_analysis()['flops'] == expected

  class NoCost:  # what a plugin backend's Lowered answers
    def cost_analysis(self):
      return None

    def compiler_ir(self, dialect):
      return lowered.compiler_ir(dialect)

  assert flops.lowered_flops(NoCost()) == expected
