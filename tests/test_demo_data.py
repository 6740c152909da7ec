"""The synthetic demo data: real Adience layout and format, subject-exclusive folds, learnable
labels, and ensure_demo_dataset's one-time build."""

import collections
import time

import cv2
import numpy as np
import pytest

from facialnet_jax.data import adience_files
from facialnet_jax.data import age_groups
from facialnet_jax.data import demo_data
from facialnet_jax.data import preprocessing


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('demo')
  summary = demo_data.write_demo_raw(out_dir, num_subjects=80, images_per_subject=5)
  rows, malformed = adience_files.read_folds(out_dir)
  assert not malformed
  return summary, rows


def test_layout_and_fold_format(demo):
  summary, rows = demo
  assert summary.num_images == len(rows) == 400
  assert summary.rows_per_fold == (80, 80, 80, 80, 80)
  for fold_file in adience_files.FOLD_FILE_NAMES:
    lines = (summary.out_dir / fold_file).read_text().splitlines()
    assert lines[0] == adience_files.FOLD_HEADER
    assert all(len(line.split('\t')) == 12 for line in lines)
  for row in rows:
    assert (summary.out_dir / row.image_path('faces')).read_bytes()[:2] == b'\xff\xd8'
  assert 'SYNTHETIC' in (summary.out_dir / 'README.txt').read_text()
  assert all(row.user_id.startswith('synthetic') for row in rows)


def test_folds_are_subject_exclusive_and_balanced(demo):
  _, rows = demo
  folds_of_user = collections.defaultdict(set)
  for row in rows:
    folds_of_user[row.user_id].add(row.fold)
  assert all(len(folds) == 1 for folds in folds_of_user.values())
  for fold in range(5):
    groups = {age_groups.age_group_from_label(row.age_label) for row in rows if row.fold == fold}
    assert set(range(8)) <= groups


def test_some_labels_are_unknown_and_some_ages_are_bare_years(demo):
  _, rows = demo
  assert any(age_groups.gender_from_label(row.gender_label) == -1 for row in rows)
  assert any(row.age_label == 'None' for row in rows)
  assert any(row.age_label.isdigit() for row in rows)
  known_ages = [row for row in rows if row.age_label != 'None']
  assert all(age_groups.age_group_from_label(row.age_label) >= 0 for row in known_ages)


def test_deterministic(demo, tmp_path):
  summary, _ = demo
  demo_data.write_demo_raw(tmp_path, num_subjects=80, images_per_subject=5)
  for name in adience_files.FOLD_FILE_NAMES[:2]:
    assert (tmp_path / name).read_text() == (summary.out_dir / name).read_text()
  image = 'faces/synthetic0007@N00/coarse_tilt_aligned_face.8.synthetic_0007_003_o.jpg'
  assert (tmp_path / image).read_bytes() == (summary.out_dir / image).read_bytes()


def test_a_linear_model_learns_gender_and_age_group_on_an_unseen_fold(demo):
  """Stronger models (FacialNet) must do at least this well; chance is 50% and about 12%."""
  summary, rows = demo
  features, genders, ages, folds = [], [], [], []
  for row in rows:
    face = preprocessing.preprocess_face((summary.out_dir / row.image_path('faces')).read_bytes())
    features.append(cv2.resize(face, (25, 25), interpolation=cv2.INTER_AREA).ravel() / 255)
    genders.append(age_groups.gender_from_label(row.gender_label))
    ages.append(age_groups.age_group_from_label(row.age_label))
    folds.append(row.fold)
  features = np.hstack([np.array(features), np.ones((len(rows), 1))])
  genders, ages, folds = np.array(genders), np.array(ages), np.array(folds)
  for labels, num_classes, minimum_accuracy in ((genders, 2, 0.8), (ages, 8, 0.35)):
    train = (folds != 0) & (labels >= 0)
    test = (folds == 0) & (labels >= 0)
    targets = np.eye(num_classes)[labels[train]]
    x = features[train]
    weights = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ targets)
    accuracy = np.mean(np.argmax(features[test] @ weights, axis=1) == labels[test])
    assert accuracy >= minimum_accuracy


def test_command_line(tmp_path, capsys):
  demo_data.main([str(tmp_path), '--num_subjects', '5', '--images_per_subject', '1',
                  '--image_size', '32'])
  assert 'SYNTHETIC' in capsys.readouterr().out
  assert len(list((tmp_path / 'faces').rglob('*.jpg'))) == 5


def test_command_line_refuses_a_bad_count_in_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    demo_data.main([str(tmp_path / 'out'), '--num_subjects', '4'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
      'error: num_subjects must be at least 5 (one per fold).')
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_ensure_demo_dataset_builds_once(tmp_path):
  kwargs = dict(num_subjects=10, images_per_subject=3, image_size=48)
  builder = demo_data.ensure_demo_dataset(tmp_path, **kwargs)
  assert builder.is_prepared()
  assert builder.info.splits.total_num_examples == 30
  assert builder.info.metadata['dropped_rows_total'] == 0
  raw_dir = demo_data.demo_tfds_data_dir(tmp_path, **kwargs) / 'raw'
  assert (raw_dir / demo_data.COMPLETE_MARKER).exists()
  # Apart from where a real tfds_adience would be built in the same data_dir.
  assert not (tmp_path / 'tfds_adience').exists()
  start = time.perf_counter()
  again = demo_data.ensure_demo_dataset(tmp_path, **kwargs)
  assert time.perf_counter() - start < 2
  assert again.data_dir == builder.data_dir
  example = again.as_data_source(split='fold0')[0]
  assert tuple(example['image'].shape) == (75, 75, 1)


def test_demo_data_dir_defaults_to_the_tfds_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert demo_data.demo_tfds_data_dir('') == demo_data.demo_tfds_data_dir(tmp_path)
  assert demo_data.demo_tfds_data_dir(None).parent.parent == tmp_path
