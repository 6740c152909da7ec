"""The recipes in configs/: the paper's exactly, the measured best ones, the large-batch scaling."""

import importlib.util

import pytest

from facialnet_jax.training import config_checks
from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted((REPO_ROOT / 'configs').glob('*.py'))


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f'configs_{name}',
                                                REPO_ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_paper_config_holds_the_papers_recipe():
  config = _load('paper').get_config()
  assert config.data.name == 'tfds_adience' and config.data.test_fold == 0
  assert config.data.builder_config == 'gray75' and config.model.input_size == 75
  assert config.optimizer.momentum == 0.9 and not config.optimizer.nesterov
  assert config.optimizer.weight_decay == 0.01
  assert config.optimizer.learning_rate == 2e-3
  assert config.batch_size == 25 and config.num_epochs == 100
  assert config.schedule.name == 'plateau'
  assert not config.model.batch_norm and config.model.dtype == 'float32'


def test_utkface_config_is_the_measured_recipe_and_scales_with_the_batch():
  utkface = _load('utkface')
  config = utkface.get_config()
  assert (config.batch_size, config.optimizer.learning_rate) == (250, 0.02)
  assert config.optimizer.weight_decay == 5e-4
  assert (config.schedule.name, config.schedule.warmup_epochs) == ('cosine', 5.0)
  # The photo study's winner: colour faces, flip at test time (README "Models that hold up").
  assert config.data.builder_config == 'rgb75' and config.flip_test
  large = utkface.get_config('1024')
  assert large.batch_size == 1024
  assert large.optimizer.learning_rate == pytest.approx(0.02 * 1024 / 250)
  assert large.schedule.warmup_epochs == 5.0


def test_adience_transfer_starts_every_fold_from_the_named_run():
  config = _load('adience_transfer').get_config('runs/utk_b250')
  assert config.init_from == 'runs/utk_b250' and config.init_checkpoint == 'best'
  assert config.init_heads and config.data.name == 'tfds_adience'
  assert _load('adience_transfer').get_config().init_from == 'shipped'
  assert config.data.builder_config == 'rgb75'


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda path: path.stem)
def test_every_config_file_passes_the_config_checks(path, tmp_path):
  config = _load(path.stem).get_config()
  if config.init_from:  # checked to exist: stand in a directory for the run to start from
    config.init_from = str(tmp_path)
  config_checks.check_config(config)
