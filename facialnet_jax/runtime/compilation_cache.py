"""The persistent XLA compilation cache (a resumed run, a run on data of the same sizes and
repeated evaluate/predict calls load compiled steps instead of compiling them again), and a
clock of the seconds this process spends compiling."""

import os
import threading

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# config.compilation_cache_dir = 'auto' resolves to this variable, else XDG's cache home.
CACHE_DIR_ENV = 'FACIALNET_COMPILATION_CACHE'
AUTO = 'auto'
# The tracing, lowering and XLA compilation (or cache load) of one jitted function.
_COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration',
                   '/jax/core/compile/backend_compile_duration')
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_CACHE_MISS_EVENT = '/jax/compilation_cache/cache_misses'


def resolve_dir(setting: str) -> str:
  """The cache folder for config.compilation_cache_dir: '' (off), 'auto' or a path."""
  if setting != AUTO:
    return os.path.abspath(os.path.expanduser(setting)) if setting else ''
  if os.environ.get(CACHE_DIR_ENV) is not None:
    return resolve_dir(os.environ[CACHE_DIR_ENV] or '')
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(cache_home, 'facialnet_jax', 'xla')


def enable(setting: str) -> str:
  """Points JAX's persistent compilation cache at the folder `setting` names; returns it
  ('' when off, and then nothing is cached)."""
  directory = resolve_dir(setting)
  if directory == (jax.config.jax_compilation_cache_dir or ''):
    return directory
  if directory:
    os.makedirs(directory, exist_ok=True)
  # JAX opens its cache once, at the first compilation: a process that runs several
  # configurations (tests, cross-validation) must reset it for a new folder to take effect.
  jax_cache.reset_cache()
  jax.config.update('jax_compilation_cache_dir', directory or None)
  # The steps compile in 1-20 s, the evaluation loops in well under JAX's 1 s default
  # threshold: cache every one of them, as each is compiled again by every run.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return directory


class CompileClock:
  """Counts compile seconds and persistent-cache hits/misses in this process, from the moment
  it is made (JAX reports them through jax.monitoring; they happen inside the first calls)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.seconds = 0.0
    self.cache_hits = 0
    self.cache_misses = 0
    monitoring.register_event_duration_secs_listener(self._on_duration)
    monitoring.register_event_listener(self._on_event)

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in _COMPILE_EVENTS:
      with self._lock:
        self.seconds += duration

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    with self._lock:
      if event == _CACHE_HIT_EVENT:
        self.cache_hits += 1
      elif event == _CACHE_MISS_EVENT:
        self.cache_misses += 1

  def close(self) -> None:
    """Stops listening (a process may make many clocks, one per run)."""
    monitoring.unregister_event_duration_listener(self._on_duration)
    monitoring.unregister_event_listener(self._on_event)
