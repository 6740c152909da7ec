"""Face detection and alignment: MTCNN finds the face in real photos with five landmarks in its
box, alignment puts a face's eyes where the training crops have them, and a photo without a face
has none."""

import json
import pathlib

import cv2
import matplotlib
import numpy as np
import pytest

from facialnet_jax.inference import alignment
from facialnet_jax.inference import face_detection
from facialnet_jax.inference import face_prediction

SAMPLE_DATA = pathlib.Path(matplotlib.get_data_path()) / 'sample_data'
NO_FACE = SAMPLE_DATA / 'logo2.png'


def test_finds_the_face_and_five_landmarks_inside_its_box_in_fairface_photos(shared_data):
  folder = shared_data / 'fairface-dev'
  rows = json.loads((folder / 'ground_truth.json').read_text())[::30]
  for row in rows:
    rgb = face_prediction.read_photo(str(folder / row['filename']))
    faces = face_detection.detect_faces(rgb)
    assert faces, row['filename']
    face = faces[0]  # the largest: FairFace photos are framed around their subject's face
    assert face.confidence >= face_detection.DEFAULT_MIN_CONFIDENCE
    assert abs(face.x + face.width / 2 - rgb.shape[1] / 2) < 0.25 * rgb.shape[1]
    landmarks = face.landmark_array()
    assert landmarks.shape == (5, 2)
    assert np.all(landmarks >= (face.x, face.y))
    assert np.all(landmarks <= (face.x + face.width, face.y + face.height))
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def _synthetic_face(angle_degrees: float, eye_distance: float, centre: tuple[float, float]):
  """A grey photo with a light oval face whose eyes are dark discs at known places; returns it
  and the five landmarks (the template's, rotated, scaled and moved)."""
  template = alignment.TEMPLATE - alignment.TEMPLATE[:2].mean(axis=0)
  scale = eye_distance / (alignment.TEMPLATE[1, 0] - alignment.TEMPLATE[0, 0])
  angle = np.deg2rad(angle_degrees)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  landmarks = template * scale @ rotation.T + centre
  photo = np.full((480, 640, 3), 90, np.uint8)
  middle = landmarks[[0, 1, 3, 4]].mean(axis=0)
  cv2.ellipse(photo, (int(middle[0]), int(middle[1])), (int(0.5 * scale), int(0.62 * scale)),
              angle_degrees, 0, 360, (210, 190, 170), cv2.FILLED)
  for x, y in landmarks[:2]:
    cv2.circle(photo, (int(round(x * 16)), int(round(y * 16))), 6 * 16, (20, 20, 20), cv2.FILLED,
               cv2.LINE_AA, shift=4)
  return photo, landmarks


def _dark_blob_centre(gray: np.ndarray) -> np.ndarray:
  ys, xs = np.nonzero(gray < 80)
  return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize('angle, eye_distance', [(0, 60), (17, 80), (-25, 45)])
def test_alignment_puts_the_eyes_where_the_training_crops_have_them(angle, eye_distance):
  photo, landmarks = _synthetic_face(angle, eye_distance, centre=(300, 220))
  crop = alignment.align_face(photo, landmarks)
  side = crop.shape[0]
  assert crop.shape == (side, side, 3)
  # The crop is made at the face's own resolution: the eyes are as far apart as in the photo.
  assert abs((alignment.TEMPLATE[1, 0] - alignment.TEMPLATE[0, 0]) * side - eye_distance) < 2
  gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
  middle = side // 2
  for left, expected in ((0, alignment.TEMPLATE[0]), (middle, alignment.TEMPLATE[1])):
    found = _dark_blob_centre(gray[:middle, left:left + middle]) + (left, 0)
    assert np.all(np.abs(found - expected * side) <= 2), (found, expected * side)


def test_aligning_a_training_crop_by_its_own_landmarks_changes_little(shared_data):
  """The template is where the detector finds the landmarks in UTKFace's crops, so aligning
  such a crop leaves it much as it was."""
  differences = []
  for path in sorted((shared_data / 'utkface').glob('*.jpg'))[3::1500][:8]:
    rgb = face_prediction.read_photo(str(path))
    faces = face_detection.detect_faces(rgb)
    if faces:
      corners = alignment.crop_corners(faces[0].landmark_array())
      differences.append(np.abs(corners - [[0, 0], [200, 0], [200, 200], [0, 200]]).max())
  assert len(differences) >= 6
  assert np.median(differences) < 20  # pixels of 200


def test_aligned_crops_reaching_outside_the_photo_are_black():
  photo = np.full((120, 160, 3), 200, np.uint8)
  landmarks = alignment.TEMPLATE * 100 - 30  # the crop's top left 30 px lie outside the photo
  crop = alignment.align_face(photo, landmarks)
  assert crop.shape == (100, 100, 3)
  assert (crop[:29, :] == 0).all() and (crop[:, :29] == 0).all()
  assert (crop[31:, 31:] == 200).all()


def test_a_photo_without_a_face_has_none():
  assert face_detection.detect_faces(face_prediction.read_photo(str(NO_FACE))) == []
  smooth = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8),
                            (31, 31), 0)
  assert face_detection.detect_faces(smooth) == []
  assert face_detection.detect_faces(np.zeros((1, 1, 3), np.uint8)) == []
  assert face_detection.detect_faces(np.zeros((40, 30), np.uint8)) == []


def test_thresholds_drop_small_and_unsure_faces(shared_data):
  rgb = face_prediction.read_photo(str(shared_data / 'fairface-dev' / 'fairface_0020.jpg'))
  faces = face_detection.detect_faces(rgb)
  assert len(faces) == 2  # the subject and a second man beside him, both whole
  assert faces[0].width * faces[0].height >= faces[1].width * faces[1].height
  between = (faces[0].size + faces[1].size) // 2
  assert all(face.size >= between for face in face_detection.detect_faces(rgb, between))
  assert face_detection.detect_faces(rgb, min_face_size=max(rgb.shape) + 1) == []
  assert face_detection.detect_faces(rgb, min_confidence=1.01) == []
