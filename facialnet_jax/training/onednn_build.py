"""Builds (once, into a cache directory), loads and registers the oneDNN bfloat16 convolution FFI library."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import jax
from absl import logging

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'onednn_conv.cc')
# FFI target names (registered for the CPU platform only) -> symbols in the library.
TARGETS = {
    'facialnet_onednn_conv_forward': 'FacialnetOnednnConvForward',
    'facialnet_onednn_conv_bias_relu_forward': 'FacialnetOnednnConvBiasReluForward',
    'facialnet_onednn_conv_backward_data': 'FacialnetOnednnConvBackwardData',
    'facialnet_onednn_conv_backward_weights': 'FacialnetOnednnConvBackwardWeights',
    'facialnet_onednn_conv_backward_weights_as_forward':
        'FacialnetOnednnConvBackwardWeightsAsForward',
    'facialnet_onednn_conv_backward_weights_phases': 'FacialnetOnednnConvBackwardWeightsPhases',
    'facialnet_onednn_relu_backward': 'FacialnetOnednnReluBackward',
    'facialnet_onednn_max_pool_forward': 'FacialnetOnednnMaxPoolForward',
    'facialnet_onednn_max_pool_backward': 'FacialnetOnednnMaxPoolBackward',
}
# Where to look for oneDNN 3.x (include/oneapi/dnnl/dnnl.hpp and lib*/libdnnl.so): the
# variable, then this environment's prefix (pyproject.toml's onednn-*-cpu-gomp dependencies
# install there), then the system.
ROOT_VARIABLE = 'FACIALNET_ONEDNN_ROOT'
CACHE_VARIABLE = 'FACIALNET_ONEDNN_CACHE'


class Unavailable(Exception):
  """Why the oneDNN convolutions cannot be used on this machine (one line)."""


class OneDNN(NamedTuple):
  include_dir: str
  lib_dir: str
  version: str


def find_onednn() -> OneDNN:
  roots = [os.environ.get(ROOT_VARIABLE, ''), sys.prefix, '/usr/local', '/usr']
  old = None
  for root in filter(None, roots):
    header = os.path.join(root, 'include', 'oneapi', 'dnnl', 'dnnl_version.h')
    if not os.path.exists(header):
      continue
    with open(header) as f:
      text = f.read()
    parts = [re.search(rf'#define DNNL_VERSION_{p} (\d+)', text) for p in ('MAJOR', 'MINOR')]
    version = '.'.join(m.group(1) if m else '?' for m in parts)
    if not parts[0] or int(parts[0].group(1)) < 3:
      old = f'oneDNN {version} at {root} (3.x needed)'
      continue
    for lib in ('lib', 'lib64', f'lib/{platform.machine()}-linux-gnu'):
      if os.path.exists(os.path.join(root, lib, 'libdnnl.so')):
        return OneDNN(os.path.join(root, 'include'), os.path.join(root, lib), version)
  raise Unavailable(old or "oneDNN 3.x not found (pip install 'onednn-cpu-gomp<2024' "
                    "'onednn-devel-cpu-gomp<2024')")


def cache_dir() -> str:
  if os.environ.get(CACHE_VARIABLE):
    return os.environ[CACHE_VARIABLE]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'facialnet_jax', 'onednn')


def build(dnnl: OneDNN) -> str:
  """Path of the compiled library, compiling it first unless this exact build is cached."""
  compiler = shutil.which(os.environ.get('CXX', 'g++')) or shutil.which('c++')
  if not compiler:
    raise Unavailable('no C++ compiler (g++, c++ or $CXX) to build them with')
  with open(SOURCE, 'rb') as f:
    source = f.read()
  ffi_include = jax.ffi.include_dir()
  key = hashlib.sha256(b'\0'.join(
      [source, compiler.encode(), ffi_include.encode(), dnnl.include_dir.encode(),
       dnnl.lib_dir.encode(), jax.__version__.encode()])).hexdigest()[:16]
  path = os.path.join(cache_dir(), f'onednn_conv_{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Compiled to a temporary name and renamed: processes building at once never load half a file.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{dnnl.include_dir}',
         f'-I{ffi_include}', SOURCE, f'-L{dnnl.lib_dir}', '-ldnnl',
         f'-Wl,-rpath,{dnnl.lib_dir}', '-o', tmp]
  logging.info('Compiling the oneDNN convolutions (once): %s', path)
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode:
    os.unlink(tmp)
    lines = done.stderr.strip().splitlines() or ['?']
    # The first error says what is wrong; the last line is often only a caret under code.
    first_error = next((line for line in lines if 'error' in line), lines[-1])
    raise Unavailable(f'compiling {SOURCE} failed: {first_error.strip()}')
  os.replace(tmp, path)
  return path


_registered = []  # XLA keeps FFI targets for the process's life: register them once.


def _load() -> None:
  if _registered:
    return
  if jax.default_backend() != 'cpu':
    raise Unavailable(f'they run on the CPU, and JAX computes on {jax.default_backend()}')
  if sys.platform != 'linux' or platform.machine() != 'x86_64':
    raise Unavailable(f'built for Linux x86-64 only, this is {sys.platform} {platform.machine()}')
  try:
    lib = ctypes.CDLL(build(find_onednn()))
  except OSError as e:
    raise Unavailable(f'building or loading the library failed: {e}') from e
  if not lib.facialnet_onednn_has_bf16():
    raise Unavailable('this CPU lacks the AVX512-BF16 instructions they are fast with')
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')
  _registered.append(lib)


@functools.cache
def unavailable_reason() -> str:
  """'' once the library is built, loaded and registered here; else why it cannot be (one line)."""
  try:
    _load()
  except Unavailable as e:
    return str(e)
  return ''


@functools.cache
def available(requested: str = 'onednn') -> bool:
  """Whether the oneDNN convolutions run here; if not, logs why once: a warning when they were
  asked for by name, an info line when `conv_implementation='auto'` chose them."""
  reason = unavailable_reason()
  if reason:
    log = logging.warning if requested == 'onednn' else logging.info
    log("conv_implementation=%r: oneDNN's bfloat16 convolutions are unavailable (%s); using "
        "'xla' convolutions.", requested, reason)
  return not reason
