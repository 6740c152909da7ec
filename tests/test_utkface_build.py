"""Builds of tfds_utkface: the real ../shared/data/utkface faces (built once per session, as the
README's command builds them: malformed names skipped and counted), a tar.gz made here, stable hash
splits when the file set changes, bad file names, and the command line (one line at the end of a
build that skipped files, one line and no traceback for a build that stops)."""

import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from facialnet_jax.data import age_groups
from facialnet_jax.data import demo_faces
from facialnet_jax.data import tfds_common
from tfds_utkface import tfds_utkface_dataset_builder as utkface

REPO = pathlib.Path(__file__).resolve().parents[1]
UTKFACE = REPO.parent / 'shared' / 'data' / 'utkface'
needs_utkface = pytest.mark.skipif(not UTKFACE.is_dir(),
                                   reason='needs ../shared/data/utkface (real faces)')
# The three files of the original release whose names lack the race field.
MALFORMED_NAMES = ('39_1_20170116174525125.jpg.chip.jpg', '61_1_20170109142408075.jpg.chip.jpg',
                   '61_1_20170109150557335.jpg.chip.jpg')


def build(manual_dir, data_dir, config='gray75', **builder_kwargs):
  builder = utkface.Builder(config=config, data_dir=data_dir, **builder_kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def read_split(builder, split, decode_images=True):
  """The examples of `split` as a list of dicts of numpy values (random access, no TensorFlow)."""
  decoders = None if decode_images else {'image': tfds.decode.SkipDecoding()}
  source = builder.as_data_source(split=split, decoders=decoders)
  return source.__getitems__(range(len(source)))


def examples_by_name(builder, decode_images=True):
  """file name → (split, example) over all splits."""
  return {example['file_name'].decode(): (split, example)
          for split in utkface.SPLIT_NAMES
          for example in read_split(builder, split, decode_images)}


def synthetic_names(count, start=0):
  """UTKFace-style names; ages cycle through groups and gaps (3, 35 and 57 are between groups)."""
  ages = (1, 3, 5, 10, 18, 28, 35, 40, 50, 57, 70)
  return [f'{ages[i % len(ages)]}_{i % 2}_{i % 5}_201701{i:011d}.jpg.chip.jpg'
          for i in range(start, start + count)]


def write_faces(directory, names, size=48, seed=0):
  """Drawn (synthetic) faces, one distinct JPEG per name."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for name in names:
    rgb = demo_faces.draw_face(rng, int(rng.integers(2)), int(rng.integers(8)), size)
    cv2.imwrite(os.fspath(directory / name), rgb[:, :, ::-1])
  return directory


@pytest.fixture(scope='module')
def faces_dir(tmp_path_factory):
  return write_faces(tmp_path_factory.mktemp('faces'), synthetic_names(30))


@pytest.fixture(scope='module')
def folder_build(faces_dir, tmp_path_factory):
  return build(faces_dir, tmp_path_factory.mktemp('tfds'))


# ---------------------------------------------------------------------------------------------
# The real faces of ../shared/data/utkface, built once.


@pytest.fixture(scope='module')
def real_build(tmp_path_factory):
  # The default build, as `tfds build tfds_utkface --config gray75 --manual_dir DIR` makes it.
  return build(UTKFACE, tmp_path_factory.mktemp('utkface'))


@needs_utkface
def test_real_malformed_name_stops_a_strict_build_naming_the_file(tmp_path):
  with pytest.raises(tfds_common.BadRecordError) as error:
    build(UTKFACE, tmp_path, skip_bad_records=False)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'{MALFORMED_NAMES[0]}: malformed file name (3 ')
  assert 'race missing' in message and 'skip_bad_records=True' in message
  assert not utkface.Builder(config='gray75', data_dir=tmp_path).is_prepared()


@needs_utkface
def test_real_build_skips_the_three_malformed_names_and_says_so(real_build):
  metadata = real_build.info.metadata
  assert metadata['skip_bad_records'] is None
  assert metadata['bad_records_skipped'] == ['malformed_line']
  assert [row['where'] for row in metadata['dropped_rows']
          if row['reason'] == 'malformed_line'] == list(MALFORMED_NAMES)
  assert real_build.build_summary() == (
      f'tfds_utkface/gray75: 15,247 examples (train 12,104, validation 1,597, test 1,546) in '
      f'{real_build.data_path}; skipped 3 files with malformed names '
      f'({", ".join(MALFORMED_NAMES)}) and dropped 154 exact duplicate images; all are counted '
      f'and listed in {real_build.data_path / "metadata.json"} (dropped_rows)')


@pytest.mark.slow
@needs_utkface
def test_real_build_counts_and_splits_are_the_deterministic_ones(real_build):
  metadata = real_build.info.metadata
  assert metadata['image_files'] == 15404 and metadata['other_files_ignored'] == 0
  assert metadata['dropped_rows_by_reason'] == {
      'malformed_line': 3, 'missing_image': 0, 'unreadable_image': 0, 'duplicate_row': 0,
      'duplicate_image': 154}
  malformed = [row for row in metadata['dropped_rows'] if row['reason'] == 'malformed_line']
  assert tuple(row['where'] for row in malformed) == MALFORMED_NAMES
  assert metadata['examples'] == 15404 - 3 - 154 == 15247
  # These follow from the file names alone (utkface.SPLIT_RULE) and the duplicates dropped.
  expected = {'train': 12104, 'validation': 1597, 'test': 1546}
  assert metadata['examples_per_split'] == expected
  assert {name: real_build.info.splits[name].num_examples for name in expected} == expected

  examples = examples_by_name(real_build, decode_images=False)
  assert len(examples) == 15247
  for name, (split, example) in examples.items():
    assert split == utkface.split_of(name)
    assert example['user_id'].decode() == name
    age, gender, race = name.split('_')[:3]
    # -1 where byte-identical copies of the image disagree on that label.
    assert example['gender'] in (-1, {'0': 0, '1': 1}[gender])  # 0 = male = 'm', 1 = 'f'.
    assert example['age'] in (-1, int(age))
    assert example['age_group'] in (-1, age_groups.age_group_from_years(int(age)))
    assert example['race'] in (-1, int(race))
  # A file name always gives gender, age and race, so their -1s are exactly the masked ones.
  masked = real_build.info.metadata['labels_masked_by_conflicting_duplicates']
  for label in ('gender', 'age', 'race'):
    assert sum(example[label] == -1 for _, example in examples.values()) == masked[label]


@needs_utkface
def test_real_age_group_mapping_matches_the_data_readme(real_build):
  faces = []
  for path in sorted(UTKFACE.iterdir()):
    try:
      faces.append(utkface.parse_file_name(path.name))
    except ValueError:
      assert path.name in MALFORMED_NAMES
  assert len(faces) == 15401
  counts = collections.Counter(age_groups.age_group_from_years(face.age) for face in faces)
  assert [counts[group] for group in range(8)] == [1057, 409, 561, 785, 4393, 1108, 806, 1724]
  assert counts[age_groups.UNKNOWN] == 4558
  assert sum(real_build.info.metadata['ages_between_groups'].values()) == 4558
  genders = collections.Counter(face.gender for face in faces)
  assert genders == {0: 7982, 1: 7419}


@needs_utkface
def test_real_images_are_75px_gray(real_build):
  example = read_split(real_build, 'validation[:1]')[0]
  assert example['image'].shape == (75, 75, 1) and example['image'].dtype == np.uint8
  assert real_build.info.features['gender'].names == ['m', 'f']
  assert real_build.info.features['age_group'].names == list(age_groups.AGE_GROUP_NAMES)


# ---------------------------------------------------------------------------------------------
# Synthetic faces: layouts, splits, labels.


def test_parse_file_name():
  face = utkface.parse_file_name('26_1_2_20170116174525125.jpg.chip.jpg')
  assert (face.age, face.gender, face.race) == (26, 1, 2)
  # One file of the original release lacks the dot before 'jpg.chip.jpg'; its labels are fine.
  assert utkface.parse_file_name('55_0_0_20170116232725357jpg.chip.jpg').gender == 0
  for name, problem in [('39_1_20170116174525125.jpg.chip.jpg', 'race missing'),
                        ('x_1_0_20170116174525125.jpg.chip.jpg', "age 'x'"),
                        ('39_2_0_20170116174525125.jpg.chip.jpg', "gender '2'"),
                        ('39_1_5_20170116174525125.jpg.chip.jpg', "race '5'")]:
    with pytest.raises(ValueError, match=problem):
      utkface.parse_file_name(name)


def test_hash_split_is_about_80_10_10():
  counts = collections.Counter(utkface.split_of(name) for name in synthetic_names(20_000))
  assert abs(counts['train'] / 20_000 - 0.8) < 0.01
  assert abs(counts['validation'] / 20_000 - 0.1) < 0.01
  assert abs(counts['test'] / 20_000 - 0.1) < 0.01


def test_folder_build_labels(folder_build):
  examples = examples_by_name(folder_build)
  assert len(examples) == 30 == folder_build.info.metadata['examples']
  assert set(folder_build.info.splits) == {'train', 'validation', 'test'}
  for name, (split, example) in examples.items():
    face = utkface.parse_file_name(name)
    assert split == utkface.split_of(name)
    assert (example['age'], example['gender'], example['race']) == (face.age, face.gender,
                                                                     face.race)
    assert example['age_group'] == age_groups.age_group_from_years(face.age)
    assert example['image'].shape == (75, 75, 1)
  ages = [utkface.parse_file_name(name).age for name in examples]
  between = collections.Counter(str(age) for age in ages
                                if age_groups.age_group_from_years(age) == -1)
  assert folder_build.info.metadata['ages_between_groups'] == dict(between)


def test_changed_file_set_moves_no_other_file(faces_dir, folder_build, tmp_path):
  # Drop ten files and add fifteen: every file present in both builds stays in its split.
  changed = tmp_path / 'changed'
  shutil.copytree(faces_dir, changed)
  for name in synthetic_names(10):
    (changed / name).unlink()
  write_faces(changed, synthetic_names(15, start=100), seed=1)
  before = examples_by_name(folder_build, decode_images=False)
  after = examples_by_name(build(changed, tmp_path / 'tfds'), decode_images=False)
  common = before.keys() & after.keys()
  assert len(common) == 20 and len(after) == 35
  assert all(before[name][0] == after[name][0] for name in common)


def test_tar_gz_gives_the_same_examples_as_the_folder(faces_dir, folder_build, tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'UTKFace.tar.gz', 'w:gz') as archive:
    archive.add(faces_dir, arcname='UTKFace')
  builder = build(manual, tmp_path / 'tfds')
  assert builder.info.metadata['image_source'] == f'archive {manual / "UTKFace.tar.gz"}'
  from_archive, from_folder = examples_by_name(builder), examples_by_name(folder_build)
  assert from_archive.keys() == from_folder.keys()
  for name, (split, example) in from_archive.items():
    assert split == from_folder[name][0]
    np.testing.assert_array_equal(example['image'], from_folder[name][1]['image'])


def test_extracted_folder_inside_the_manual_dir_and_rgb(faces_dir, tmp_path):
  shutil.copytree(faces_dir, tmp_path / 'manual' / 'UTKFace')
  (tmp_path / 'manual' / 'notes.txt').write_text('not a face')
  builder = build(tmp_path / 'manual', tmp_path / 'tfds', config='rgb96')
  assert builder.info.metadata['image_source'] == f'folder {tmp_path / "manual" / "UTKFace"}'
  image = read_split(builder, 'train[:1]')[0]['image']
  assert image.shape == (96, 96, 3) and image.dtype == np.uint8


BAD_NAMES = ('7_1_20170109142408075.jpg.chip.jpg', '30_m_0_20170109142408075.jpg.chip.jpg')


def _with_bad_names(faces_dir, manual):
  """A copy of the faces plus two malformed names (copies of the first face's image, which
  therefore are not duplicates: they are dropped before the images are compared)."""
  shutil.copytree(faces_dir, manual)
  for bad_name in BAD_NAMES:
    shutil.copy(manual / synthetic_names(1)[0], manual / bad_name)
  return manual


def test_malformed_names_are_skipped_counted_and_reported_by_default(faces_dir, tmp_path, capsys):
  builder = build(_with_bad_names(faces_dir, tmp_path / 'manual'), tmp_path / 'tfds')
  metadata = builder.info.metadata
  assert metadata['skip_bad_records'] is None
  assert metadata['bad_records_skipped'] == ['malformed_line']
  assert metadata['dropped_rows_by_reason'] == {
      'malformed_line': 2, 'missing_image': 0, 'unreadable_image': 0, 'duplicate_row': 0,
      'duplicate_image': 0}
  assert [(row['reason'], row['where']) for row in metadata['dropped_rows']] == [
      ('malformed_line', name) for name in sorted(BAD_NAMES)]
  assert metadata['dropped_rows'][0]['detail'].startswith(
      "malformed file name (gender 'm' is not 0 (male) or 1 (female))")
  assert builder.info.splits.total_num_examples == 30
  # One line at the end of the build (tfds's own 'Dataset … prepared' line is replaced by it).
  lines = capsys.readouterr().out.strip().splitlines()
  assert not any(line.startswith('Dataset tfds_utkface downloaded') for line in lines)
  splits = ', '.join(f'{name} {split.num_examples}'
                     for name, split in builder.info.splits.items())
  assert lines[-1] == builder.build_summary() == (
      f'tfds_utkface/gray75: 30 examples ({splits}) in {builder.data_path}; skipped 2 files '
      f'with malformed names ({", ".join(sorted(BAD_NAMES))}); all are counted and listed in '
      f'{builder.data_path / "metadata.json"} (dropped_rows)')
  # Nothing dropped: the count and the place, nothing more.
  capsys.readouterr()
  clean = build(faces_dir, tmp_path / 'clean')
  assert capsys.readouterr().out.strip().splitlines()[-1] == clean.build_summary() == (
      'tfds_utkface/gray75: 30 examples ('
      + ', '.join(f'{name} {split.num_examples}' for name, split in clean.info.splits.items())
      + f') in {clean.data_path}')


def test_skip_bad_records_false_stops_at_malformed_names(faces_dir, tmp_path):
  manual = _with_bad_names(faces_dir, tmp_path / 'manual')
  with pytest.raises(tfds_common.BadRecordError, match=f'^{BAD_NAMES[1]}: malformed file name '
                     r"\(gender 'm' is not 0 \(male\) or 1 \(female\)\); rename it"):
    build(manual, tmp_path / 'strict', skip_bad_records=False)
  assert not utkface.Builder(config='gray75', data_dir=tmp_path / 'strict').is_prepared()


def test_unreadable_image_stops_by_default_and_skip_bad_records_true_skips_it(
    faces_dir, tmp_path):
  manual = _with_bad_names(faces_dir, tmp_path / 'manual')
  unreadable = synthetic_names(2)[1]
  (manual / unreadable).write_bytes(b'not a JPEG')
  # A damaged image is not part of the release: it stops the default build, naming the file.
  with pytest.raises(tfds_common.BadRecordError, match=f'^{unreadable}: image {unreadable} is '
                     r'unreadable .*skip_bad_records=True'):
    build(manual, tmp_path / 'default')
  builder = build(manual, tmp_path / 'skip', skip_bad_records=True)
  metadata = builder.info.metadata
  assert metadata['skip_bad_records'] is True
  assert metadata['bad_records_skipped'] == ['malformed_line', 'missing_image',
                                             'unreadable_image']
  assert metadata['dropped_rows_by_reason'] == {
      'malformed_line': 2, 'missing_image': 0, 'unreadable_image': 1, 'duplicate_row': 0,
      'duplicate_image': 0}
  assert {row['where'] for row in metadata['dropped_rows']} == {*BAD_NAMES, unreadable}
  assert builder.info.splits.total_num_examples == 29
  assert builder.build_summary().startswith(
      'tfds_utkface/gray75: 29 examples (')
  assert builder.build_summary().split('; ', 1)[1].startswith(
      f'skipped 2 files with malformed names '
      f'({", ".join(sorted(BAD_NAMES))}), 1 unreadable image ({unreadable}); all are counted')


def test_summary_names_three_files_and_counts_the_rest():
  log = tfds_common.DropLog(True, 'hint')
  for index in range(5):
    log.bad_record(tfds_common.MALFORMED_LINE, f'f{index}', 'bad', 'fix')
  log.duplicate(tfds_common.DUPLICATE_IMAGE, 'g', 'same')
  assert log.summary(utkface.Builder.DROP_NOUNS) == (
      'skipped 5 files with malformed names (f0, f1, f2 and 2 more) and dropped 1 exact '
      'duplicate image')


def test_duplicates_are_dropped_and_conflicting_labels_masked(faces_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(faces_dir, manual)
  first = synthetic_names(1)[0]  # 1_0_0_…: a baby boy.
  copy = '99_1_0_20991231000000000.jpg.chip.jpg'  # Sorts after `first`, so it is dropped.
  shutil.copy(manual / first, manual / copy)
  builder = build(manual, tmp_path / 'tfds')
  metadata = builder.info.metadata
  assert metadata['dropped_rows_by_reason']['duplicate_image'] == 1
  assert metadata['labels_masked_by_conflicting_duplicates'] == {
      'age': 1, 'age_group': 1, 'gender': 1}
  examples = examples_by_name(builder, decode_images=False)
  assert copy not in examples
  kept = examples[first][1]
  assert (kept['age'], kept['age_group'], kept['gender'], kept['race']) == (-1, -1, -1, 0)


def test_missing_or_empty_manual_dir_gives_clear_errors(tmp_path):
  # MissingSourceError is a FileNotFoundError and a UserError (one line under `tfds build`).
  with pytest.raises(FileNotFoundError, match='--manual_dir'):
    build(tmp_path / 'does_not_exist', tmp_path / 'a')
  (tmp_path / 'no_faces').mkdir()
  (tmp_path / 'no_faces' / 'notes.txt').write_text('not a face')
  with pytest.raises(FileNotFoundError, match='No UTKFace faces .* UTKFace.tar.gz'):
    build(tmp_path / 'no_faces', tmp_path / 'b')


# ---------------------------------------------------------------------------------------------
# The command line, from the repository root.


def _tfds_build(*args, cwd=REPO):
  tfds_command = pathlib.Path(sys.executable).parent / 'tfds'
  return subprocess.run(
      [os.fspath(tfds_command), 'build', *args],
      # The repository root on the path, as for `python launch.py`, whether or not the package
      # was installed (editable installs made before tfds_utkface existed do not list it).
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(
          filter(None, [os.fspath(REPO), os.environ.get('PYTHONPATH')]))},
      cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_readme_command_skips_malformed_names_and_says_so_in_one_line(faces_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(faces_dir, manual)
  shutil.copy(manual / synthetic_names(1)[0], manual / MALFORMED_NAMES[0])
  # The README's command, from the repository root (tfds finds tfds_utkface/ there).
  result = _tfds_build('tfds_utkface', '--config', 'gray75', '--manual_dir', os.fspath(manual),
                       '--data_dir', os.fspath(tmp_path / 'tfds'))
  assert result.returncode == 0, result.stderr[-2000:]
  data_path = tmp_path / 'tfds' / 'tfds_utkface' / 'gray75' / '1.0.0'
  summary_start = 'tfds_utkface/gray75: 30 examples (train '
  summary_end = (f') in {data_path}; skipped 1 file with a malformed name ({MALFORMED_NAMES[0]}); '
                 f'all are counted and listed in {data_path / "metadata.json"} (dropped_rows)')
  # Quiet: the start, the summary line last; no DatasetInfo dump, no 'Downloading … Unknown
  # size' (nothing is downloaded), no INFO lines, no progress-bar escapes in a captured log.
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert lines[-1].startswith(summary_start) and lines[-1].endswith(summary_end), result.stdout
  assert lines[-2] == f'Building tfds_utkface/gray75 from {manual} …'
  output = result.stdout + result.stderr
  for noise in ('DatasetInfo', 'Unknown size', 'INFO[writer.py]', 'Variant folder', '\x1b'):
    assert noise not in output, noise
  metadata = json.loads((data_path / 'metadata.json').read_text())
  assert metadata['dropped_rows_by_reason']['malformed_line'] == 1
  assert metadata['dropped_rows'][0]['where'] == MALFORMED_NAMES[0]
  assert metadata['examples'] == 30


def test_tfds_build_without_its_files_says_so_in_one_line_and_leaves_nothing(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  for manual_args, problem in (([], 'no --manual_dir was given'),
                               (['--manual_dir', os.fspath(empty)], f'{empty} is empty')):
    result = _tfds_build('tfds_utkface', '--config', 'rgb75', *manual_args,
                         '--data_dir', os.fspath(tmp_path / 'tfds'))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: tfds_utkface is built from files you download yourself and {problem}: pass the '
        'folder with UTKFace.tar.gz (or its extracted UTKFace/ folder) as --manual_dir DIR '
        '(Python: download_config=tfds.download.DownloadConfig(manual_dir=DIR)); where to get '
        'them: README.md, section Data.')
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'tfds').exists()


@pytest.mark.slow
def test_tfds_build_that_stops_says_why_in_one_line(faces_dir, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(faces_dir, manual)
  shutil.copy(manual / synthetic_names(1)[0], manual / MALFORMED_NAMES[0])
  # Strict, through --imports and from another folder: the malformed name stops the build.
  strict = _tfds_build('tfds_utkface/gray75/skip_bad_records=False', '--imports',
                       'tfds_utkface.tfds_utkface_dataset_builder', '--manual_dir',
                       os.fspath(manual), '--data_dir', os.fspath(tmp_path / 'strict'),
                       cwd=tmp_path)
  assert strict.returncode == 1
  assert 'Traceback' not in strict.stderr, strict.stderr[-3000:]
  assert strict.stderr.strip().splitlines()[-1].startswith(
      f'error: {MALFORMED_NAMES[0]}: malformed file name (3 ')
  # A truncated archive: one line, whatever the options.
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  with tarfile.open(damaged / 'full.tar.gz', 'w:gz') as archive:
    archive.add(faces_dir, arcname='UTKFace')
  data = (damaged / 'full.tar.gz').read_bytes()
  (damaged / 'UTKFace.tar.gz').write_bytes(data[:len(data) // 2])
  (damaged / 'full.tar.gz').unlink()
  truncated = _tfds_build('tfds_utkface', '--config', 'gray75', '--manual_dir',
                          os.fspath(damaged), '--data_dir', os.fspath(tmp_path / 'damaged_tfds'))
  assert truncated.returncode == 1
  assert 'Traceback' not in truncated.stderr, truncated.stderr[-3000:]
  assert re.match(rf'error: {re.escape(os.fspath(damaged))}/UTKFace.tar.gz cannot be read to the '
                  r'end \(.*\): it is truncated or damaged.*download it again.$',
                  truncated.stderr.strip().splitlines()[-1])
