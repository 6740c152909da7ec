"""Cross-validation on a small synthetic demo build: five folds of a few steps each, the report
with five rows plus mean ± std and its pictures, fold-by-fold resume, and the command line."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from facialnet_jax import cross_validate
from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import restore
from tests.conftest import REPO_ROOT
from tfds_adience import tfds_adience_dataset_builder

# configs/demo.py, shrunk: 40 subjects × 2 faces (16 per fold), 1 epoch of 3 steps per fold.
SMALL_DEMO_OVERRIDES = {
    'data.demo': False, 'num_epochs': 1, 'batch_size': 20, 'eval_batch_size': 12,
    'log_every_steps': 2, 'data.validation_fraction': 0.2, 'checkpoint.keep': 1,
}


def demo_config(data_dir: str):
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  for key, value in (SMALL_DEMO_OVERRIDES | {'data.data_dir': data_dir}).items():
    section, _, leaf = key.rpartition('.')
    (config[section] if section else config)[leaf] = value
  return config


@pytest.fixture(scope='module')
def data_dir(small_demo_data_dir):
  return small_demo_data_dir


@pytest.fixture(scope='module')
def finished(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cv')
  report_path = cross_validate.cross_validate(demo_config(data_dir), str(workdir))
  return str(workdir), report_path


def test_five_folds_and_a_report_with_mean_and_std(finished):
  workdir, report_path = finished
  text = open(report_path).read()
  fold_rows = re.findall(r'^\| This code, test fold (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$',
                         text, re.MULTILINE)
  assert [int(row[0]) for row in fold_rows] == [0, 1, 2, 3, 4]
  mean_row = re.search(r'^\| \*\*This code, mean ± std over 5 folds\*\* \| (.*) \|$', text,
                       re.MULTILINE)
  cells = [re.fullmatch(r'\*\*([\d.]+) ± ([\d.]+)\*\*', c.strip()).groups()
           for c in mean_row.group(1).split('|')]
  for column, (mean, std) in enumerate(cells):
    values = [float(row[column + 1]) for row in fold_rows]
    assert float(mean) == pytest.approx(np.mean(values), abs=0.06)
    assert float(std) == pytest.approx(np.std(values, ddof=1), abs=0.06)
  assert '50.7 ± 5.1' in text and '86.8 ± 1.4' in text and '72.8' in text and '94.2' in text
  assert len(re.findall(r'^\| [^|]*\(quoted\) \|', text, re.MULTILINE)) == 3
  assert "| *For scale: always the test fold's most common class* |" in text
  assert 'Wall time, training and test evaluation of the 5 folds: ' in text
  # Accuracy per group, test folds pooled: the gender rows' counts add up to every labelled
  # test image of the five folds.
  assert '## Accuracy by group (5 test folds pooled)' in text
  gender_rows = re.findall(r'^\| gender (male|female) \| (\d+) \| [\d.]+ \((\d+)\) \|', text,
                           re.MULTILINE)
  assert [row[0] for row in gender_rows] == ['male', 'female']
  summary = json.load(open(os.path.join(workdir, 'cross_validation.json')))
  labelled = sum(f['num_labelled']['gender'] for f in summary['folds'].values())
  assert sum(int(row[2]) for row in gender_rows) == labelled
  for picture in ('training_curves.png', 'confusion_age.png', 'confusion_gender.png',
                  'accuracy_by_age.png'):
    assert f']({picture})' in text
    with open(os.path.join(workdir, picture), 'rb') as f:
      assert f.read(4) == b'\x89PNG'


def test_every_test_image_of_each_fold_is_counted(finished, data_dir):
  workdir, _ = finished
  builder = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=data_dir)
  with open(os.path.join(workdir, cross_validate.SUMMARY_FILE)) as f:
    summary = json.load(f)
  for fold in range(5):
    metrics = summary['folds'][str(fold)]
    assert metrics['data']['tfds_split'] == f'fold{fold}'
    assert metrics['num_examples'] == builder.info.splits[f'fold{fold}'].num_examples == 16
    assert metrics['num_labelled']['age'] == sum(
        sum(row) for row in metrics['confusion_matrices']['age']['rows_true_columns_predicted'])
    saved = restore.load_config(os.path.join(workdir, f'fold_{fold}'))
    assert saved.data.test_fold == fold
  ages = [summary['folds'][str(f)]['age_accuracy'] for f in range(5)]
  assert summary['mean_std']['age_accuracy']['mean'] == pytest.approx(np.mean(ages))
  assert summary['mean_std']['age_accuracy']['std'] == pytest.approx(np.std(ages, ddof=1))


def test_rerun_resumes_fold_by_fold(finished, data_dir):
  workdir, report_path = finished
  results = os.path.join(workdir, 'fold_3', run_directory.RESULTS_FILE)
  trained_at = os.path.getmtime(results)
  evaluation = cross_validate.fold_evaluation_dir(workdir, 1, 'best')
  os.rename(evaluation, evaluation + '_moved')  # fold 1 trained, its evaluation lost
  os.remove(report_path)
  cross_validate.cross_validate(demo_config(data_dir), workdir)
  assert os.path.getmtime(results) == trained_at  # nothing was retrained
  assert os.path.exists(os.path.join(evaluation, 'metrics.json'))
  assert os.path.exists(report_path)
  with pytest.raises(UserError, match='num_epochs: 1 there, 2 now'):
    config = demo_config(data_dir)
    config.num_epochs = 2
    cross_validate.cross_validate(config, workdir, folds=[0])


def test_only_fold_based_data(data_dir, tmp_path):
  config = demo_config(data_dir)
  config.data.name = 'tfds_utkface'
  with pytest.raises(UserError, match='fold protocol'):
    cross_validate.cross_validate(config, str(tmp_path))


def test_command_line_on_the_finished_workdir(finished, data_dir):
  workdir, report_path = finished
  overrides = SMALL_DEMO_OVERRIDES | {'data.data_dir': data_dir}
  result = subprocess.run(
      [sys.executable, '-m', 'facialnet_jax.cross_validate', '--config=configs/demo.py',
       f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Cross-validation report: {report_path}' in result.stdout
  assert 'Fold 5/5 (test fold 4)' in result.stderr
