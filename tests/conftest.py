"""Test set-up: CPU JAX with 8 simulated devices unless a test's subprocess says otherwise."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from launch import xla_flags  # noqa: E402  (must run before JAX is imported)

xla_flags.configure(('--xla_force_host_platform_device_count=8',))
