"""What `predict` writes for a photo besides its printed lines: an annotated copy (faces,
landmarks, labels, a legend) and CSV rows with class names and probabilities."""

import os
from typing import Iterator

import cv2
import numpy as np

from facialnet_jax.data import age_groups
from facialnet_jax.inference import alignment
from facialnet_jax.inference.face_prediction import PhotoResult
from facialnet_jax.runtime.errors import UserError


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
