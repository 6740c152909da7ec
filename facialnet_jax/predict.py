"""Gender and age group of every face in ordinary photos, with a trained checkpoint.

  python -m facialnet_jax.predict --workdir W photo.jpg [more.jpg ...] [--checkpoint best]
      [--annotate_dir DIR] [--output_json FILE] [--whole_image]

Each face is found by OpenCV's Haar cascade (offline, shipped with opencv-python-headless<5),
cropped as the training crops are framed and preprocessed by the same function as the data set
builders. Prints one line per face; --annotate_dir writes a copy of each photo with the boxes.
A photo without a face or that cannot be read gets a message; the exit status is non-zero only
when no photo could be read at all.
"""

import dataclasses
import json
import os
from typing import Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image
from PIL import ImageOps

from facialnet_jax import cli
from facialnet_jax import face_detection
from facialnet_jax import preprocessing
from facialnet_jax import report
from facialnet_jax import restore
from facialnet_jax import steps
from facialnet_jax.errors import UserError
from facialnet_jax.metrics import UNKNOWN_LABEL

# Faces go through the network in batches padded to a multiple of this, so a few compilations
# serve any number of faces.
BATCH_MULTIPLE = 8
# Larger images are refused before decoding (3 bytes a pixel); photos are far smaller.
MAX_PIXELS = 200_000_000


@dataclasses.dataclass(frozen=True)
class FacePrediction:
  box: face_detection.FaceBox
  gender_probabilities: np.ndarray  # (2,) male, female
  age_probabilities: np.ndarray  # (8,) the Adience groups

  @property
  def gender(self) -> str:
    return report.GENDER_CLASS_NAMES[int(self.gender_probabilities.argmax())]

  @property
  def age_group(self) -> str:
    return report.AGE_CLASS_NAMES[int(self.age_probabilities.argmax())]

  def describe(self) -> str:
    box = self.box
    order = np.argsort(-self.age_probabilities)
    runners_up = ', '.join(f'{report.AGE_CLASS_NAMES[i]} {100 * self.age_probabilities[i]:.0f}%'
                           for i in order[1:3])
    return (f'box x={box.x} y={box.y} w={box.width} h={box.height} | {self.gender} '
            f'{100 * self.gender_probabilities.max():.0f}% | age {self.age_group} '
            f'{100 * self.age_probabilities.max():.0f}% (then {runners_up})')

  def to_json(self) -> dict:
    left, top, side = self.box.crop_box()
    return {'box': dataclasses.asdict(self.box),
            'crop': {'x': left, 'y': top, 'width': side, 'height': side},
            'gender': self.gender,
            'gender_probabilities': dict(zip(report.GENDER_CLASS_NAMES,
                                             map(float, self.gender_probabilities))),
            'age_group': self.age_group,
            'age_probabilities': dict(zip(report.AGE_CLASS_NAMES,
                                          map(float, self.age_probabilities)))}


def read_photo(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB, turned upright per its EXIF orientation; ValueError if unreadable."""
  try:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
      raise ValueError('the file is empty (0 bytes)')
    with _open_image(path) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise ValueError(f'it is {width}×{height} pixels ({width * height / 1e6:.0f} MP), more '
                         f'than the {MAX_PIXELS // 1_000_000} MP this tool reads; scale it down')
      return preprocessing.pil_pixels(ImageOps.exif_transpose(image), channels=3)
  except FileNotFoundError:
    raise ValueError('no such file') from None
  except IsADirectoryError:
    raise ValueError('it is a directory, not an image') from None
  except PermissionError:
    raise ValueError('no permission to read it') from None
  except Image.UnidentifiedImageError:
    raise ValueError('not an image format Pillow can read') from None
  except (OSError, SyntaxError) as error:
    raise ValueError(f'cannot decode it ({error})') from None


def _open_image(path: str) -> Image.Image:
  """Opens the file, reading the header only. Pillow's decompression-bomb guard is left to
  read_photo, which names the size and the limit."""
  limit = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    return Image.open(path)
  finally:
    Image.MAX_IMAGE_PIXELS = limit


def make_predictor(run: restore.RestoredRun) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """Returns predict(images uint8 (N, S, S, C)) → {'gender': (N, 2), 'age': (N, 8)}
  probabilities, through the same eval step (centre crop, normalisation) as evaluation."""
  eval_step = steps.make_eval_step(run.model, run.config)

  @jax.jit
  def forward(state, images):
    unknown = jnp.full(images.shape[:1], UNKNOWN_LABEL, jnp.int32)
    return eval_step(state, {'image': images, 'gender': unknown, 'age_group': unknown})[1]

  multiple = BATCH_MULTIPLE * run.mesh.size

  def predict(images: np.ndarray) -> dict[str, np.ndarray]:
    count = len(images)
    padding = -count % multiple
    if padding:
      images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    probabilities = jax.device_get(forward(run.state, images))
    return {head: np.asarray(p)[:count] for head, p in probabilities.items()}

  return predict


def predict_photo(rgb: np.ndarray, run: restore.RestoredRun, predictor: Callable,
                  whole_image: bool = False,
                  min_neighbors: int = face_detection.DEFAULT_MIN_NEIGHBORS
                  ) -> list[FacePrediction]:
  """Finds the faces of one photo (or takes the whole image as one face) and classifies them."""
  if whole_image:
    height, width = rgb.shape[:2]
    side = min(height, width)
    faces = [face_detection.FaceBox((width - side) // 2, (height - side) // 2, side, side)]
    inputs = preprocessing.preprocess_face(rgb, run.stored_image_size, run.channels)[None]
  else:
    faces = face_detection.detect_faces(rgb, min_neighbors)
    if not faces:
      return []
    inputs = face_detection.face_inputs(rgb, faces, run.stored_image_size, run.channels)
  probabilities = predictor(inputs)
  return [FacePrediction(face, probabilities['gender'][i], probabilities['age'][i])
          for i, face in enumerate(faces)]


def annotate(rgb: np.ndarray, predictions: list[FacePrediction], path: str,
             whole_image: bool = False) -> None:
  """Writes a copy of the photo with each face's crop box and its labels."""
  bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  thickness = max(1, round(max(rgb.shape[:2]) / 400))
  font_scale = max(0.4, max(rgb.shape[:2]) / 1200)
  for prediction in predictions:
    box = prediction.box
    left, top, side = (box.x, box.y, box.width) if whole_image else box.crop_box()
    colour = (60, 60, 230) if prediction.gender == 'female' else (230, 120, 30)
    cv2.rectangle(bgr, (left, top), (left + side, top + side), colour, thickness)
    text = (f'{prediction.gender} {100 * prediction.gender_probabilities.max():.0f}%, '
            f'{prediction.age_group} {100 * prediction.age_probabilities.max():.0f}%')
    (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX,
                                                          font_scale, thickness)
    text_top = max(0, top - text_height - baseline - 2 * thickness)
    cv2.rectangle(bgr, (left, text_top), (left + text_width, text_top + text_height + baseline),
                  colour, cv2.FILLED)
    cv2.putText(bgr, text, (left, text_top + text_height), cv2.FONT_HERSHEY_SIMPLEX,
                font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
  if not cv2.imwrite(path, bgr):
    raise UserError(f'Cannot write the annotated photo {path}; check --annotate_dir.')


def annotated_path(annotate_dir: str, photo: str, index: int) -> str:
  stem = os.path.splitext(os.path.basename(photo))[0]
  return os.path.join(annotate_dir, f'{index:03d}_{stem}_faces.jpg')


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string('workdir', None, 'Directory of a training run (config.json, checkpoints/).')
  flags.DEFINE_string('checkpoint', restore.BEST, 'latest, best (by validation) or a step number.')
  flags.DEFINE_string('annotate_dir', None, 'Write a copy of each photo with its faces marked '
                      'into this directory.')
  flags.DEFINE_string('output_json', None, 'Also write every result to this JSON file.')
  flags.DEFINE_bool('whole_image', False, 'Take each image as one face crop (like the data '
                    'sets\' crops) instead of detecting faces.')
  flags.DEFINE_integer('min_neighbors', face_detection.DEFAULT_MIN_NEIGHBORS,
                       'Haar cascade minNeighbors: higher finds fewer faces and fewer false ones.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  photos = argv[1:]
  if not photos:
    raise UserError('Give one or more photos: python -m facialnet_jax.predict --workdir W '
                    'photo.jpg [more.jpg ...]')
  run = restore.restore_run(FLAGS.workdir, FLAGS.checkpoint)
  print(f'Model: {run.describe()}; faces as {run.stored_image_size}×{run.stored_image_size} '
        f'{"grayscale" if run.channels == 1 else "RGB"}.')
  predictor = make_predictor(run)
  if FLAGS.annotate_dir:
    os.makedirs(FLAGS.annotate_dir, exist_ok=True)
  results, readable = [], 0
  for index, photo in enumerate(photos):
    try:
      rgb = read_photo(photo)
    except ValueError as error:
      print(f'{photo}: cannot read it: {error}.')
      results.append({'photo': photo, 'error': str(error)})
      continue
    readable += 1
    height, width = rgb.shape[:2]
    if FLAGS.whole_image and min(height, width) < face_detection.MIN_FACE_PIXELS:
      problem = (f'{width}×{height} pixels is too small for a face crop (at least '
                 f'{face_detection.MIN_FACE_PIXELS}×{face_detection.MIN_FACE_PIXELS})')
      print(f'{photo}: {problem}.')
      results.append({'photo': photo, 'error': problem})
      continue
    predictions = predict_photo(rgb, run, predictor, FLAGS.whole_image, FLAGS.min_neighbors)
    if predictions:
      print(f'{photo}: {len(predictions)} face{"s" if len(predictions) > 1 else ""}')
      for number, prediction in enumerate(predictions, 1):
        print(f'  face {number}: {prediction.describe()}')
    else:
      print(f'{photo}: no face found ({rgb.shape[1]}×{rgb.shape[0]} pixels; the detector finds '
            'frontal faces of at least about 24 px; try --whole_image for a face crop).')
    results.append({'photo': photo, 'faces': [p.to_json() for p in predictions]})
    if FLAGS.annotate_dir:
      path = annotated_path(FLAGS.annotate_dir, photo, index)
      annotate(rgb, predictions, path, FLAGS.whole_image)
      print(f'  annotated copy: {path}')
  if FLAGS.output_json:
    with open(FLAGS.output_json, 'w') as f:
      json.dump({'checkpoint': {'workdir': run.workdir, 'checkpoint': run.checkpoint,
                                'step': run.step}, 'photos': results}, f, indent=2)
  if not readable:
    raise UserError(f'None of the {len(photos)} photo(s) could be read.')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
