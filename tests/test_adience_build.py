"""Builds of tfds_adience: the real adience-mini faces, archives vs folders, bad input, duplicates,
and the `tfds build` command line."""

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from facialnet_jax.data import adience_files
from facialnet_jax.data import demo_data
from facialnet_jax.data import tfds_common
from tfds_adience import tfds_adience_dataset_builder

REPO = pathlib.Path(__file__).resolve().parents[1]
ADIENCE_MINI = REPO.parent / 'shared' / 'data' / 'adience-mini'
needs_mini = pytest.mark.skipif(not ADIENCE_MINI.is_dir(),
                                reason='needs ../shared/data/adience-mini (real faces)')


def build(manual_dir, data_dir, config='gray75', **builder_kwargs):
  builder = tfds_adience_dataset_builder.Builder(config=config, data_dir=data_dir,
                                                 **builder_kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def read_split(builder, split):
  source = builder.as_data_source(split=split)
  return source.__getitems__(range(len(source)))


def identity(example):
  return (example['user_id'].decode(), example['face_id'].decode(),
          example['original_image'].decode())


def write_raw(directory, num_subjects=10, images_per_subject=2):
  demo_data.write_demo_raw(directory, num_subjects, images_per_subject, image_size=40, seed=3)
  return directory


@pytest.fixture(scope='module')
def raw_dir(tmp_path_factory):
  return write_raw(tmp_path_factory.mktemp('raw'))


@pytest.fixture(scope='module')
def folder_build(raw_dir, tmp_path_factory):
  return build(raw_dir, tmp_path_factory.mktemp('tfds'))


def copy_labels(raw_dir, destination):
  destination.mkdir(parents=True, exist_ok=True)
  for name in adience_files.FOLD_FILE_NAMES:
    shutil.copy(raw_dir / name, destination / name)
  return destination


def all_examples(builder):
  return {identity(example): example
          for split in adience_files.SPLIT_NAMES for example in read_split(builder, split)}


# ---------------------------------------------------------------------------------------------
# The real faces of adience-mini.


@pytest.fixture(scope='module')
def mini_rows():
  rows, malformed = adience_files.read_folds(ADIENCE_MINI)
  assert not malformed
  return {(row.user_id, row.face_id, row.original_image): row for row in rows}


@pytest.fixture(scope='module')
def mini_build(tmp_path_factory):
  return build(ADIENCE_MINI, tmp_path_factory.mktemp('mini'))


@pytest.mark.slow
@needs_mini
def test_mini_every_row_is_an_example_in_its_fold_or_a_counted_duplicate(mini_build, mini_rows):
  metadata = mini_build.info.metadata
  assert len(mini_rows) == 3812 and metadata['label_rows'] == 3812
  assert metadata['examples'] + metadata['dropped_rows_total'] == 3812
  # adience-mini holds byte-identical copies (same person, same photo under two names).
  assert metadata['dropped_rows_by_reason'] == {
      'malformed_line': 0, 'missing_image': 0, 'unreadable_image': 0, 'duplicate_row': 0,
      'duplicate_image': 225}
  seen = set()
  for fold, split in enumerate(adience_files.SPLIT_NAMES):
    examples = read_split(mini_build, split)
    assert len(examples) == metadata['examples_per_split'][split]
    for example in examples:
      assert mini_rows[identity(example)].fold == fold
      assert example['image'].shape == (75, 75, 1) and example['image'].dtype == np.uint8
      seen.add(identity(example))
  assert len(seen) == metadata['examples']
  # Each dropped duplicate names the kept row, which is in the same fold.
  assert metadata['dropped_rows_listed'] == metadata['dropped_rows_total']
  for dropped in metadata['dropped_rows']:
    kept_from = dropped['detail'].rsplit('kept from ', 1)[1]
    assert kept_from.split(' ')[0] == dropped['where'].split(' ')[0]


@pytest.mark.slow
@needs_mini
def test_mini_without_dedup_makes_all_3812_rows_examples(mini_rows, tmp_path):
  config = tfds_adience_dataset_builder.AdienceConfig(name='gray75_all', drop_duplicates=False)
  builder = build(ADIENCE_MINI, tmp_path, config=config)
  rows_per_fold = collections.Counter(row.fold for row in mini_rows.values())
  for fold, split in enumerate(adience_files.SPLIT_NAMES):
    assert builder.info.splits[split].num_examples == rows_per_fold[fold]
  assert builder.info.splits.total_num_examples == 3812
  assert builder.info.metadata['dropped_rows_total'] == 0


# ---------------------------------------------------------------------------------------------
# Raw layouts: folders and archives, faces and aligned.


def test_folder_build_labels_and_split_expressions(folder_build, raw_dir):
  rows, _ = adience_files.read_folds(raw_dir)
  assert folder_build.info.metadata['crops'] == 'faces'
  assert folder_build.info.metadata['examples'] == len(rows) == 20
  train, test = adience_files.train_and_test_splits(test_fold=2)
  assert (train, test) == ('fold0+fold1+fold3+fold4', 'fold2')
  train_users = {example['user_id'] for example in read_split(folder_build, train)}
  test_users = {example['user_id'] for example in read_split(folder_build, test)}
  assert len(train_users) == 8 and len(test_users) == 2 and not train_users & test_users
  features = folder_build.info.features
  assert features['gender'].names == ['m', 'f']
  assert features['age_group'].names == ['0-2', '4-6', '8-13', '15-20', '25-32', '38-43',
                                         '48-53', '60-100']
  row = rows[0]
  example = all_examples(folder_build)[(row.user_id, row.face_id, row.original_image)]
  assert example['age_label'].decode() == row.age_label
  assert features['gender'].int2str(example['gender']) == row.gender_label


def _write_tar(path, raw_dir, rename=lambda name: name, prefix=''):
  with tarfile.open(path, 'w:gz') as archive:
    for image in sorted((raw_dir / 'faces').rglob('*.jpg')):
      relative = image.relative_to(raw_dir).as_posix()
      archive.add(image, arcname=prefix + rename(relative))


def _write_zip(path, raw_dir):
  with zipfile.ZipFile(path, 'w') as archive:
    for image in sorted((raw_dir / 'faces').rglob('*.jpg')):
      archive.write(image, arcname='AdienceBenchmark/' + image.relative_to(raw_dir).as_posix())


@pytest.mark.parametrize('archive_name', ['faces.tar.gz', 'faces.zip'])
def test_archive_gives_the_same_examples_as_the_folder(archive_name, folder_build, raw_dir,
                                                       tmp_path):
  manual = copy_labels(raw_dir, tmp_path / 'manual')
  if archive_name.endswith('.zip'):
    _write_zip(manual / archive_name, raw_dir)
  else:
    _write_tar(manual / archive_name, raw_dir, prefix='./')
  builder = build(manual, tmp_path / 'tfds')
  assert builder.info.metadata['image_source'].startswith('archive ')
  from_archive, from_folder = all_examples(builder), all_examples(folder_build)
  assert from_archive.keys() == from_folder.keys()
  for key, example in from_archive.items():
    np.testing.assert_array_equal(example['image'], from_folder[key]['image'])


def test_aligned_archive_is_preferred_and_crops_can_be_chosen(raw_dir, tmp_path):
  manual = copy_labels(raw_dir, tmp_path / 'manual')
  shutil.copytree(raw_dir / 'faces', manual / 'faces')
  rename = lambda name: name.replace('faces/', 'aligned/', 1).replace(
      'coarse_tilt_aligned_face.', 'landmark_aligned_face.')
  _write_tar(manual / 'aligned.tar.gz', raw_dir, rename=rename)
  builder = build(manual, tmp_path / 'auto')
  assert builder.info.metadata['crops'] == 'aligned'
  assert builder.info.metadata['examples'] == 20
  config = tfds_adience_dataset_builder.AdienceConfig(name='gray75_faces', crops='faces')
  assert build(manual, tmp_path / 'faces', config=config).info.metadata['crops'] == 'faces'


def test_rgb_config_stores_rgb(raw_dir, tmp_path):
  builder = build(raw_dir, tmp_path, config='rgb96')
  image = read_split(builder, 'fold2')[0]['image']
  assert image.shape == (96, 96, 3) and image.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# Bad input: stop with one clear line by default, skip and count on request.


def _remove_image(manual, row):
  (manual / row.image_path('faces')).unlink()


def _corrupt_image(manual, row):
  (manual / row.image_path('faces')).write_bytes(b'this is not a JPEG')


def _break_line(manual, row):
  path = manual / adience_files.FOLD_FILE_NAMES[row.fold]
  lines = path.read_text().splitlines()
  lines[row.line - 1] = lines[row.line - 1].replace('\t', ' ')
  path.write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('damage, expected', [
    (_remove_image, 'is missing'), (_corrupt_image, 'is unreadable'),
    (_break_line, 'malformed label line')])
def test_bad_record_stops_the_build_with_one_line_naming_file_and_line(damage, expected, raw_dir,
                                                                       tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(raw_dir, manual)
  rows, _ = adience_files.read_folds(manual)
  row = rows[7]
  damage(manual, row)
  with pytest.raises(tfds_common.BadRecordError) as error:
    build(manual, tmp_path / 'tfds')
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'fold_{row.fold}_data.txt line {row.line}: ')
  assert expected in message and 'skip_bad_records=True' in message
  if damage is not _break_line:
    assert row.image_path('faces') in message


def test_image_missing_from_archive_stops_the_build(raw_dir, tmp_path):
  manual = copy_labels(raw_dir, tmp_path / 'manual')
  rows, _ = adience_files.read_folds(manual)
  _write_tar(manual / 'faces.tar.gz', raw_dir,
             rename=lambda name: 'elsewhere.jpg' if name == rows[3].image_path('faces') else name)
  with pytest.raises(tfds_common.BadRecordError, match=r'line \d+: image .* is not in archive .*'
                     r'faces.tar.gz looks incomplete'):
    build(manual, tmp_path / 'tfds')


def test_skip_bad_records_drops_and_counts_them(raw_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(raw_dir, manual)
  rows, _ = adience_files.read_folds(manual)
  _remove_image(manual, rows[1])
  _corrupt_image(manual, rows[5])
  _break_line(manual, rows[9])
  builder = build(manual, tmp_path / 'tfds', skip_bad_records=True)
  metadata = builder.info.metadata
  assert metadata['skip_bad_records'] is True
  assert metadata['dropped_rows_by_reason'] == {
      'malformed_line': 1, 'missing_image': 1, 'unreadable_image': 1, 'duplicate_row': 0,
      'duplicate_image': 0}
  assert {row['where'] for row in metadata['dropped_rows']} == {
      rows[index].where for index in (1, 5, 9)}
  assert builder.info.splits.total_num_examples == 17
  # The metadata is saved with the data set.
  reloaded = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=tmp_path / 'tfds')
  assert reloaded.info.metadata['dropped_rows_total'] == 3


def test_duplicates_are_dropped_and_conflicting_labels_masked(raw_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(raw_dir, manual)
  rows, _ = adience_files.read_folds(manual)
  first = rows[0]
  other = next(row for row in rows if row.fold == 0 and row.user_id != first.user_id)
  assert first.gender_label != other.gender_label and first.age_label != other.age_label
  # A repeated line, and a byte-identical copy of `first`'s image under another subject's row.
  fold_file = manual / adience_files.FOLD_FILE_NAMES[0]
  fold_file.write_text(fold_file.read_text() + fold_file.read_text().splitlines()[1] + '\n')
  shutil.copy(manual / first.image_path('faces'), manual / other.image_path('faces'))
  builder = build(manual, tmp_path / 'tfds')
  metadata = builder.info.metadata
  assert metadata['dropped_rows_by_reason']['duplicate_row'] == 1
  assert metadata['dropped_rows_by_reason']['duplicate_image'] == 1
  assert builder.info.splits.total_num_examples == 19
  examples = all_examples(builder)
  assert (other.user_id, other.face_id, other.original_image) not in examples
  kept = examples[(first.user_id, first.face_id, first.original_image)]
  assert kept['gender'] == -1 and kept['age_group'] == -1
  assert kept['age_label'].decode() == first.age_label
  assert metadata['labels_masked_by_conflicting_duplicates'] == {'age_group': 1, 'gender': 1}


def test_missing_files_give_clear_errors(raw_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='--manual_dir'):
    build(tmp_path / 'does_not_exist', tmp_path / 'a')
  labels_only = copy_labels(raw_dir, tmp_path / 'labels_only')
  with pytest.raises(FileNotFoundError, match='No Adience images .* faces.tar.gz or faces/'):
    build(labels_only, tmp_path / 'b')
  (labels_only / 'fold_3_data.txt').unlink()
  with pytest.raises(FileNotFoundError, match='fold_3_data.txt'):
    build(labels_only, tmp_path / 'c')


# ---------------------------------------------------------------------------------------------
# The command line, from the repository root.


def _tfds_build(*args):
  tfds_command = pathlib.Path(sys.executable).parent / 'tfds'
  return subprocess.run([os.fspath(tfds_command), 'build', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False)


@pytest.mark.slow
def test_tfds_build_command_line(raw_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(raw_dir, manual)
  rows, _ = adience_files.read_folds(manual)
  _remove_image(manual, rows[0])
  strict = _tfds_build('tfds_adience', '--config', 'gray75', '--manual_dir', os.fspath(manual),
                       '--data_dir', os.fspath(tmp_path / 'strict'))
  assert strict.returncode != 0
  assert 'Traceback' not in strict.stderr, strict.stderr[-2000:]
  assert strict.stderr.strip().splitlines()[-1].startswith(f'error: {rows[0].where}: image')
  skipping = _tfds_build('tfds_adience/gray75/skip_bad_records=True', '--imports',
                         'tfds_adience.tfds_adience_dataset_builder', '--manual_dir',
                         os.fspath(manual), '--data_dir', os.fspath(tmp_path / 'skip'))
  assert skipping.returncode == 0, skipping.stderr[-2000:]
  metadata = json.loads(
      (tmp_path / 'skip' / 'tfds_adience' / 'gray75' / '1.0.0' / 'metadata.json').read_text())
  assert metadata['dropped_rows_by_reason']['missing_image'] == 1
  assert metadata['examples'] == 19
