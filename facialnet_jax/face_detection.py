"""Faces in ordinary photos: OpenCV's Haar cascade finds them, and each is cropped the way the
training data's face crops are framed, then turned into model input by preprocess_face."""

import dataclasses
import functools
import os

import cv2
import numpy as np

from facialnet_jax import preprocessing

# Ships inside opencv-python-headless 4.x (cv2.data.haarcascades); 5.x no longer bundles it.
CASCADE_FILE = 'haarcascade_frontalface_default.xml'

# How a crop relates to the Haar box, measured by running this detector on the data sets' own
# face crops (200 adience-mini crops, 200 UTKFace aligned & cropped faces): the crop's side is
# the box's (median ratio 0.98 on Adience, 0.94 on UTKFace) and its centre lies below the box's
# centre by 3% (Adience) to 9% (UTKFace) of the side, because the box covers brows to chin.
CROP_SCALE = 1.0
CROP_DOWN_SHIFT = 0.05
# Black margin (a fraction of the longer side) added around the photo before detecting: faces
# that fill the frame or touch its border are found only with some context around them
# (measured: 51% → 97% of UTKFace crops, 62% → 95% of Adience crops).
CONTEXT_MARGIN = 0.3
# The margin's own edge looks like a face's edge to the cascade next to a bright blob: a box
# reaching into it is kept only when it is big (a face filling the frame, what the margin is for)
# or almost wholly inside the photo. Measured on 10 blurred-noise images: 6 false faces → 2,
# with no face lost on 120 real face crops.
MIN_INSIDE_FRACTION = 0.9
LARGE_FACE_FRACTION = 0.5  # of the photo's shorter side
# Photos are scaled for detection so the longer side is within these bounds: big photos are
# slow to scan, and tiny ones (48 px crops) hold faces below the cascade's 24 px window.
MAX_DETECTION_SIDE = 1280
MIN_DETECTION_SIDE = 192
MIN_FACE_PIXELS = 24  # at detection scale: the cascade's window
SCALE_FACTOR = 1.1
DEFAULT_MIN_NEIGHBORS = 5


@dataclasses.dataclass(frozen=True)
class FaceBox:
  """A detected face in photo pixels: the detector's box and the square crop the model sees."""
  x: int
  y: int
  width: int
  height: int

  def crop_box(self, scale: float = CROP_SCALE,
               down_shift: float = CROP_DOWN_SHIFT) -> tuple[int, int, int]:
    """(left, top, side) of the square crop; it may reach outside the photo."""
    side = max(1, int(round(scale * max(self.width, self.height))))
    centre_x = self.x + self.width / 2
    centre_y = self.y + self.height / 2 + down_shift * side
    return int(round(centre_x - side / 2)), int(round(centre_y - side / 2)), side


# The return annotation is a string: opencv-python-headless 5.x has no cv2.CascadeClassifier at
# all, and an unquoted one failed the import with an AttributeError before the message below.
@functools.cache
def _cascade() -> 'cv2.CascadeClassifier':
  if not hasattr(cv2, 'CascadeClassifier'):
    raise RuntimeError(f'This OpenCV ({cv2.__version__}) has no Haar cascade detector; install '
                       'opencv-python-headless<5 (5.x dropped cv2.CascadeClassifier and its '
                       'cascades).')
  path = os.path.join(getattr(getattr(cv2, 'data', None), 'haarcascades', ''), CASCADE_FILE)
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise RuntimeError(f'OpenCV\'s face cascade {CASCADE_FILE} is missing ({path}); install '
                       'opencv-python-headless<5 (5.x no longer ships the Haar cascades).')
  return cascade


def detect_faces(rgb: np.ndarray, min_neighbors: int = DEFAULT_MIN_NEIGHBORS) -> list[FaceBox]:
  """Every frontal face in an (H, W, 3) RGB or (H, W) gray uint8 photo, left to right."""
  gray = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]),
                                                cv2.COLOR_RGB2GRAY)
  longer = max(gray.shape)
  scale = min(1.0, MAX_DETECTION_SIDE / longer) if longer > MIN_DETECTION_SIDE else (
      MIN_DETECTION_SIDE / longer)
  if scale != 1.0:
    gray = cv2.resize(gray, None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  margin = int(CONTEXT_MARGIN * max(gray.shape))
  gray = cv2.copyMakeBorder(gray, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
  boxes = _cascade().detectMultiScale(cv2.equalizeHist(gray), scaleFactor=SCALE_FACTOR,
                                      minNeighbors=min_neighbors,
                                      minSize=(MIN_FACE_PIXELS, MIN_FACE_PIXELS))
  faces = [FaceBox(int(round((x - margin) / scale)), int(round((y - margin) / scale)),
                   int(round(w / scale)), int(round(h / scale))) for x, y, w, h in boxes]
  height, width = rgb.shape[:2]
  faces = [face for face in faces
           if face.width >= LARGE_FACE_FRACTION * min(height, width)
           or _inside_fraction(face, width, height) >= MIN_INSIDE_FRACTION]
  return sorted(faces, key=lambda face: (face.x, face.y))


def _inside_fraction(face: FaceBox, width: int, height: int) -> float:
  inside_x = max(0, min(face.x + face.width, width) - max(face.x, 0))
  inside_y = max(0, min(face.y + face.height, height) - max(face.y, 0))
  return inside_x * inside_y / (face.width * face.height)


def crop_face(rgb: np.ndarray, face: FaceBox) -> np.ndarray:
  """The square crop of `face`, black where it reaches outside the photo (as in Adience's
  aligned crops)."""
  left, top, side = face.crop_box()
  height, width = rgb.shape[:2]
  pad = max(0, -left, -top, left + side - width, top + side - height)
  if pad:
    rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
  return rgb[top + pad:top + pad + side, left + pad:left + pad + side]


def face_inputs(rgb: np.ndarray, faces: list[FaceBox], size: int, channels: int) -> np.ndarray:
  """(N, size, size, channels) uint8 model inputs, made by the data sets' own preprocess_face."""
  return np.stack([preprocessing.preprocess_face(crop_face(rgb, face), size, channels)
                   for face in faces])
