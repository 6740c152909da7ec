"""Report pieces: confusion matrices leave unknown labels out, per-class numbers, the Table 5
markdown (quoted rows marked, mean ± std, unfinished protocols flagged)."""

import numpy as np
import pytest

from facialnet_jax.data import age_groups
from facialnet_jax.reports import confusion
from facialnet_jax.reports import curves
from facialnet_jax.reports import report


def test_confusion_matrix_leaves_unknown_labels_out():
  labels = np.array([0, 1, 1, -1, 2, 2, 2])
  predicted = np.array([0, 1, 2, 0, 2, 2, 0])
  matrix = confusion.confusion_matrix(labels, predicted, 3)
  assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]
  rows = confusion.per_class_precision_recall(matrix, ('a', 'b', 'c'))
  assert rows[0] == {'class': 'a', 'support': 1, 'predicted': 2, 'precision': 0.5, 'recall': 1.0}
  assert rows[2]['precision'] == pytest.approx(2 / 3) and rows[2]['recall'] == pytest.approx(2 / 3)
  empty = confusion.per_class_precision_recall(np.zeros((2, 2), int), ('x', 'y'))
  assert empty[0]['precision'] is None and empty[0]['recall'] is None


def test_confusion_csv_round_trip(tmp_path):
  matrix = np.arange(64).reshape(8, 8)
  confusion.write_confusion_csv(matrix, age_groups.AGE_CLASS_NAMES, str(tmp_path / 'm.csv'))
  assert (tmp_path / 'm.csv').read_text().splitlines()[0] == \
      'true \\ predicted,0-2,4-6,8-13,15-20,25-32,38-43,48-53,60-100'
  np.testing.assert_array_equal(confusion.read_confusion_csv(str(tmp_path / 'm.csv')), matrix)


def _fold(fold, gender, age, one_off):
  return report.FoldResult(fold, 100, 90, 80, 10, 1, {
      'gender_accuracy': gender, 'age_accuracy': age, 'age_one_off_accuracy': one_off},
                           {'gender_accuracy': 0.5, 'age_accuracy': 0.3 + fold / 10,
                            'age_one_off_accuracy': 0.6})


def test_majority_class_rates():
  age = np.zeros((8, 8), int)
  age[:, 0] = [1, 2, 0, 0, 5, 2, 0, 0]  # 25-32 (index 4) is the most common true class
  rates = report.majority_class_metrics({'gender': np.array([[3, 0], [1, 0]]), 'age': age})
  assert rates == {'gender_accuracy': 0.75, 'age_accuracy': 0.5, 'age_one_off_accuracy': 0.7}


def test_markdown_table_five_layout_and_partial_protocol():
  folds = [_fold(0, 0.80, 0.50, 0.90), _fold(1, 0.90, 0.40, None), _fold(2, 0.85, 0.45, 0.80)]
  text = report.cross_validation_markdown(folds, title='T', setup_lines=['Data: x'],
                                          num_folds_expected=5, pictures=[('Curves', 'c.png')])
  assert '**Only 3 of 5 folds are done' in text
  assert '| Levi & Hassner 2015, CNN (quoted) | 86.8 ± 1.4 | 50.7 ± 5.1 | 84.7 ± 2.2 |' in text
  assert '| FacialNet paper, with augmentation (quoted) | 94.2 | 72.8 | — |' in text
  assert '| This code, test fold 1 | 90.0 | 40.0 | — |' in text
  # Sample std (n - 1) of 80, 90, 85 is 5.0; the 1-off mean is over the two folds that have it.
  assert '| **This code, mean ± std over 3 folds** | **85.0 ± 5.0** | **45.0 ± 5.0** | ' \
      '**85.0 ± 7.1** |' in text
  assert '| *For scale: always the test fold\'s most common class* | *50.0* | *40.0* | *60.0* |' \
      in text
  assert '![Curves](c.png)' in text


def test_a_one_epoch_run_shows_its_points_on_an_axis_from_epoch_zero(tmp_path, monkeypatch):
  figures = []
  monkeypatch.setattr(curves.plt, 'close', figures.append)
  run = curves.Curves('fold 0', {'train/loss': [(10, 1.2)],
                                 'train/gender_accuracy': [(10, 0.8)],
                                 'validation/gender_accuracy': [(10, 0.9)]}, steps_per_epoch=10)
  curves.plot_training_curves([run], 'one epoch', str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').stat().st_size > 0
  loss_panel, gender_panel = figures[0].axes[:2]
  for panel in (loss_panel, gender_panel):
    assert panel.lines and all(line.get_marker() == 'o' for line in panel.lines)
    assert panel.get_xlim()[0] == 0 and panel.get_xlim()[1] >= 1
