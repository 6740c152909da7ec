"""Photos to faces to predictions: each face found (MTCNN), aligned, preprocessed like the
training crops and classified in batches of one compiled size; the library behind `predict`,
`video` and `benchmarks/score_photos.py`."""

import collections
import concurrent.futures
import dataclasses
import os
import time
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image
from PIL import ImageOps

from facialnet_jax.data import age_groups
from facialnet_jax.data import preprocessing
from facialnet_jax.inference import alignment
from facialnet_jax.inference import face_detection
from facialnet_jax.training import restore
from facialnet_jax.training import steps

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
  from facialnet_jax.inference import onnx_export  # pylint: disable=import-outside-toplevel
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
