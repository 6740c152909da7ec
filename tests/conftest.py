"""Shared test fixtures: a tiny synthetic training config and a way to run the CLI in a subprocess."""

import os
import pathlib
import subprocess
import sys

import pytest

from facialnet_jax.runtime import cpu_env

# In-process tests compute with the settings launch.py re-executes itself with (the XLA flag
# only: glibc's tunables cannot change after start). Set before anything imports jax.
os.environ.update(cpu_env.cpu_env_overrides(with_malloc=False))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


# configs/base_config.py shrunk to seconds on a CPU: 72 synthetic training faces, batch 8.
TINY_OVERRIDES = {
    'data.source': 'synthetic', 'data.test_fold': -1, 'data.synthetic_train_examples': 72,
    'data.synthetic_test_examples': 21, 'data.validation_fraction': 0.15, 'batch_size': 8,
    'eval_batch_size': 16, 'num_epochs': 2, 'log_every_steps': 4, 'schedule.name': 'constant',
    'optimizer.weight_decay': 0.0005,
}


def tiny_config(**overrides):
  """The base config with TINY_OVERRIDES, then `overrides` (dotted keys as keyword names
  are not possible, so pass them as **{'a.b': value})."""
  from facialnet_jax.training.base_config import get_base_config
  config = get_base_config()
  for key, value in (TINY_OVERRIDES | overrides).items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def tiny_flags(**overrides) -> list[str]:
  """TINY_OVERRIDES (and `overrides`) as launch.py flags, for configs/synthetic.py."""
  return [f'--config.{key}={value}' for key, value in (TINY_OVERRIDES | overrides).items()]


def launch_command(*args, devices: int = 1) -> tuple[list[str], dict]:
  """The argv and environment of `python launch.py ARGS` on `devices` simulated CPU devices."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return [sys.executable, str(REPO_ROOT / 'launch.py'), *args], {'env': env, 'cwd': REPO_ROOT}


def run_launch(*args, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs `python launch.py ARGS` on `devices` simulated CPU devices; returns the finished process."""
  argv, options = launch_command(*args, devices=devices)
  return subprocess.run(argv, **options, capture_output=True, text=True, timeout=timeout,
                        check=False)


@pytest.fixture
def shared_data() -> pathlib.Path:
  """../shared/data beside the repository; tests using it skip where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data is not present beside the repository')
  return SHARED_DATA


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the session, shared with subprocesses (through the variable
  that config.compilation_cache_dir='auto' reads) and kept out of the user's ~/.cache: the many
  small runs compile the same steps again and again."""
  from facialnet_jax.runtime import compilation_cache as cache
  os.environ[cache.CACHE_DIR_ENV] = str(tmp_path_factory.mktemp('jax_cache'))
  cache.enable(cache.AUTO)
  yield


def final_params(workdir) -> dict:
  """The latest checkpoint's parameters, whatever the device count that saved them."""
  import jax  # pylint: disable=import-outside-toplevel
  from facialnet_jax.runtime import sharding  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import checkpointing  # pylint: disable=import-outside-toplevel
  manager = checkpointing.open_manager(pathlib.Path(workdir) / 'checkpoints')
  state, _ = checkpointing.restore_replicated(manager, manager.latest_step(),
                                              sharding.create_mesh())
  return jax.device_get(state['params'])


def relative_difference(params, other, start) -> float:
  """|params - other| / |params - start| over all parameters: how far two runs ended apart,
  measured against how far training moved them."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  # optax.tree.norm: optax.global_norm is deprecated (and only calls it).
  difference = optax.tree.norm(jax.tree.map(np.subtract, params, other))
  change = optax.tree.norm(jax.tree.map(np.subtract, params, start))
  assert change > 0.01, 'training barely moved the parameters: the comparison would be empty'
  return float(difference / change)


def initial_params(config) -> dict:
  """The parameters a run with `config` starts from."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import models  # pylint: disable=import-outside-toplevel
  init = jax.jit(lambda key: models.create_model(config.model).init(
      key, jnp.zeros((1, 75, 75, 1)), train=False))
  return jax.device_get(init(jax.random.key(config.seed))['params'])


@pytest.fixture(scope='session')
def small_demo_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding a small synthetic demo build (tfds_adience/gray75: 40 subjects ×
  2 faces, 16 per fold), built once per test session."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from facialnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  from tfds_adience import tfds_adience_dataset_builder  # pylint: disable=import-outside-toplevel
  raw = tmp_path_factory.mktemp('raw')
  demo_data.write_demo_raw(raw, num_subjects=40, images_per_subject=2, image_size=40, seed=2)
  directory = tmp_path_factory.mktemp('tfds')
  builder = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=directory)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
  return str(directory)
