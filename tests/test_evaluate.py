"""Evaluation from checkpoints: numbers equal a by-hand computation, every example counts, the
checkpoint restores on another device count, and other data sets and bad workdirs are handled."""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from facialnet_jax import evaluate
from facialnet_jax.data import age_groups
from facialnet_jax.data import demo_data
from facialnet_jax.data import input_pipeline
from facialnet_jax.reports import confusion
from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import augment
from facialnet_jax.training import device_data
from facialnet_jax.training import restore
from facialnet_jax.training import train
from tests.conftest import REPO_ROOT, tiny_config
from tfds_adience import tfds_adience_dataset_builder

# 21 test examples in batches of 16: the last batch is padded with 11 rows that must not count.
NUM_TEST = 21
EVAL_BATCH = 16


def run_module(module: str, *args, devices: int = 1) -> subprocess.CompletedProcess:
  """`python -m MODULE ARGS` on `devices` simulated CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A one-epoch tiny synthetic run (9 steps)."""
  directory = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(tiny_config(num_epochs=1, eval_batch_size=EVAL_BATCH), str(directory))
  return str(directory)


@pytest.fixture(scope='module')
def test_evaluation(workdir):
  run = restore.restore_run(workdir, 'best')
  return evaluate.evaluate(run, evaluate.load_evaluation_data(run, 'test'))


def test_metrics_equal_a_by_hand_computation_over_every_example(test_evaluation):
  evaluation = test_evaluation
  run, split = evaluation.run, evaluation.data.split
  assert len(split) == NUM_TEST and NUM_TEST % EVAL_BATCH
  # The probabilities, recomputed in one plain forward pass over the whole split.
  images = augment.prepare_images(split.image, None, run.config)
  logits = run.model.apply({'params': run.state.params}, images, train=False)
  for head in ('gender', 'age'):
    np.testing.assert_allclose(evaluation.probabilities[head],
                               np.asarray(jax.nn.softmax(logits[head])), atol=1e-5)
  gender_predicted = evaluation.probabilities['gender'].argmax(-1)
  age_predicted = evaluation.probabilities['age'].argmax(-1)
  known_gender, known_age = split.gender >= 0, split.age_group >= 0
  assert (~known_gender).any() or (~known_age).any()  # unknown labels are masked out
  by_hand = {
      'gender_accuracy': np.mean(gender_predicted[known_gender] == split.gender[known_gender]),
      'age_accuracy': np.mean(age_predicted[known_age] == split.age_group[known_age]),
      'age_one_off_accuracy': np.mean(
          np.abs(age_predicted[known_age] - split.age_group[known_age]) <= 1),
  }
  for name, value in by_hand.items():
    assert evaluation.metrics[name] == pytest.approx(value, abs=1e-6), name
  age_confusion = evaluation.confusion['age'].copy()
  assert age_confusion.sum() == known_age.sum()
  for true, predicted in zip(split.age_group[known_age], age_predicted[known_age]):
    age_confusion[true, predicted] -= 1
  assert not age_confusion.any()
  age_rows = evaluation.to_json()['per_class']['age']
  for group, row in enumerate(age_rows):
    predicted_as = age_predicted[known_age] == group
    truly = split.age_group[known_age] == group
    both = np.sum(predicted_as & truly)
    assert row['support'] == truly.sum()
    assert row['precision'] == (pytest.approx(both / predicted_as.sum()) if predicted_as.any()
                                else None)
    assert row['recall'] == (pytest.approx(both / truly.sum()) if truly.any() else None)


def test_agrees_with_the_test_numbers_training_reported(workdir, test_evaluation):
  with open(os.path.join(workdir, run_directory.RESULTS_FILE)) as f:
    reported = json.load(f)['test']['best']
  for name in ('gender_accuracy', 'age_accuracy', 'age_one_off_accuracy', 'age_loss'):
    assert test_evaluation.metrics[name] == pytest.approx(reported[name], abs=1e-6)


def test_cli_restores_onto_two_devices_and_writes_json_csv_png(workdir, test_evaluation,
                                                               tmp_path):
  result = run_module('facialnet_jax.evaluate', f'--workdir={workdir}', '--checkpoint=best',
                      '--batch_size=6', f'--output_dir={tmp_path}', devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'synthetic split test (21 examples)' in result.stdout
  with open(tmp_path / evaluate.METRICS_FILE) as f:
    written = json.load(f)
  assert written['num_examples'] == NUM_TEST
  for name in ('gender_accuracy', 'age_accuracy', 'age_one_off_accuracy'):
    assert written[name] == pytest.approx(test_evaluation.metrics[name], abs=1e-6)
  assert written['confusion_matrices']['age']['rows_true_columns_predicted'] == \
      test_evaluation.confusion['age'].tolist()
  with open(tmp_path / evaluate.PREDICTIONS_FILE) as f:
    assert len(list(csv.DictReader(f))) == NUM_TEST
  for head in ('gender', 'age'):
    assert (tmp_path / f'confusion_{head}.png').read_bytes()[:4] == b'\x89PNG'
    with open(tmp_path / f'confusion_{head}.csv') as f:
      rows = list(csv.reader(f))
    assert np.array([r[1:] for r in rows[1:]], int).tolist() == \
        test_evaluation.confusion[head].tolist()


def test_predictions_csv_names_the_classes_and_unknown_labels(test_evaluation, tmp_path):
  evaluate.write_predictions_csv(test_evaluation, tmp_path / 'predictions.csv')
  with open(tmp_path / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  split, probabilities = test_evaluation.data.split, test_evaluation.probabilities
  names = {'gender': ('unknown', *age_groups.GENDER_CLASS_NAMES),
           'age': ('unknown', *age_groups.AGE_CLASS_NAMES)}  # -1 → 'unknown'
  for head, column, labels in (('gender', 'gender', split.gender),
                               ('age', 'age_group', split.age_group)):
    assert [row[column] for row in rows] == [names[head][label + 1] for label in labels]
    assert [row[f'{column}_predicted'] for row in rows] == [
        names[head][label + 1] for label in probabilities[head].argmax(-1)]
  assert 'unknown' in {row['gender'] for row in rows} | {row['age_group'] for row in rows}


def test_flip_confusion_matrices_say_so_in_their_titles(test_evaluation, tmp_path, monkeypatch):
  titles = []
  monkeypatch.setattr(confusion, 'plot_confusion_matrix',
                      lambda matrix, classes, title, path: titles.append(title))
  evaluate.write_evaluation(test_evaluation, tmp_path / 'plain')
  evaluate.write_evaluation(dataclasses.replace(test_evaluation, flip=True), tmp_path / 'flip')
  assert len(titles) == 4
  assert not any('flip' in title for title in titles[:2])
  assert all(title.endswith('labelled images, with flip') for title in titles[2:])


def test_a_streaming_run_is_evaluated_by_streaming_to_the_same_numbers(workdir, test_evaluation,
                                                                        monkeypatch):
  # A run trained with data.pipeline='streaming' is one whose data need not fit on the device:
  # evaluate must not copy a whole split there, and must give the device path's numbers.
  run = restore.restore_run(workdir, 'best')
  run.config.data.pipeline = 'streaming'

  def copies_the_whole_split(*args, **kwargs):
    raise AssertionError('the whole split was copied onto the device')

  monkeypatch.setattr(device_data, 'DeviceEvaluator', copies_the_whole_split)
  streamed = evaluate.evaluate(run, evaluate.load_evaluation_data(run, 'test'))
  assert streamed.metrics == pytest.approx(test_evaluation.metrics, abs=1e-6)
  for head in ('gender', 'age'):
    np.testing.assert_allclose(streamed.probabilities[head],
                               test_evaluation.probabilities[head], atol=1e-6)


def test_protocol_splits_are_the_ones_training_used(workdir):
  run = restore.restore_run(workdir, 'latest')
  splits = input_pipeline.load_splits(run.config)
  for name in ('train', 'validation'):
    data = evaluate.load_evaluation_data(run, name)
    np.testing.assert_array_equal(data.split.gender, splits[name].gender)
  assert run.step == run.meta['steps_per_epoch']


def test_another_data_set_by_flags(workdir, tmp_path):
  """A synthetic-trained checkpoint evaluated on any split of a built TFDS data set."""
  raw = tmp_path / 'raw'
  demo_data.write_demo_raw(raw, num_subjects=10, images_per_subject=2, image_size=40, seed=1)
  builder = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=tmp_path / 'tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
  run = restore.restore_run(workdir, 'best')
  data = evaluate.load_evaluation_data(run, 'fold1+fold2', dataset='tfds_adience',
                                       data_dir=str(tmp_path / 'tfds'))
  assert data.dataset == 'tfds_adience/gray75' and len(data.split) == 8
  assert evaluate.evaluate(run, data, batch_size=5).confusion['gender'].sum() == \
      np.sum(data.split.gender >= 0)
  with pytest.raises(UserError, match='RGB images but the model .* grayscale'):
    restore.check_images_fit(run, np.zeros((2, 75, 75, 3), np.uint8), 'tfds_adience/rgb75')
  with pytest.raises(UserError, match='splits are'):
    evaluate.load_evaluation_data(run, 'test', dataset='tfds_adience',
                                  data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='in-memory synthetic'):
    evaluate.load_evaluation_data(run, 'fold1')


def test_wrong_workdir_checkpoint_or_mixed_runs_are_clear_errors(workdir, tmp_path):
  with pytest.raises(UserError, match='config.json'):
    restore.restore_run(str(tmp_path))
  with pytest.raises(UserError, match=r'No checkpoint of step 5 .* steps \[\d+\]'):
    restore.restore_run(workdir, '5')
  with pytest.raises(UserError, match='latest, best or a step'):
    restore.restore_run(workdir, 'newest')
  mixed = tmp_path / 'mixed'
  shutil.copytree(workdir, mixed)
  config = json.loads((mixed / 'config.json').read_text())
  config['model']['batch_norm'] = True
  (mixed / 'config.json').write_text(json.dumps(config))
  with pytest.raises(UserError, match='another model configuration .*batch_norm'):
    restore.restore_run(str(mixed))
  config['model']['batch_norm'] = False
  config['schedule']['name'] = 'plateau'  # another optimiser state than the checkpoint's
  (mixed / 'config.json').write_text(json.dumps(config))
  with pytest.raises(UserError, match='config'):
    restore.restore_run(str(mixed))


def test_a_cross_validation_workdir_names_its_fold_folders(workdir, tmp_path):
  cv = tmp_path / 'cv'
  for fold in (1, 0, 10):  # listed in fold order, not by name
    shutil.copytree(workdir, cv / f'fold_{fold}')
  (cv / 'fold_2').mkdir()  # not started: no config.json
  with pytest.raises(UserError, match=re.escape(
      f'{cv} is a cross-validation workdir; use --workdir {cv}/fold_0 (folds: fold_0, fold_1, '
      'fold_10).')):
    restore.restore_run(str(cv))


def test_cli_error_is_one_line(tmp_path):
  result = run_module('facialnet_jax.evaluate', f'--workdir={tmp_path}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'config.json' in result.stderr.strip().splitlines()[-1]
