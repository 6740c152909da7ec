"""Scores face detection and prediction on a folder of photos against a ground-truth JSON.

  python benchmarks/score_photos.py [--workdir W] --ground_truth ../shared/data/fairface-dev/\
ground_truth.json [--checkpoint best] [--flip] [--min_face_size 40] [--min_confidence 0.9]
      [--backend jax | onnx | jax,onnx]
      [--output scores.json] [--picture by_decade.png]
  python benchmarks/score_photos.py --ground_truth GT.json --predictions predict_output.json

The ground truth is a list of {"filename", "gender": "Male"|"Female", "age": "30-39" | "70+" |
"more than 70"} (fairface-dev's format), the photos beside it. Reports the share of photos with a
face, the share with more than one (every face that passes the thresholds), and, on the largest
face of each photo with a face, gender accuracy and age-group agreement: the predicted Adience
group overlaps the labelled decade; the same per age decade of the ground truth ('by_decade').
Without --workdir or --predictions, the model shipped with the package is scored. The first form
runs predict's own pipeline (after a warm-up
that compiles the network) and times it end to end: reading, detection, alignment and network.
The second scores a JSON that `python -m facialnet_jax.predict --output_json` wrote (any version
of it), so other detectors or older code go through the same scorer.
"""

import json
import os
import re
import sys
import time

import numpy as np
from absl import app
from absl import flags

from facialnet_jax.data import age_groups
from facialnet_jax.inference import face_detection
from facialnet_jax.inference import face_prediction
from facialnet_jax.reports import groups
from facialnet_jax.training import exported_model
from facialnet_jax.training import restore

flags.DEFINE_string('ground_truth', None, 'ground_truth.json of the photos (beside them).')
flags.DEFINE_string('workdir', None, 'Training run (or exported model) that predicts; default: '
                    'the model shipped with the package.')
flags.DEFINE_string('checkpoint', restore.BEST, 'latest, best or a step number.')
flags.DEFINE_string('predictions', None, 'Score this predict --output_json file instead of '
                    'running prediction.')
flags.DEFINE_bool('flip', None, 'Flip test-time augmentation; default: the model\'s '
                  'config.flip_test.')
flags.DEFINE_integer('min_face_size', face_detection.DEFAULT_MIN_FACE_SIZE, 'As predict.')
flags.DEFINE_float('min_confidence', face_detection.DEFAULT_MIN_CONFIDENCE, 'As predict.')
flags.DEFINE_integer('batch_size', face_prediction.DEFAULT_BATCH_SIZE, 'As predict.')
flags.DEFINE_list('backend', ['jax'], 'As predict (jax, onnx); several, e.g. jax,onnx, score and '
                  'time each in turn in this one process (the output then has one entry each '
                  'under "backends").')
flags.register_validator('backend', lambda names: set(names) <= set(face_prediction.BACKENDS),
                         message=f'--backend takes names from {", ".join(face_prediction.BACKENDS)}')
flags.DEFINE_string('output', None, 'Write the scores to this JSON file.')
flags.DEFINE_string('picture', None, 'Draw gender accuracy and age agreement by decade into '
                    'this PNG.')
FLAGS = flags.FLAGS

_DECADE_RE = re.compile(r'^\s*(\d+)\s*-\s*(\d+)\s*$')
_OPEN_DECADE_RE = re.compile(r'^\s*(?:more than\s*(\d+)|(\d+)\s*\+)\s*$')


def decade_years(label: str) -> tuple[int, float]:
  """'30-39' → (30, 39); '70+' and 'more than 70' → (70, inf)."""
  match = _DECADE_RE.match(label)
  if match:
    return int(match.group(1)), int(match.group(2))
  match = _OPEN_DECADE_RE.match(label)
  if match:
    return int(match.group(1) or match.group(2)), float('inf')
  raise ValueError(f'unknown age label {label!r}')


def age_agrees(group_name: str, decade: str) -> bool:
  """Whether the Adience group (e.g. '25-32', '60-100') overlaps the decade's years."""
  low, high = age_groups.AGE_GROUP_YEARS[age_groups.AGE_GROUP_NAMES.index(group_name)]
  first, last = decade_years(decade)
  return low <= last and (high is None or high >= first)


def _tally(rows: list[tuple[dict, dict | None]]) -> dict:
  """Found, extra-face, gender and age-group shares of (ground truth, largest face) pairs."""
  found = [(row, face) for row, face in rows if face is not None]
  count = len(rows)
  return {'photos': count, 'found_percent': 100 * len(found) / max(count, 1),
          'gender_accuracy_percent': 100 * sum(
              face['gender'] == row['gender'].lower() for row, face in found) / max(len(found), 1),
          'age_agreement_percent': 100 * sum(
              age_agrees(face['age_group'], row['age']) for row, face in found) / max(len(found),
                                                                                       1)}


def score(truth: list[dict], photos: dict[str, dict]) -> dict:
  """The scores overall and per age decade, from predict's per-photo JSON keyed by file name."""
  rows, extra = [], 0
  for row in truth:
    faces = photos.get(row['filename'], {}).get('faces') or []
    extra += len(faces) > 1
    rows.append((row, max(faces, key=lambda face: face['box']['width'] * face['box']['height'])
                 if faces else None))
  by_decade = {}
  for band, name in enumerate(groups.AGE_BANDS):
    in_band = [pair for pair in rows if groups.age_band_of_decade(pair[0]['age']) == band]
    if in_band:
      by_decade[name] = _tally(in_band)
  return {**_tally(rows), 'extra_faces_percent': 100 * extra / max(len(rows), 1),
          'by_decade': by_decade}


def run_prediction(paths: list[str], workdir: str | None = None, checkpoint: str = 'best',
                   flip: bool | None = None, batch_size: int = face_prediction.DEFAULT_BATCH_SIZE,
                   min_face_size: int = face_detection.DEFAULT_MIN_FACE_SIZE,
                   min_confidence: float = face_detection.DEFAULT_MIN_CONFIDENCE,
                   backend: str = 'jax') -> tuple[dict[str, dict], dict]:
  """Predict's own pipeline on `paths` (shipped model without `workdir`), timed end to end
  after a warm-up; per-photo JSON keyed by file name, and the timing."""
  start = time.perf_counter()
  run = exported_model.load_run(workdir, checkpoint)
  flip = bool(run.config.get('flip_test', False)) if flip is None else flip
  predictor = face_prediction.backend_predictor(backend, run, batch_size, flip)
  predictor(np.zeros((1, run.stored_image_size, run.stored_image_size, run.channels), np.uint8))
  options = face_prediction.Options(min_face_size=min_face_size, min_confidence=min_confidence)
  # The detector's first call sets OpenCV's networks up: part of start-up too.
  face_detection.detect_faces(np.zeros((64, 64, 3), np.uint8))
  started = time.perf_counter()
  results = list(face_prediction.predict_photos(paths, run, predictor, options, batch_size=batch_size))
  seconds = time.perf_counter() - started
  timing = {'model': run.describe(), 'step': run.step, 'flip': flip, 'backend': backend,
            'min_face_size': min_face_size, 'min_confidence': min_confidence,
            'startup_seconds': round(started - start, 2), 'seconds': round(seconds, 2),
            'photos_per_second': round(len(paths) / seconds, 2),
            'load_average_1min': round(os.getloadavg()[0], 2), 'cpus': os.cpu_count()}
  return {os.path.basename(r.photo): r.to_json() for r in results}, timing


def plot_by_decade(scores: dict, path: str, title: str) -> None:
  """Gender accuracy and age-group agreement by decade, as groups.plot_by_age draws them."""
  table = {band: {'count': values['photos'],
                  'gender': values['gender_accuracy_percent'] / 100,
                  'age': values['age_agreement_percent'] / 100}
           for band, values in scores['by_decade'].items()}
  groups.plot_by_age({'gender': (table, 'gender'), 'age group agrees': (table, 'age')},
                     path, title)


def main(argv):
  del argv
  if not FLAGS.ground_truth:
    sys.exit('error: give --ground_truth (and --workdir or --predictions, or neither for the '
             'shipped model)')
  with open(FLAGS.ground_truth, encoding='utf-8') as f:
    truth = json.load(f)
  folder = os.path.dirname(os.path.abspath(FLAGS.ground_truth))
  if FLAGS.predictions:
    with open(FLAGS.predictions, encoding='utf-8') as f:
      photos = {os.path.basename(p['photo']): p for p in json.load(f)['photos']}
    scores = {**score(truth, photos), 'predictions': FLAGS.predictions}
  else:
    by_backend = {}
    for backend in FLAGS.backend:
      photos, timing = run_prediction(
          [os.path.join(folder, row['filename']) for row in truth], FLAGS.workdir,
          FLAGS.checkpoint, FLAGS.flip, FLAGS.batch_size, FLAGS.min_face_size,
          FLAGS.min_confidence, backend)
      by_backend[backend] = {**score(truth, photos), **timing}
    scores = (by_backend[FLAGS.backend[0]] if len(by_backend) == 1
              else {'backends': by_backend})
  print(json.dumps(scores, indent=2))
  if FLAGS.picture:  # with several backends, the first one's (they score alike)
    pictured = scores['backends'][FLAGS.backend[0]] if 'backends' in scores else scores
    plot_by_decade(pictured, FLAGS.picture, f'{os.path.basename(folder)}: largest face per photo')
  if FLAGS.output:
    with open(FLAGS.output, 'w', encoding='utf-8') as f:
      json.dump(scores, f, indent=2)


if __name__ == '__main__':
  app.run(main)
