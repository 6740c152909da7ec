"""Accuracy per group: age bands from exact ages, per-group counts and accuracies equal a count by
hand, and the per-group tables reach evaluate's metrics.json and a run's results.json."""

import json
import os
import types

import numpy as np
import pytest

from facialnet_jax.data import input_pipeline
from facialnet_jax.reports import groups
from facialnet_jax.runtime import run_directory
from facialnet_jax.training import train
from tests.conftest import tiny_config


def test_age_bands_cover_every_age_and_keep_unknown_apart():
  ages = np.array([-1, 0, 2, 3, 9, 10, 19, 20, 35, 69, 70, 116])
  names = [groups.AGE_BANDS[b] if b >= 0 else None for b in groups.age_band(ages)]
  assert names == [None, '0-2', '0-2', '3-9', '3-9', '10-19', '10-19', '20-29', '30-39',
                   '60-69', '70+', '70+']


@pytest.mark.parametrize('text, band', [('0-2', '0-2'), ('3-9', '3-9'), ('30-39', '30-39'),
                                        ('more than 70', '70+'), ('70+', '70+')])
def test_fairface_decades_map_to_bands(text, band):
  assert groups.AGE_BANDS[groups.age_band_of_decade(text)] == band


def test_an_unknown_decade_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown age label'):
    groups.age_band_of_decade('adult')


def test_per_group_equals_a_count_by_hand():
  split = types.SimpleNamespace(
      gender=np.array([0, 1, 1, 0, -1, 1]), age_group=np.array([0, 1, -1, 4, 4, 7]),
      age=np.array([1, 5, 5, 30, 31, 80]), race=np.array([0, 0, 1, 1, 1, -1]),
      race_names=('white', 'black'))
  predicted_gender = np.array([0, 0, 1, 0, 1, 1])
  predicted_age = np.array([0, 2, 3, 6, 4, 7])
  table = groups.per_group(split, {'gender': np.eye(2)[predicted_gender],
                                   'age': np.eye(8)[predicted_age]})
  assert list(table) == ['age_band', 'gender', 'race']
  assert list(table['age_band']) == ['0-2', '3-9', '30-39', '70+']
  child = table['age_band']['3-9']
  # Two children: gender right for one; one known age group, off by one.
  assert (child['count'], child['gender_count'], child['gender_accuracy']) == (2, 2, 0.5)
  assert (child['age_count'], child['age_accuracy'], child['age_one_off_accuracy']) == (1, 0, 1)
  thirties = table['age_band']['30-39']
  assert (thirties['gender_count'], thirties['gender_accuracy']) == (1, 1.0)
  assert (thirties['age_accuracy'], thirties['age_one_off_accuracy']) == (0.5, 0.5)
  assert table['race']['black']['count'] == 3 and 'others' not in table['race']
  assert table['gender']['female']['gender_accuracy'] == pytest.approx(2 / 3)
  text = groups.format_table(table)
  assert 'age band 3-9' in text and '50.0' in text


def test_without_exact_ages_the_adience_groups_are_used():
  split = types.SimpleNamespace(gender=np.array([0, 1]), age_group=np.array([2, 5]))
  table = groups.per_group(split, {'gender': np.eye(2)[[0, 1]], 'age': np.eye(8)[[2, 5]]})
  assert list(table['age_group']) == ['8-13', '38-43']


def _group(count, gender_accuracy, age_accuracy):
  return {'count': count, 'gender_count': count, 'age_count': count,
          'gender_accuracy': gender_accuracy, 'age_accuracy': age_accuracy,
          'age_one_off_accuracy': age_accuracy}


def test_pooled_folds_weigh_by_count_and_keep_the_age_order():
  fold_a = {'age_group': {'25-32': _group(30, 1.0, 0.5), '60-100': _group(10, 0.5, 0.0)}}
  fold_b = {'age_group': {'8-13': _group(2, 0.0, 1.0), '25-32': _group(10, 0.0, 0.1)}}
  pooled = groups.pool([fold_a, fold_b])['age_group']
  assert list(pooled) == ['8-13', '25-32', '60-100']  # fold b's children first, by age
  assert pooled['25-32']['count'] == 40
  assert pooled['25-32']['gender_accuracy'] == pytest.approx(30 / 40)
  assert pooled['25-32']['age_accuracy'] == pytest.approx((15 + 1) / 40)


def test_picture_is_written(tmp_path):
  table = {'0-2': {'count': 3, 'gender_accuracy': 0.5}, '3-9': {'count': 2, 'gender_accuracy': None}}
  path = tmp_path / 'by_age.png'
  groups.plot_by_age({'a': (table, 'gender_accuracy'), 'b': (table, 'gender_accuracy')},
                     str(path), 'title')
  assert path.read_bytes()[:4] == b'\x89PNG'


def test_host_split_carries_ages_through_a_validation_carve():
  split = input_pipeline.HostSplit(
      np.zeros((40, 4, 4, 1), np.uint8), np.zeros(40, np.int32), np.zeros(40, np.int32),
      np.array([str(i) for i in range(40)]), np.arange(40, dtype=np.int32),
      np.arange(40, dtype=np.int32) % 5, ('a', 'b', 'c', 'd', 'e'))
  train_part, validation = input_pipeline.carve_validation(split, 0.3)
  assert len(train_part) + len(validation) == 40
  np.testing.assert_array_equal(validation.age, validation.subject_id.astype(int))
  assert validation.race_names == split.race_names


def test_results_json_holds_test_accuracy_by_group(tmp_path):
  results = train.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
  with open(os.path.join(tmp_path, run_directory.RESULTS_FILE)) as f:
    written = json.load(f)
  table = written['groups']['test']['final']
  # Synthetic data have no exact ages: by Adience group, and by gender.
  assert set(table) == {'age_group', 'gender'}
  counted = sum(values['gender_count'] for values in table['gender'].values())
  known = int((input_pipeline.load_splits(tiny_config())['test'].gender >= 0).sum())
  assert counted == known
  # The per-group accuracies average back to the split's accuracy.
  correct = sum(v['gender_accuracy'] * v['gender_count'] for v in table['gender'].values())
  assert correct / counted == pytest.approx(results['test']['final']['gender_accuracy'])
