"""Prediction on photos: faces found in real face images and an ordinary photo, none where there
is no face, crops framed like the training crops, the builders' preprocessing, and the CLI."""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest

from facialnet_jax import face_detection
from facialnet_jax import predict
from facialnet_jax import preprocessing
from facialnet_jax import restore
from facialnet_jax import train
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
    rgb = predict.read_photo(str(photo))
    faces = face_detection.detect_faces(rgb)
    if faces:
      found += 1
      largest = max(faces, key=lambda face: face.width)
      centre_x, centre_y = largest.x + largest.width / 2, largest.y + largest.height / 2
      assert abs(centre_x / rgb.shape[1] - 0.5) < 0.2 and abs(centre_y / rgb.shape[0] - 0.5) < 0.2
  assert found >= 0.85 * len(photos)


def test_crops_are_framed_like_the_training_crops(shared_data):
  """On the data sets' own face crops, the crop the detector's box gives is about the crop."""
  ratios, offsets = [], []
  for photo in _sample(shared_data / 'adience-mini' / 'faces', '*/*.jpg', 40):
    rgb = predict.read_photo(str(photo))
    faces = face_detection.detect_faces(rgb)
    if faces:
      left, top, side = max(faces, key=lambda face: face.width).crop_box()
      ratios.append(side / rgb.shape[0])
      offsets.append(((left + side / 2) / rgb.shape[1] - 0.5, (top + side / 2) / rgb.shape[0] - 0.5))
  assert len(ratios) >= 30
  assert 0.85 < np.median(ratios) < 1.15
  assert np.all(np.abs(np.median(offsets, axis=0)) < 0.08)


def test_a_face_in_a_larger_photo_is_found_where_it_is(shared_data):
  face = predict.read_photo(str(_sample(shared_data / 'utkface', '*.jpg', 5)[2]))
  photo = np.full((600, 900, 3), 140, np.uint8)
  photo[250:450, 500:700] = face  # a 200×200 face crop at x 500..700, y 250..450
  faces = face_detection.detect_faces(photo)
  assert len(faces) == 1
  left, top, side = faces[0].crop_box()
  overlap = max(0, min(left + side, 700) - max(left, 500)) * max(0, min(top + side, 450) -
                                                                 max(top, 250))
  assert overlap / (side * side + 200 * 200 - overlap) > 0.6


def test_portrait_photo_has_one_face_and_a_logo_none():
  portrait = predict.read_photo(str(PORTRAIT))
  faces = face_detection.detect_faces(portrait)
  assert len(faces) == 1
  face = faces[0]
  assert 120 < face.x < 190 and 70 < face.y < 140 and 180 < face.width < 280
  assert face_detection.detect_faces(predict.read_photo(str(NO_FACE))) == []
  smooth = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8),
                            (31, 31), 0)
  assert face_detection.detect_faces(smooth) == []


def test_crops_reaching_outside_the_photo_are_padded_black():
  rgb = np.full((50, 60, 3), 200, np.uint8)
  face = face_detection.FaceBox(-10, -5, 40, 40)
  left, top, side = face.crop_box()
  assert (left, side) == (-10, 40) and -5 < top < 0  # moved down a little, as training crops are
  crop = face_detection.crop_face(rgb, face)
  assert crop.shape == (40, 40, 3)
  assert (crop[:-top] == 0).all() and (crop[:, :10] == 0).all()
  assert (crop[-top:, 10:] == 200).all()


def test_prediction_input_is_the_builders_preprocessing(workdir, shared_data, monkeypatch):
  """--whole_image on a data set's face crop gives the model what the TFDS build stored."""
  photo = _sample(shared_data / 'utkface', '*.jpg', 5)[0]
  run = restore.restore_run(workdir)
  seen, original = [], preprocessing.preprocess_face
  predictor = predict.make_predictor(run)
  monkeypatch.setattr(preprocessing, 'preprocess_face',
                      lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
  predictions = predict.predict_photo(predict.read_photo(str(photo)), run, predictor,
                                      whole_image=True)
  assert len(predictions) == 1 and len(seen) == 1
  stored = preprocessing.preprocess_face(photo.read_bytes(), run.stored_image_size, run.channels)
  assert seen[0].shape == stored.shape == (75, 75, 1)
  # Bytes are decoded at reduced scale by libjpeg, arrays resized from full scale: near-equal.
  assert np.abs(seen[0].astype(int) - stored.astype(int)).mean() < 2.0


def test_command_line(workdir, tmp_path):
  text_file = tmp_path / 'notes.txt'
  text_file.write_text('not an image')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, '-m', 'facialnet_jax.predict', f'--workdir={workdir}']
  result = subprocess.run(
      [*command, f'--annotate_dir={tmp_path / "annotated"}',
       f'--output_json={tmp_path / "out.json"}', str(PORTRAIT), str(NO_FACE),
       str(tmp_path / 'missing.jpg'), str(text_file)],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert f'{PORTRAIT}: 1 face' in lines
  assert any(line.startswith('  face 1: box x=') and '| age ' in line for line in lines)
  assert any(line.startswith(f'{NO_FACE}: no face found') for line in lines)
  assert f'{tmp_path / "missing.jpg"}: cannot read it: no such file.' in lines
  assert any(line.startswith(f'{text_file}: cannot read it') for line in lines)
  written = json.loads((tmp_path / 'out.json').read_text())
  face = written['photos'][0]['faces'][0]
  assert sum(face['age_probabilities'].values()) == pytest.approx(1, abs=1e-4)
  assert face['gender'] in ('male', 'female')
  assert written['photos'][1]['faces'] == []
  annotated = cv2.imread(str(tmp_path / 'annotated' / '000_grace_hopper_faces.jpg'))
  assert annotated.shape == predict.read_photo(str(PORTRAIT)).shape

  nothing = subprocess.run([*command, str(tmp_path / 'missing.jpg'), str(text_file)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
  assert nothing.returncode == 1
  assert nothing.stderr.strip().splitlines()[-1] == \
      'error: None of the 2 photo(s) could be read.'
