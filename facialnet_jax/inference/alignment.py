"""Landmark alignment: each detected face is rotated and scaled into the framing of the training
crops (eyes level, same size and place as in UTKFace's aligned crops), then made into model input
by the builders' own preprocess_face."""

import cv2
import numpy as np

from facialnet_jax.data import preprocessing

# Where the five landmarks lie in a training crop, as fractions of its side: the median over 365
# UTKFace "aligned & cropped" faces (200 px; every 40th file of ../shared/data/utkface, 15 of
# 380 had no face found) of what face_detection finds in them; the quartiles are within ±0.02
# for the eyes, ±0.025 for the mouth. Adience's crops (adience-mini: 48 px centre crops) hold the
# face a little lower and smaller: eyes at y 0.35, 0.38 apart (UTKFace: 0.29, 0.395).
TEMPLATE = np.array([[0.2975, 0.2925],   # eye on the photo's left
                     [0.6925, 0.2925],   # eye on the photo's right
                     [0.4925, 0.5225],   # nose tip
                     [0.3175, 0.6925],   # mouth corner, left
                     [0.6675, 0.6925]],  # mouth corner, right
                    np.float32)
# The aligned crop is made at about the face's own resolution (preprocess_face then shrinks it
# with INTER_AREA, as the builders shrink the 200 px crops), but no larger than this.
MAX_CROP_SIDE = 400


def crop_transform(landmarks: np.ndarray, side: int) -> np.ndarray:
  """The 2×3 similarity (rotation, uniform scale, shift) that best maps the five (x, y)
  landmarks onto TEMPLATE × side, by least squares over all five."""
  # A threshold no landmark can miss by keeps all five as inliers, so OpenCV's final refinement
  # is the least-squares fit of them all.
  matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), TEMPLATE * side,
                                          method=cv2.RANSAC, ransacReprojThreshold=1e9)
  if matrix is None:  # Degenerate landmarks (all in one point).
    raise ValueError(f'cannot align landmarks {np.asarray(landmarks).tolist()}')
  return matrix


def native_side(landmarks: np.ndarray) -> float:
  """The side, in photo pixels, of the training-crop framing around these landmarks."""
  matrix = crop_transform(landmarks, 1)
  return 1.0 / float(np.hypot(matrix[0, 0], matrix[0, 1]))


def align_face(rgb: np.ndarray, landmarks: np.ndarray, min_side: int = 1) -> np.ndarray:
  """The (side, side[, C]) crop of the photo framed like a training crop, black where it reaches
  outside the photo (as in Adience's aligned crops); side is the face's own resolution, within
  [min_side, MAX_CROP_SIDE]."""
  side = int(np.clip(round(native_side(landmarks)), min_side, max(min_side, MAX_CROP_SIDE)))
  return cv2.warpAffine(rgb, crop_transform(landmarks, side), (side, side),
                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_corners(landmarks: np.ndarray) -> np.ndarray:
  """(4, 2) photo coordinates of the aligned crop's corners (clockwise from top left), for
  drawing it."""
  inverse = cv2.invertAffineTransform(crop_transform(landmarks, 1))
  corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
  return corners @ inverse[:, :2].T + inverse[:, 2]


def face_input(rgb: np.ndarray, landmarks: np.ndarray, size: int, channels: int) -> np.ndarray:
  """The model input (size, size, channels) uint8 for one face: aligned, then the builders'
  preprocess_face."""
  return preprocessing.preprocess_face(align_face(rgb, landmarks, min_side=size), size, channels)
