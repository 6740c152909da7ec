"""Process environment for fast CPU training, applied by re-executing the launcher at start-up.

Measured on the 2-core development machine (benchmarks/conv_speed.py, README "Performance"):
- XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution: jaxlib 0.10 sends
  every convolution to YNNPACK, whose weight-gradient convolutions are 3-6x slower than XLA's
  own; this keeps them in XLA and roughly doubles training speed.
- GLIBC_TUNABLES (no mmap, no trimming, one arena): XLA:CPU allocates large buffers every step
  that glibc otherwise returns to the OS and page-faults back in (~240k faults per step).
Both must be in the environment when the process starts (glibc reads its tunables only then).
"""

import importlib.util
import os
import pkgutil
import sys
from typing import Mapping

CPU_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
CPU_GLIBC_TUNABLES = ('glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:'
                      'glibc.malloc.arena_max=1')
# Set to 1 to start as-is (e.g. to measure the defaults).
OPT_OUT = 'FACIALNET_KEEP_ENV'


def accelerator_plugin_installed() -> bool:
  """True when a JAX accelerator plugin (CUDA, ROCm, TPU) is installed: then the process may
  feed a GPU from many threads, and the one-arena malloc setting is not for it."""
  if importlib.util.find_spec('libtpu') is not None:
    return True
  spec = importlib.util.find_spec('jax_plugins')
  if spec is None or not spec.submodule_search_locations:
    return False
  return any(True for _ in pkgutil.iter_modules(spec.submodule_search_locations))


def cpu_env_overrides(environ: Mapping[str, str] = os.environ,
                      with_malloc: bool = True) -> dict[str, str]:
  """Variables to add ({} when already there): XLA_FLAGS gains CPU_XLA_FLAGS (the user's
  flags kept), and GLIBC_TUNABLES is set when `with_malloc` unless the user set it."""
  out = {}
  flags = environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    out['XLA_FLAGS'] = f'{flags} {CPU_XLA_FLAGS}'.strip()
  if with_malloc and 'GLIBC_TUNABLES' not in environ:
    out['GLIBC_TUNABLES'] = CPU_GLIBC_TUNABLES
  return out


def reexec_with_cpu_env() -> None:
  """Restarts this process (same PID, same arguments) with the CPU settings; returns when there
  is nothing to add or the user opted out. Call it first thing, before heavy imports."""
  if os.environ.get(OPT_OUT) == '1':
    return
  extra = cpu_env_overrides(with_malloc=not accelerator_plugin_installed())
  if extra:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **extra})
