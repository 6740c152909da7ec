"""The persistent compilation cache across processes (training and evaluation), and the run-time
breakdown in results.json."""

import json
import re
import subprocess
import sys

import pytest

from facialnet_jax.runtime import compilation_cache
from facialnet_jax.runtime import run_timing
from tests.conftest import REPO_ROOT, run_launch, tiny_flags


def _timing(workdir) -> dict:
  return json.loads((workdir / 'results.json').read_text())['timing']


@pytest.mark.slow
def test_a_second_process_loads_the_steps_the_first_compiled(tmp_path, monkeypatch):
  cache = tmp_path / 'cache'
  monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, str(cache))
  for name in ('first', 'second'):
    result = run_launch('--config', 'configs/synthetic.py', f'--workdir={tmp_path / name}',
                        *tiny_flags())
    assert result.returncode == 0, result.stderr[-3000:]
    if name == 'first':
      assert any(cache.iterdir()), 'the first run wrote nothing into the cache'
  first, second = _timing(tmp_path / 'first'), _timing(tmp_path / 'second')
  assert first['compilation_cache_dir'] == str(cache)
  assert first['compilation_cache_misses'] > 0 and first['compilation_cache_hits'] == 0
  assert second['compilation_cache_hits'] >= first['compilation_cache_misses']
  assert second['compilation_cache_misses'] == 0
  assert second['compile_seconds'] < first['compile_seconds']

  for timing in (first, second):
    phases = sum(timing[f'{name}_seconds'] for name in run_timing.PHASES)
    assert phases == pytest.approx(timing['wall_seconds'], rel=0.05), timing
    assert timing['train_steps_seconds'] > 0 and timing['compile_seconds'] > 0

  # evaluate compiles its evaluation pass once; a second call loads it.
  evaluations = [subprocess.run(
      [sys.executable, '-m', 'facialnet_jax.evaluate', f'--workdir={tmp_path / "first"}',
       f'--output_dir={tmp_path / f"evaluation_{attempt}"}'], cwd=REPO_ROOT, capture_output=True,
      text=True, timeout=300, check=False) for attempt in range(2)]
  for evaluation in evaluations:
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  counts = re.search(r'compilation cache: (\d+) hits, (\d+) misses', evaluations[1].stderr)
  assert counts and int(counts.group(1)) > 0 and int(counts.group(2)) == 0, \
      evaluations[1].stderr[-2000:]


def test_cache_folder_setting(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, str(tmp_path / 'from_env'))
  assert compilation_cache.resolve_dir('auto') == str(tmp_path / 'from_env')
  assert compilation_cache.resolve_dir('') == ''
  assert compilation_cache.resolve_dir(str(tmp_path / 'x')) == str(tmp_path / 'x')
  monkeypatch.delenv(compilation_cache.CACHE_DIR_ENV)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compilation_cache.resolve_dir('auto') == str(tmp_path / 'xdg' / 'facialnet_jax' / 'xla')


def test_compile_seconds_leave_the_phase_they_happened_in():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  clock = compilation_cache.CompileClock()
  try:
    timer = run_timing.RunTimer(clock)
    with timer.phase('validation'):
      jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
    assert timer.seconds['compile'] > 0
    assert timer.seconds['compile'] == pytest.approx(clock.seconds)
    assert 0 <= timer.seconds['validation']
  finally:
    clock.close()
