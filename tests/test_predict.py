"""Prediction on photos: faces found in real face images and an ordinary photo, none where there
is no face, the builders' preprocessing after alignment, batches of one compiled size, the
scorer's age agreement, and the CLI."""

import collections
import csv
import json
import os
import pathlib
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest

from benchmarks import score_photos
from facialnet_jax import predict
from facialnet_jax.data import preprocessing
from facialnet_jax.inference import alignment
from facialnet_jax.inference import face_detection
from facialnet_jax.inference import face_prediction
from facialnet_jax.training import restore
from facialnet_jax.training import train
from tests.conftest import REPO_ROOT, tiny_config

SAMPLE_DATA = pathlib.Path(matplotlib.get_data_path()) / 'sample_data'
# A portrait photo shipped with matplotlib: one face, with background around it.
PORTRAIT = SAMPLE_DATA / 'grace_hopper.jpg'
NO_FACE = SAMPLE_DATA / 'logo2.png'


def _sample(directory: pathlib.Path, pattern: str, count: int) -> list[pathlib.Path]:
  files = sorted(directory.glob(pattern))
  return files[::max(1, len(files) // count)][:count]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A tiny synthetic run of 2 steps: the model is untrained, the checkpoint is real."""
  directory = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(tiny_config(**{'num_epochs': 1, 'data.synthetic_train_examples': 20,
                                          'data.synthetic_test_examples': 5}),
                           str(directory))
  return str(directory)


def test_finds_the_face_in_real_face_images(shared_data):
  photos = _sample(shared_data / 'utkface', '*.jpg', 20) + _sample(
      shared_data / 'adience-mini' / 'faces', '*/*.jpg', 20)
  found = 0
  for photo in photos:
    rgb = face_prediction.read_photo(str(photo))
    # adience-mini's crops are 48 px: their faces are below the 40 px default.
    faces = face_detection.detect_faces(rgb, min_face_size=16)
    if faces:
      found += 1
      centre_x, centre_y = faces[0].landmark_array().mean(axis=0)
      assert abs(centre_x / rgb.shape[1] - 0.5) < 0.2 and abs(centre_y / rgb.shape[0] - 0.5) < 0.2
  assert found >= 0.85 * len(photos)


def test_a_face_in_a_larger_photo_is_found_where_it_is(shared_data):
  face = face_prediction.read_photo(str(_sample(shared_data / 'utkface', '*.jpg', 5)[2]))
  photo = np.full((600, 900, 3), 140, np.uint8)
  photo[250:450, 500:700] = face  # a 200×200 face crop at x 500..700, y 250..450
  faces = face_detection.detect_faces(photo)
  assert len(faces) == 1
  # Its aligned crop is about the training crop it came from.
  corners = alignment.crop_corners(faces[0].landmark_array())
  assert np.abs(corners - [[500, 250], [700, 250], [700, 450], [500, 450]]).max() < 30


def test_portrait_photo_has_one_face_and_a_logo_none():
  portrait = face_prediction.read_photo(str(PORTRAIT))
  faces = face_detection.detect_faces(portrait)
  assert len(faces) == 1
  face = faces[0]
  assert 140 < face.x < 200 and 80 < face.y < 140 and 150 < face.width < 220
  assert face_detection.detect_faces(face_prediction.read_photo(str(NO_FACE))) == []


def test_prediction_input_is_the_builders_preprocessing(workdir, shared_data, monkeypatch):
  """--whole_image on a data set's face crop gives the model what the TFDS build stored, and a
  detected face goes through the same preprocess_face after alignment."""
  photo = _sample(shared_data / 'utkface', '*.jpg', 5)[0]
  run = restore.restore_run(workdir)
  seen, original = [], preprocessing.preprocess_face
  monkeypatch.setattr(preprocessing, 'preprocess_face',
                      lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
  whole = face_prediction.find_faces(str(photo), run.stored_image_size, run.channels,
                                     face_prediction.Options(whole_image=True))
  assert len(whole.faces) == 1 and len(seen) == 1
  assert whole.faces[0].confidence is None
  stored = original(photo.read_bytes(), run.stored_image_size, run.channels)
  assert seen[0].shape == stored.shape == (75, 75, 1)
  # Bytes are decoded at reduced scale by libjpeg, arrays resized from full scale: near-equal.
  assert np.abs(seen[0].astype(int) - stored.astype(int)).mean() < 2.0
  detected = face_prediction.find_faces(str(PORTRAIT), run.stored_image_size, run.channels,
                                        face_prediction.Options())
  assert len(detected.faces) == 1 and len(seen) == 2
  assert (detected.inputs[0] == seen[1]).all()


def test_batches_of_one_compiled_size_give_each_face_its_own_answer(workdir):
  run = restore.restore_run(workdir)
  images = np.random.default_rng(0).integers(0, 255, (11, 75, 75, 1), np.uint8)
  batched = face_prediction.make_predictor(run, batch_size=4)(images)
  single = face_prediction.make_predictor(run, batch_size=1)
  assert batched['gender'].shape == (11, 2) and batched['age'].shape == (11, 8)
  for i in (0, 5, 10):
    np.testing.assert_allclose(single(images[i:i + 1])['age'][0], batched['age'][i], atol=1e-5)
  flipped = face_prediction.make_predictor(run, batch_size=4, flip=True)(images[:, :, ::-1])
  unflipped = face_prediction.make_predictor(run, batch_size=4, flip=True)(images)
  np.testing.assert_allclose(flipped['gender'], unflipped['gender'], atol=1e-5)


def test_age_agreement_counts_overlapping_groups():
  assert score_photos.age_agrees('25-32', '30-39') and score_photos.age_agrees('38-43', '30-39')
  assert not score_photos.age_agrees('48-53', '30-39')
  assert score_photos.age_agrees('60-100', '70+')
  assert score_photos.age_agrees('60-100', 'more than 70')
  assert not score_photos.age_agrees('0-2', '3-9') and score_photos.age_agrees('4-6', '3-9')
  truth = [{'filename': 'a.jpg', 'gender': 'Male', 'age': '20-29'},
           {'filename': 'b.jpg', 'gender': 'Female', 'age': '50-59'}]
  small = {'box': {'x': 0, 'y': 0, 'width': 10, 'height': 10}, 'gender': 'female',
           'age_group': '0-2'}
  large = {'box': {'x': 0, 'y': 0, 'width': 50, 'height': 50}, 'gender': 'male',
           'age_group': '15-20'}
  scores = score_photos.score(truth, {'a.jpg': {'faces': [small, large]}, 'b.jpg': {'faces': []}})
  assert scores['found_percent'] == 50 and scores['extra_faces_percent'] == 50
  assert scores['gender_accuracy_percent'] == 100 and scores['age_agreement_percent'] == 100


def test_closing_line_without_output_files_says_the_lines_above_are_all():
  outcomes = collections.Counter({'faces': 1, 'no face': 0})
  assert predict.closing_line(outcomes, 3, {'JSON': None}) == (
      '1 photo: 1 with faces (3 faces in all), 0 without a face, 0 failed. Outputs: printed '
      'above only (--annotate_dir, --output_json and --output_csv write them to files).')


def test_command_line(workdir, tmp_path):
  text_file = tmp_path / 'notes.txt'
  text_file.write_text('not an image')
  folder = tmp_path / 'folder'
  folder.mkdir()
  (folder / 'copy.jpg').write_bytes(PORTRAIT.read_bytes())
  (folder / 'readme.txt').write_text('not a photo: not looked at')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, '-m', 'facialnet_jax.predict', f'--workdir={workdir}']
  result = subprocess.run(
      [*command, f'--annotate_dir={tmp_path / "annotated"}', '--flip',
       f'--output_json={tmp_path / "out.json"}', f'--output_csv={tmp_path / "out.csv"}',
       str(PORTRAIT), str(NO_FACE), str(tmp_path / 'missing.jpg'), str(text_file), str(folder)],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert 'with flip' in lines[0]
  assert f'{PORTRAIT}: 1 face' in lines and f'{folder / "copy.jpg"}: 1 face' in lines
  assert any(line.startswith('  face 1: box x=') and '| age ' in line for line in lines)
  assert any(line.startswith(f'{NO_FACE}: no face found') for line in lines)
  assert f'{tmp_path / "missing.jpg"}: cannot read it: no such file.' in lines
  assert any(line.startswith(f'{text_file}: cannot read it') for line in lines)
  written = json.loads((tmp_path / 'out.json').read_text())
  assert written['options']['flip'] is True
  face = written['photos'][0]['faces'][0]
  assert sum(face['age_probabilities'].values()) == pytest.approx(1, abs=1e-4)
  assert face['gender'] in ('male', 'female') and len(face['landmarks']) == 5
  assert written['photos'][1]['faces'] == []
  assert [photo['photo'] for photo in written['photos']][-1] == str(folder / 'copy.jpg')
  with open(tmp_path / 'out.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['photo'] for row in rows] == [photo['photo'] for photo in written['photos']]
  assert rows[0]['face'] == '1' and float(rows[0]['p_male']) + float(rows[0]['p_female']) == \
      pytest.approx(1, abs=1e-3)
  assert rows[1]['error'] == 'no face found' and rows[2]['error'].startswith('cannot read it')
  annotated = cv2.imread(str(tmp_path / 'annotated' / '000_grace_hopper_faces.jpg'))
  assert annotated.shape == face_prediction.read_photo(str(PORTRAIT)).shape
  assert lines[-1] == (
      '5 photos: 2 with faces (2 faces in all), 1 without a face, 2 failed (see their lines '
      f'above). Outputs: annotated copies in {tmp_path / "annotated"}, JSON in '
      f'{tmp_path / "out.json"}, CSV in {tmp_path / "out.csv"}.')

  nothing = subprocess.run([*command, str(tmp_path / 'missing.jpg'), str(text_file)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
  assert nothing.returncode == 1
  assert nothing.stderr.strip().splitlines()[-1] == \
      'error: None of the 2 photo(s) could be read.'
