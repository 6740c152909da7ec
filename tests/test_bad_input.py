"""Every bad input a user can give answered by one clear message: the tables below are the coverage.

One row per input: what the user gives → the message they must see (a regex) → the exit status
(command lines) or the exception (builders, called from Python). No command line may print a
traceback, and nothing already saved may be lost: a trained workdir's files stay as they were and
what restored before the error still restores; a builder never touches the user's raw files and
leaves no half-built data set behind. A NaN/inf loss has its own tests (test_numerical_faults.py),
as have killed runs and damaged checkpoints (test_crash_safety.py).

  LAUNCH_CASES   launch.py with a fresh --workdir: flags, config keys, types and values; data
  WORKDIR_CASES  launch.py on a --workdir that already holds something (another run, damage)
  BUILDER_CASES  the tfds_adience and tfds_utkface builders on damaged or foreign raw files
  PREDICT_CASES  python -m facialnet_jax.predict on photos of every kind, and bad flags
"""

import logging
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib

import cv2
import jax
import matplotlib
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from facialnet_jax.data import adience_files
from facialnet_jax.data import demo_data
from facialnet_jax.data import demo_faces
from facialnet_jax.data import input_pipeline
from facialnet_jax.data.tfds_common import BadRecordError
from facialnet_jax.data.tfds_common import BadSourceError
from facialnet_jax.runtime import logging_setup
from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import train
from tests.conftest import REPO_ROOT, final_params, run_launch, tiny_config, tiny_flags
from tfds_adience import tfds_adience_dataset_builder as adience_builder
from tfds_utkface import tfds_utkface_dataset_builder as utkface_builder

SYNTHETIC = ('--config', 'configs/synthetic.py')
ADIENCE = ('--config', 'configs/adience.py')


def _assert_one_line_error(finished: subprocess.CompletedProcess, expected: str, status: int):
  output = finished.stdout + finished.stderr
  assert finished.returncode == status, output[-3000:]
  assert 'Traceback' not in finished.stderr, finished.stderr[-3000:]
  if status:
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith('error: '), last_line
  assert re.search(expected, output), output[-3000:]


def _saved_files(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
  """Every file under `directory` → (size, modification time): what 'nothing lost' compares.
  The lock file is left out: each run that takes the workdir writes its PID there."""
  return {os.fspath(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
          for path in directory.rglob('*')
          if path.is_file() and path.name != run_directory.LOCK_FILE}


# ---------------------------------------------------------------------------------------------
# launch.py with a new --workdir.

# (case, launch.py arguments after --workdir, simulated devices, expected message, exit status)
LAUNCH_CASES = [
    ('unknown config key', (*SYNTHETIC, '--config.optimizer.learning_rat=0.1'), 1,
     r'Did you mean "learning_rate" instead of "learning_rat"\?', 2),
    ('wrong type for a key', (*SYNTHETIC, '--config.batch_size=abc'), 1,
     r"--config.batch_size=abc: invalid literal for int\(\)", 2),
    ('not a boolean for a boolean key', (*SYNTHETIC, '--config.augment.enabled=maybe'), 1,
     r"--config.augment.enabled=maybe: \('Non-boolean argument to boolean flag', 'maybe'\)", 2),
    ('misspelt flag', (*SYNTHETIC, '--workdri=elsewhere'), 1,
     r"Unknown command line flag 'workdri'. Did you mean: workdir \?", 2),
    ('config file that does not exist', ('--config', 'configs/no_such_config.py'), 1,
     r"No such file or directory: 'configs/no_such_config.py'", 2),
    ('negative learning rate', (*SYNTHETIC, '--config.optimizer.learning_rate=-1'), 1,
     r'config.optimizer.learning_rate=-1.0 must not be negative', 1),
    ('momentum of 1', (*SYNTHETIC, '--config.optimizer.momentum=1'), 1,
     r'config.optimizer.momentum=1.0 must be in \[0, 1\)', 1),
    ('unknown schedule', (*SYNTHETIC, '--config.schedule.name=exponential'), 1,
     r"config.schedule.name='exponential' is not one of constant, piecewise, cosine, plateau", 1),
    ('unknown convolution implementation', (*SYNTHETIC, '--config.model.conv_implementation=dnnl'),
     1, r"config.model.conv_implementation='dnnl' is not one of auto, xla, fast, patches, onednn",
     1),
    ('batch size that does not split across devices', (*SYNTHETIC, *tiny_flags(batch_size=25)),
     8, r'config.batch_size=25 does not split across the 8 devices of this run; use a multiple '
     r'of 8 \(for example --config.batch_size=24\)', 1),
    ('data set that has not been built', (*ADIENCE, '--config.data.data_dir={tmp}/no_data'), 1,
     r'The data set tfds_adience/gray75 has not been built in .*no_data. If you built it into '
     r'another data dir, pass --config.data.data_dir=DIR; otherwise build it with `tfds build '
     r'tfds_adience --config gray75 --manual_dir DIR --data_dir .*no_data`', 1),
    ('test fold that does not exist', (*ADIENCE, '--config.data.test_fold=5'), 1,
     r'config.data.test_fold=5 does not exist; use 0..4 \(or -1 for named', 1),
]


@pytest.mark.parametrize('case, args, devices, expected, status', LAUNCH_CASES,
                         ids=[case[0] for case in LAUNCH_CASES])
def test_launch_answers_bad_input_in_one_line(tmp_path, case, args, devices, expected, status):
  del case
  args = [a.replace('{tmp}', str(tmp_path)) for a in args]
  finished = run_launch('--workdir', str(tmp_path / 'run'), *args, devices=devices)
  _assert_one_line_error(finished, expected, status)
  assert 'Variant folder' not in finished.stderr  # tfds on a folder that does not exist
  # Nothing was trained: no workdir holding only a lock file is left to look like a run.
  assert not (tmp_path / 'run').exists()


def test_a_data_set_built_into_another_data_dir_is_named_with_the_flag(tmp_path, monkeypatch):
  raw = tmp_path / 'raw'
  demo_data.write_demo_raw(raw, num_subjects=10, images_per_subject=2, image_size=40, seed=1)
  built = tmp_path / 'built'
  adience_builder.Builder(config='gray75', data_dir=built).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=raw))
  # Built into TFDS's default data dir, asked for in another.
  monkeypatch.setenv('TFDS_DATA_DIR', str(built))
  data = tiny_config(**{'data.source': 'tfds', 'data.name': 'tfds_adience',
                        'data.data_dir': str(tmp_path / 'elsewhere')}).data
  with pytest.raises(UserError, match=re.escape(
      f'The data set tfds_adience/gray75 has not been built in {tmp_path}/elsewhere, but it is '
      f'in {built}: pass --config.data.data_dir={built}.')):
    input_pipeline.tfds_builder(data)


def test_tfds_notice_stays_for_a_half_built_data_set_only(tmp_path, caplog):
  """The commands drop tfds's "Variant folder … has no dataset_info.json" where the folder does
  not exist (their own error says it is not built) and keep it where a build stopped half-way."""
  (tmp_path / 'half' / 'tfds_adience' / 'gray75' / '1.0.0').mkdir(parents=True)
  absl_logger = logging.getLogger('absl')
  quiet = logging_setup._QuietLibraries()  # pylint: disable=protected-access
  absl_logger.addFilter(quiet)
  try:
    with caplog.at_level('WARNING'):
      for data_dir in ('never_built', 'half'):
        assert not tfds.builder('tfds_adience/gray75', data_dir=tmp_path / data_dir).is_prepared()
  finally:
    absl_logger.removeFilter(quiet)
  notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Variant folder')]
  assert notices == [f'Variant folder {tmp_path}/half/tfds_adience/gray75/1.0.0 has no '
                     'dataset_info.json']


# ---------------------------------------------------------------------------------------------
# launch.py on a --workdir that already holds something.


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory) -> pathlib.Path:
  """A finished tiny run (tiny_config(), as tiny_flags() give it): checkpoints at steps 8 and 16."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def _copy_of_run(tmp_path, trained_run):
  return pathlib.Path(shutil.copytree(trained_run, tmp_path / 'run'))


def _run_without_readable_checkpoint(tmp_path, trained_run):
  workdir = _copy_of_run(tmp_path, trained_run)
  for state in workdir.glob('checkpoints/*/state'):
    shutil.rmtree(state)
  return workdir


def _path_under_a_file(tmp_path, trained_run):
  del trained_run
  (tmp_path / 'a_file').write_text('not a directory')
  return tmp_path / 'a_file' / 'run'


def _a_file(tmp_path, trained_run):
  del trained_run
  (tmp_path / 'a_file').write_text('not a directory')
  return tmp_path / 'a_file'


# (case, makes the workdir from (tmp_path, trained_run), launch.py arguments after --workdir,
#  expected message, exit status)
WORKDIR_CASES = [
    ('workdir below a file', _path_under_a_file, SYNTHETIC,
     r'--workdir .*a_file/run cannot be written \(Not a directory\); choose a directory you can '
     r'write to', 1),
    ('workdir that is a file', _a_file, SYNTHETIC,
     r'--workdir .*a_file cannot be written \(File exists\); choose a directory', 1),
    ('checkpoints of a different model', _copy_of_run,
     (*SYNTHETIC, *tiny_flags(**{'model.batch_norm': True})),
     r'The checkpoint at step 16 in .*/run/checkpoints was written by a different model or '
     r'optimiser configuration \(params\.backbone\.conv1_bn\.bias only in this config; .* and '
     r'\d+ more\); use a new --workdir or the config it was trained with \(saved as config.json',
     1),
    ('checkpoints of another batch size', _copy_of_run, (*SYNTHETIC, *tiny_flags(batch_size=16)),
     r'.*/run holds a run with other batch_size than this config; resuming would mix two runs. '
     r'Use a new --workdir, or the config it was started with \(its config.json\).', 1),
    ('checkpoints of other data (another test fold, split or data set)', _copy_of_run,
     (*SYNTHETIC, *tiny_flags(**{'data.validation_fraction': 0.3})),
     r'.*/run holds a run with other data.validation_fraction than this config; resuming would '
     r'mix two runs.', 1),
    ('no checkpoint can be read', _run_without_readable_checkpoint, (*SYNTHETIC, *tiny_flags()),
     r'No checkpoint in .*/run/checkpoints can be read \(steps 16, 8; the last error, at step 8: '
     r'KeyError: .*\); move the directory away to start afresh', 1),
]


@pytest.mark.parametrize('case, make_workdir, args, expected, status', WORKDIR_CASES,
                         ids=[case[0] for case in WORKDIR_CASES])
def test_launch_on_an_unusable_workdir_answers_in_one_line_and_loses_nothing(
    tmp_path, trained_run, case, make_workdir, args, expected, status):
  del case
  workdir = make_workdir(tmp_path, trained_run)
  before = _saved_files(workdir) if workdir.is_dir() else {}
  try:
    params_before = final_params(workdir) if before else None
  except Exception:  # pylint: disable=broad-except
    params_before = None  # damaged on purpose: nothing that restores
  finished = run_launch('--workdir', str(workdir), *args)
  _assert_one_line_error(finished, expected, status)
  if before:
    assert _saved_files(workdir) == before
  if params_before is not None:
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), params_before)


# ---------------------------------------------------------------------------------------------
# The data set builders, on raw files in a manual dir.


@pytest.fixture(scope='module')
def adience_raw(tmp_path_factory) -> pathlib.Path:
  """Adience's layout (fold files + faces/), 10 synthetic subjects with 2 faces each."""
  directory = tmp_path_factory.mktemp('adience_raw')
  demo_data.write_demo_raw(directory, num_subjects=10, images_per_subject=2, image_size=40,
                           seed=3)
  return directory


@pytest.fixture(scope='module')
def utkface_raw(tmp_path_factory) -> pathlib.Path:
  """40 drawn faces named as UTKFace names them: enough for all three hash splits."""
  directory = tmp_path_factory.mktemp('utkface_raw')
  rng = np.random.default_rng(0)
  for i in range(40):
    rgb = demo_faces.draw_face(rng, i % 2, i % 8, 48)
    cv2.imwrite(os.fspath(directory / f'{20 + i}_{i % 2}_{i % 5}_201701{i:011d}.jpg.chip.jpg'),
                rgb[:, :, ::-1])
  return directory


def _first_row(manual):
  rows, _ = adience_files.read_folds(manual)
  return rows[2]


def _edit_folds(manual, edit_line):
  """Applies edit_line(line_number, fields) → fields to every fold file's lines."""
  for name in adience_files.FOLD_FILE_NAMES:
    path = manual / name
    lines = path.read_text().splitlines()
    path.write_text('\n'.join('\t'.join(edit_line(number, line.split('\t')))
                              for number, line in enumerate(lines, 1)) + '\n')


def _set_label(manual, column, value):
  row = _first_row(manual)
  path = manual / adience_files.FOLD_FILE_NAMES[row.fold]
  lines = path.read_text().splitlines()
  fields = lines[row.line - 1].split('\t')
  fields[adience_files.FOLD_COLUMNS.index(column)] = value
  lines[row.line - 1] = '\t'.join(fields)
  path.write_text('\n'.join(lines) + '\n')


def _swap_age_and_gender_columns(manual):
  def swap(number, fields):
    del number
    fields[3], fields[4] = fields[4], fields[3]
    return fields
  _edit_folds(manual, swap)


def _drop_last_column_of_one_line(manual):
  _edit_folds(manual, lambda number, fields: fields[:-1] if number == 3 else fields)


def _comma_separated_folds(manual):
  for name in adience_files.FOLD_FILE_NAMES:
    (manual / name).write_text((manual / name).read_text().replace('\t', ','))


def _empty_fold(manual):
  path = manual / 'fold_3_data.txt'
  path.write_text(path.read_text().splitlines()[0] + '\n')


def _not_a_jpeg(manual):
  (manual / _first_row(manual).image_path('faces')).write_bytes(b'this is not a JPEG')


def _truncated_jpeg(manual):
  path = manual / _first_row(manual).image_path('faces')
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _archive_then_truncate(manual, archive_name, folder, arcname=lambda path: path):
  archive = manual / archive_name
  images = sorted(path for path in (manual / folder).rglob('*') if path.is_file())
  if archive_name.endswith('.zip'):
    with zipfile.ZipFile(archive, 'w') as writer:
      for image in images:
        writer.write(image, arcname(image.relative_to(manual).as_posix()))
  else:
    with tarfile.open(archive, 'w:gz') as writer:
      for image in images:
        writer.add(image, arcname(image.relative_to(manual).as_posix()))
  shutil.rmtree(manual / folder)
  data = archive.read_bytes()
  archive.write_bytes(data[:len(data) // 2])


def _utkface_archive_then_truncate(manual):
  (manual.parent / 'UTKFace').mkdir()
  for image in list(manual.iterdir()):
    image.rename(manual.parent / 'UTKFace' / image.name)
  (manual.parent / 'UTKFace').rename(manual / 'UTKFace')
  _archive_then_truncate(manual, 'UTKFace.tar.gz', 'UTKFace')


def _utkface_rename_first(manual, new_name):
  first = sorted(manual.iterdir())[0]
  first.rename(manual / new_name)


def _utkface_only(count):
  def keep(manual):
    for path in sorted(manual.iterdir())[count:]:
      path.unlink()
    (manual / 'notes.txt').write_text('not a face')  # an empty manual dir is tfds's own error
  return keep


def _remove_everything_but(*kept):
  def remove(manual):
    for path in manual.iterdir():
      if path.name not in kept:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
  return remove


SKIP_HINT = r', or build with skip_bad_records=True to skip such rows'
ROW = r'^fold_\d_data.txt line \d+: '

# (case, builder, damage done to a copy of the raw files, expected exception, message regex)
BUILDER_CASES = [
    ('Adience: image that is not a JPEG', 'adience', _not_a_jpeg, BadRecordError,
     ROW + r'image faces/\S+ is unreadable \(not an image format OpenCV or Pillow can read '
     r"\(18 bytes, starting b'this is '\)\); replace the file with a good copy" + '.*' +
     SKIP_HINT),
    ('Adience: truncated JPEG', 'adience', _truncated_jpeg, BadRecordError,
     ROW + r'image faces/\S+ is unreadable \(the JPEG is truncated \(it has no end-of-image '
     r'marker\)\)' + '.*' + SKIP_HINT),
    ('Adience: image missing', 'adience',
     lambda manual: (manual / _first_row(manual).image_path('faces')).unlink(), BadRecordError,
     ROW + r'image faces/\S+ is missing; extract faces.tar.gz completely' + '.*' + SKIP_HINT),
    ('Adience: truncated faces.tar.gz', 'adience',
     lambda manual: _archive_then_truncate(manual, 'faces.tar.gz', 'faces'), BadSourceError,
     r'^\S+/faces.tar.gz cannot be read to the end \((ReadError|EOFError): .*\): it is truncated '
     r'or damaged, for example by an interrupted download; download it again.$'),
    ('Adience: truncated faces.zip', 'adience',
     lambda manual: _archive_then_truncate(manual, 'faces.zip', 'faces'), BadSourceError,
     r'^\S+/faces.zip cannot be read to the end \(BadZipFile: File is not a zip file\): it is '
     r'truncated or damaged'),
    ('Adience: fold files with age and gender columns swapped', 'adience',
     _swap_age_and_gender_columns, BadSourceError,
     r'^fold_0_data.txt line 1: the header names the columns user_id, original_image, face_id, '
     r'gender, age, .*; the Adience fold files have the 12 tab-separated columns user_id, '
     r'original_image, face_id, age, gender, .* in this order: restore the original file.$'),
    ('Adience: comma-separated fold files', 'adience', _comma_separated_folds, BadSourceError,
     r'^fold_0_data.txt line 1: the header names the columns user_id,original_image,'),
    ('Adience: line with a column missing', 'adience', _drop_last_column_of_one_line,
     BadRecordError, r'^fold_0_data.txt line 3: malformed label line \(expected 12 '
     r'tab-separated columns \(user_id, .*\), found 11\)' + '.*' + SKIP_HINT),
    ('Adience: unknown gender label', 'adience', lambda manual: _set_label(manual, 'gender', 'male'),
     BadRecordError, ROW + r"malformed label line \(gender 'male' is not m, f or u \(u or empty: "
     r'unknown\)\)' + '.*' + SKIP_HINT),
    ('Adience: unknown age label', 'adience', lambda manual: _set_label(manual, 'age', '25-32'),
     BadRecordError, ROW + r"malformed label line \(age '25-32' is not a year, a range such as "
     r"'\(25, 32\)' or None \(unknown\)\)"),
    ('Adience: empty fold', 'adience', _empty_fold, BadSourceError,
     r'^fold_3_data.txt gives no examples \(0 label rows, none kept\): every fold must hold '
     r'faces, as each is the test split in turn; restore the original fold file.$'),
    ('Adience: fold file missing', 'adience',
     lambda manual: (manual / 'fold_3_data.txt').unlink(), FileNotFoundError,
     r'^Missing Adience label files in \S+: fold_3_data.txt. All five'),
    ('Adience: no images', 'adience', lambda manual: shutil.rmtree(manual / 'faces'),
     FileNotFoundError, r'^No Adience images in \S+: expected aligned.tar.gz or aligned/, '
     r'faces.tar.gz or faces/ beside the fold files.'),
    ('Adience: manual dir without fold files', 'adience', _remove_everything_but('faces'),
     FileNotFoundError, r'^No fold_0_data.txt in the manual dir \S+ \(nor in folders below it\)'),
    ('UTKFace: truncated UTKFace.tar.gz', 'utkface', _utkface_archive_then_truncate,
     BadSourceError, r'^\S+/UTKFace.tar.gz cannot be read to the end \((ReadError|EOFError): '
     r'.*\): it is truncated or damaged'),
    ('UTKFace: image that is not a JPEG', 'utkface',
     lambda manual: sorted(manual.iterdir())[0].write_bytes(b'this is not a JPEG'),
     BadRecordError, r'^\S+.jpg.chip.jpg: image \S+ is unreadable \(not an image format'),
    ('UTKFace: file name without the race', 'utkface',
     lambda manual: _utkface_rename_first(manual, '7_1_20170109142408075.jpg.chip.jpg'),
     BadRecordError, r"^7_1_20170109142408075.jpg.chip.jpg: malformed file name \(3 '_'-separated "
     r'fields \(is the race missing\?\), expected 4'),
    ('UTKFace: unknown gender in a file name', 'utkface',
     lambda manual: _utkface_rename_first(manual, '30_2_0_20170109142408075.jpg.chip.jpg'),
     BadRecordError, r"^30_2_0_20170109142408075.jpg.chip.jpg: malformed file name \(gender '2' "
     r'is not 0 \(male\) or 1 \(female\)\)'),
    ('UTKFace: too few faces for every split', 'utkface', _utkface_only(3), BadSourceError,
     r'^The (train|validation|test) split would be empty: 3 usable faces in folder \S+, and each '
     r'goes to train, validation or test by a hash of its file name'),
    ('UTKFace: no faces', 'utkface', _utkface_only(0), FileNotFoundError,
     r'^No UTKFace faces in \S+: expected UTKFace.tar.gz'),
]
BUILDERS = {'adience': adience_builder.Builder, 'utkface': utkface_builder.Builder}


@pytest.mark.parametrize('case, builder, damage, error, expected', BUILDER_CASES,
                         ids=[case[0] for case in BUILDER_CASES])
def test_builders_stop_on_bad_raw_files_in_one_line_and_keep_them(
    tmp_path, adience_raw, utkface_raw, case, builder, damage, error, expected):
  del case
  manual = pathlib.Path(shutil.copytree(adience_raw if builder == 'adience' else utkface_raw,
                                        tmp_path / 'manual'))
  damage(manual)
  raw_files = _saved_files(manual)
  data_dir = tmp_path / 'tfds'
  with pytest.raises(error) as raised:
    BUILDERS[builder](config='gray75', data_dir=data_dir, skip_bad_records=False
                      ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))
  message = str(raised.value)
  assert '\n' not in message, message
  assert re.search(expected, message), message
  assert _saved_files(manual) == raw_files  # the user's files are only read
  assert not BUILDERS[builder](config='gray75', data_dir=data_dir).is_prepared()


# ---------------------------------------------------------------------------------------------
# Prediction on photos.

PORTRAIT = pathlib.Path(matplotlib.get_data_path()) / 'sample_data' / 'grace_hopper.jpg'


def _portrait_as(name, mode=None, **save_options):
  """A maker of the portrait (one face) saved as `name`, converted to Pillow `mode`."""
  def make(directory):
    image = Image.open(PORTRAIT)
    if mode == 'I;16':
      image = Image.fromarray(np.asarray(image.convert('L')).astype(np.uint16) * 257)
    elif mode == 'RGBA':
      pixels = np.array(image.convert('RGBA'))
      pixels[:40, :, 3] = 0  # a transparent band, as in a cut-out
      image = Image.fromarray(pixels)
    elif mode is not None:
      image = image.convert(mode)
    image.save(directory / name, **save_options)
    return directory / name
  return make


def _bytes_file(name, data: bytes):
  def make(directory):
    (directory / name).write_bytes(data)
    return directory / name
  return make


def _png_header_only(width, height):
  """A PNG that states its size and holds (almost) no pixels: readers must refuse it from the
  header alone, before allocating width × height × 3 bytes."""
  def chunk(kind, payload):
    return (struct.pack('>I', len(payload)) + kind + payload +
            struct.pack('>I', zlib.crc32(kind + payload)))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0,
                                                            0, 0))
          + chunk(b'IDAT', zlib.compress(b'\0' * 16)) + chunk(b'IEND', b''))


def _large_photo(directory):
  """A 6000×4000 (24 MP) photo with the portrait in it."""
  photo = Image.new('RGB', (6000, 4000), (120, 130, 140))
  photo.paste(Image.open(PORTRAIT).resize((1024, 1200)), (2500, 1400))
  photo.save(directory / 'large.jpg', quality=80)
  return directory / 'large.jpg'


def _one_pixel(directory):
  Image.new('RGB', (1, 1), (128, 128, 128)).save(directory / 'dot.png')
  return directory / 'dot.png'


def _directory(directory):
  (directory / 'a_folder.jpg').mkdir()
  return directory / 'a_folder.jpg'


NOT_READ = 'error: None of the 1 photo(s) could be read.'
ONE_FACE = (r': 1 face\n  face 1: box x=\d+ y=\d+ w=\d+ h=\d+ \(face [01]\.\d\d\) \| '
            r'(male|female) \d+% \| age ')

# (case, maker of the photo in a directory, extra flags, expected output, exit status)
PREDICT_CASES = [
    ('not an image (a text file)', _bytes_file('notes.jpg', b'not an image'), (),
     r'notes.jpg: cannot read it: not an image format Pillow can read.', 1),
    ('empty file', _bytes_file('empty.jpg', b''), (),
     r'empty.jpg: cannot read it: the file is empty \(0 bytes\).', 1),
    ('truncated JPEG', _bytes_file('cut.jpg', PORTRAIT.read_bytes()[:30_000]), (),
     r'cut.jpg: cannot read it: cannot decode it \(image file is truncated .*\).', 1),
    ('a folder without images', _directory, (),
     r'a_folder.jpg: cannot read it: it is a folder without image files \(.jpg, .jpeg, .png, '
     r'.bmp, .webp, .tif, .tiff, .gif\).', 1),
    ('grayscale JPEG', _portrait_as('gray.jpg', 'L'), (), 'gray.jpg' + ONE_FACE, 0),
    ('CMYK JPEG', _portrait_as('cmyk.jpg', 'CMYK'), (), 'cmyk.jpg' + ONE_FACE, 0),
    ('PNG with alpha', _portrait_as('alpha.png', 'RGBA'), (), 'alpha.png' + ONE_FACE, 0),
    ('16-bit grayscale PNG', _portrait_as('gray16.png', 'I;16'), (), 'gray16.png' + ONE_FACE, 0),
    ('1×1 pixel', _one_pixel, (), r'dot.png: no face found \(1×1 pixels; the detector looks for '
     r'faces of at least 40 px with confidence 0.9, see --min_face_size and --min_confidence; '
     r'try --whole_image for a face crop\).', 0),
    ('1×1 pixel as a face crop', _one_pixel, ('--whole_image',),
     r'dot.png: 1×1 pixels is too small for a face crop \(at least 24×24\).', 0),
    ('very large photo (24 MP)', _large_photo, (), 'large.jpg' + ONE_FACE, 0),
    ('too large (300 MP)', _bytes_file('huge.png', _png_header_only(20000, 15000)), (),
     r'huge.png: cannot read it: it is 20000×15000 pixels \(300 MP\), more than the 200 MP this '
     r'tool reads; scale it down.', 1),
    ('--checkpoint step that does not exist', _portrait_as('photo.jpg'), ('--checkpoint=999',),
     r'error: No checkpoint of step 999 in \S+; its checkpoints are at steps \[8, 16\].', 1),
    ('--workdir that holds no run', _portrait_as('photo.jpg'), ('--workdir={tmp}',),
     r'error: \S+/config.json does not exist: --workdir must be the directory a training run '
     r'wrote', 1),
]


@pytest.mark.parametrize('case, make_photo, flags, expected, status', PREDICT_CASES,
                         ids=[case[0] for case in PREDICT_CASES])
def test_predict_answers_every_kind_of_photo_and_loses_nothing(
    tmp_path, trained_run, case, make_photo, flags, expected, status):
  del case
  photo = make_photo(tmp_path)
  flags = [flag.replace('{tmp}', str(tmp_path)) for flag in flags]
  before = _saved_files(trained_run)
  finished = subprocess.run(
      [sys.executable, '-m', 'facialnet_jax.predict', f'--workdir={trained_run}', *flags,
       str(photo)], cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=300, check=False)
  _assert_one_line_error(finished, expected, status)
  if status and not expected.startswith('error: '):
    assert finished.stderr.strip().splitlines()[-1] == NOT_READ
  assert _saved_files(trained_run) == before
