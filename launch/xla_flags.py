"""XLA flags and platform choice, in one named place: both must be in the environment
before JAX is imported."""

from __future__ import annotations

import glob
import importlib.util
import os

# XLA:CPU's YNNPACK fusions, by kind, measured on a 2-core x86 CPU (podium's train steps at
# the bench's sizes, compiled both ways and timed interleaved in one process): its
# convolution and elementwise fusions make conv nets 2-5x slower (ResNet-50, batch 8:
# 6.3 -> 23.6 s/step; with elementwise alone 2.3 -> 7.0 s at batch 4), so they stay off;
# its reductions and matmuls train BERT-base 1.05x and wav2vec2 BASE 1.06x faster and leave
# ResNet-50 and RegNet within 2% (0.99x, 0.98x), so they stay on.
CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=reduce,dot',)


def configure(extra: tuple[str, ...] = ()) -> None:
  """Adds podium's flags to XLA_FLAGS, keeping any the user set (theirs win)."""
  current = os.environ.get('XLA_FLAGS', '')
  names = {flag.split('=')[0] for flag in current.split()}
  added = [flag for flag in (*CPU_FLAGS, *extra) if flag.split('=')[0] not in names]
  os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()


def skip_absent_tpu() -> None:
  """Leaves the TPU platform out when libtpu is installed but this machine has no TPU.

  Otherwise JAX probes for TPUs (GCE metadata, worker hostnames), prints libtpu's warnings
  and only then falls back. TPU chips appear as /dev/accel* (v4, v5p) or /dev/vfio (v5e, v6e).
  An explicit JAX_PLATFORMS always wins.
  """
  if os.environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None:
    return
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return
  gpu = any(importlib.util.find_spec(name) for name in ('jax_cuda12_plugin', 'jax_cuda13_plugin'))
  os.environ['JAX_PLATFORMS'] = 'cuda,cpu' if gpu else 'cpu'
