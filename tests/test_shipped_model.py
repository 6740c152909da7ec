"""Exported models and the model shipped with the package: the same predictions as the checkpoint
they came from, usable by predict and evaluate without --workdir, and the documented accuracy on
fairface-dev (README "Shipped model")."""

import json
import os

import numpy as np
import pytest

from benchmarks import score_photos
from facialnet_jax.inference import face_prediction
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import exported_model
from facialnet_jax.training import restore
from facialnet_jax.training import train
from tests.conftest import tiny_config
from tests.test_evaluate import run_module

# The model card's fairface-dev numbers (README "Shipped model"): largest face of each of the 180
# photos, predict's defaults (flip on for this model).
FAIRFACE_DEV = {'found_percent': 100.0, 'gender_accuracy_percent': 81.1,
                'age_agreement_percent': 61.1}
FAIRFACE_DEV_GENDER_BY_DECADE = {'0-2': 75, '3-9': 75, '10-19': 80, '20-29': 90, '30-39': 80,
                                 '40-49': 80, '50-59': 85, '60-69': 70, '70+': 95}


@pytest.fixture(scope='module')
def ema_workdir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(tiny_config(num_epochs=1, **{'ema.decay': 0.9}), str(directory))
  return str(directory)


def test_an_exported_model_predicts_as_its_checkpoint(ema_workdir, tmp_path):
  run = restore.restore_run(ema_workdir, 'latest')
  exported_model.save_model(run, str(tmp_path / 'model'))
  loaded = exported_model.load_run(str(tmp_path / 'model'))
  assert loaded.step == run.step and loaded.channels == run.channels
  faces = np.random.default_rng(0).integers(0, 256, (5, 75, 75, 1), np.uint8)
  expected = face_prediction.make_predictor(run)(faces)
  got = face_prediction.make_predictor(loaded)(faces)
  for head in ('gender', 'age'):
    np.testing.assert_allclose(got[head], expected[head], rtol=1e-6, atol=1e-7)
  # The weights saved are the moving average that evaluation uses, not the trained ones.
  with np.load(tmp_path / 'model' / exported_model.PARAMS_FILE) as arrays:
    key = next(k for k in arrays.files if k.startswith('params/'))
    leaf = run.state.ema_params
    for part in key.split('/')[1:]:
      leaf = leaf[part]
    np.testing.assert_array_equal(arrays[key], np.asarray(leaf))


def test_a_folder_without_an_exported_model_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match='holds no exported model'):
    exported_model.load_model(str(tmp_path))


def test_the_shipped_model_is_in_the_package_and_small():
  directory = exported_model.SHIPPED_DIR
  assert exported_model.is_exported_model(directory)
  size = sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
  assert size <= 20 * 2**20
  run = exported_model.load_run(None)
  assert (run.channels, run.stored_image_size, run.config.data.builder_config) == (3, 75, 'rgb75')
  assert run.config.flip_test  # predict's default for this model


def test_the_shipped_model_gives_its_documented_numbers_on_fairface_dev(shared_data):
  folder = shared_data / 'fairface-dev'
  with open(folder / 'ground_truth.json') as f:
    truth = json.load(f)
  photos, _ = score_photos.run_prediction([str(folder / row['filename']) for row in truth])
  scores = score_photos.score(truth, photos)
  for key, value in FAIRFACE_DEV.items():
    assert scores[key] == pytest.approx(value, abs=1.0), key
  for decade, value in FAIRFACE_DEV_GENDER_BY_DECADE.items():
    assert scores['by_decade'][decade]['gender_accuracy_percent'] == pytest.approx(value, abs=1)


def test_predict_without_a_workdir_uses_the_shipped_model(shared_data, tmp_path):
  photo = shared_data / 'fairface-dev' / 'fairface_0004.jpg'
  output = tmp_path / 'out.json'
  result = run_module('facialnet_jax.predict', str(photo), '--output_json', str(output))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'shipped_model (exported checkpoint, step 4900' in result.stdout
  assert 'with flip' in result.stdout
  with open(output) as f:
    faces = json.load(f)['photos'][0]['faces']
  assert faces and faces[0]['gender'] in ('male', 'female')


def test_fine_tuning_starts_from_an_exported_model(ema_workdir, tmp_path):
  from facialnet_jax.runtime import sharding  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import fine_tune, train_state, models, optim
  import jax  # pylint: disable=import-outside-toplevel
  run = restore.restore_run(ema_workdir, 'latest')
  exported_model.save_model(run, str(tmp_path / 'model'))
  config = tiny_config(init_from=str(tmp_path / 'model'))
  mesh = sharding.create_mesh()
  fresh = train_state.create_train_state_on_mesh(
      models.create_model(config.model), optim.create_optimizer(config, 9), 1, (75, 75, 1), mesh)
  started = fine_tune.initialise_from(config, fresh, 1, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.params),
               jax.device_get(run.state.ema_params))


def test_fine_tuning_from_the_shipped_model_checks_its_channels():
  from facialnet_jax.runtime import sharding  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import fine_tune  # pylint: disable=import-outside-toplevel
  config = tiny_config(init_from='shipped')
  with pytest.raises(UserError, match='trained on RGB images and this data set is grayscale'):
    fine_tune.initialise_from(config, None, 1, sharding.create_mesh())
