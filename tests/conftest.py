"""Shared test fixtures: a tiny synthetic training config and a way to run the CLI in a subprocess."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


def tiny_config(**overrides):
  """configs/synthetic.py shrunk to seconds on a CPU: 64 training faces, batch 8."""
  from facialnet_jax.base_config import get_base_config  # pylint: disable=import-outside-toplevel
  config = get_base_config()
  config.data.source = 'synthetic'
  config.data.test_fold = -1
  config.data.synthetic_train_examples = 72
  config.data.synthetic_test_examples = 21
  config.data.validation_fraction = 0.15
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.log_every_steps = 4
  config.schedule.name = 'constant'
  config.optimizer.weight_decay = 5e-4
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


TINY_FLAGS = (
    '--config.data.source=synthetic', '--config.data.test_fold=-1',
    '--config.data.synthetic_train_examples=72', '--config.data.synthetic_test_examples=21',
    '--config.data.validation_fraction=0.15', '--config.batch_size=8',
    '--config.eval_batch_size=16', '--config.num_epochs=2', '--config.log_every_steps=4',
    '--config.schedule.name=constant', '--config.optimizer.weight_decay=0.0005')


def run_launch(*args, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs `python launch.py ARGS` on `devices` simulated CPU devices; returns the finished process."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run([sys.executable, str(REPO_ROOT / 'launch.py'), *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def shared_data() -> pathlib.Path:
  """../shared/data beside the repository; tests using it skip where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data is not present beside the repository')
  return SHARED_DATA
