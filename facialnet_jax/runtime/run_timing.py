"""Where a run's wall time goes: setup, compilation, training steps, validation, checkpoints, host work."""

import contextlib
import time

from facialnet_jax.runtime import compilation_cache

# Every second of train_and_evaluate falls in one of these (compilation is taken out of the phase
# it happened in: JAX compiles a step inside its first call).
PHASES = (
    'setup',  # loading the data, building the model, restoring a checkpoint
    'compile',  # tracing, lowering and XLA compilation, or loading from the compilation cache
    'train_steps',  # the compiled training steps, until their results are ready
    'validation',  # the compiled validation passes
    'checkpoints',  # saving (the device-to-host copy; the writes themselves run in a thread)
    'host',  # metrics fetched and logged, progress, NaN checks: host work between dispatches
    'final_evaluation',  # the test (and validation) evaluation of the final and best states
)


class RunTimer:
  """Adds up wall seconds per phase; `with timer.phase('validation'):` around each piece of work.

  A phase must end when its device work has: the code inside blocks on (or fetches) its results,
  so asynchronous dispatch does not move seconds into whichever phase waits next.
  """

  def __init__(self, clock: compilation_cache.CompileClock):
    self._clock = clock
    self._start = time.perf_counter()
    self.seconds = dict.fromkeys(PHASES, 0.0)

  @contextlib.contextmanager
  def phase(self, name: str):
    start, compiled_before = time.perf_counter(), self._clock.seconds
    try:
      yield
    finally:
      compiled = self._clock.seconds - compiled_before
      self.seconds[name] += time.perf_counter() - start - compiled
      self.seconds['compile'] += compiled

  def breakdown(self) -> dict[str, float]:
    """{'wall_seconds': …, '<phase>_seconds': …}; the phases add up to the wall time, less the
    few statements between phases."""
    wall = time.perf_counter() - self._start
    return {'wall_seconds': round(wall, 3)} | {
        f'{name}_seconds': round(seconds, 3) for name, seconds in self.seconds.items()}

  def summary_line(self) -> str:
    breakdown = self.breakdown()
    parts = ', '.join(f'{name.replace("_", " ")} {self.seconds[name]:.1f} s' for name in PHASES)
    return (f'Run time {breakdown["wall_seconds"]:.1f} s: {parts} (compilation cache: '
            f'{self._clock.cache_hits} hits, {self._clock.cache_misses} misses).')
