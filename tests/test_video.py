"""Video input for predict: every Nth frame through the photo pipeline, rows with frame and time,
an annotated video, and one-line errors for what cannot be read."""

import csv
import json

import cv2
import numpy as np
import pytest

from facialnet_jax.inference import face_prediction
from facialnet_jax.inference import video
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import exported_model
from tests.conftest import SHARED_DATA
from tests.test_evaluate import run_module

FPS = 10


def _write_video(path, photos, seconds: float) -> None:
  """A face photo per second sliding across a gray 320×240 frame."""
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), FPS, (320, 240))
  faces = [cv2.resize(cv2.cvtColor(face_prediction.read_photo(str(p)), cv2.COLOR_RGB2BGR), (200, 200))
           for p in photos]
  for i in range(int(seconds * FPS)):
    frame = np.full((240, 320, 3), 40, np.uint8)
    x = 20 + 8 * (i % FPS)
    frame[20:220, x:x + 200] = faces[(i // FPS) % len(faces)]
    writer.write(frame)
  writer.release()


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """A 3-second clip of three fairface-dev faces (the test skips without ../shared/data)."""
  if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data is not present beside the repository')
  path = tmp_path_factory.mktemp('video') / 'clip.mp4'
  _write_video(path, sorted((SHARED_DATA / 'fairface-dev').glob('*.jpg'))[:3], 3)
  return path


def test_every_nth_frame_is_analysed_with_its_time(clip):
  run = exported_model.load_run(None)
  capture, info = video.open_video(str(clip))
  assert (info.frames, info.fps, info.width) == (3 * FPS, FPS, 320)
  frames = list(video.predict_video(capture, info, run, face_prediction.make_predictor(run),
                                    face_prediction.Options(), video.frame_step(info, 4, 0)))
  assert [f.index for f in frames] == list(range(0, 30, 4))
  assert [f.time_s for f in frames] == pytest.approx([i / FPS for i in range(0, 30, 4)])
  assert all(f.result.predictions for f in frames)  # a face in every frame
  # By time: one frame per half second of video.
  assert video.frame_step(info, 4, 0.5) == 5


def test_command_line_writes_rows_and_an_annotated_video(clip, tmp_path):
  result = run_module('facialnet_jax.predict', str(clip), '--every', '5', '--output_csv',
                      str(tmp_path / 'faces.csv'), '--output_json', str(tmp_path / 'faces.json'),
                      '--annotate_dir', str(tmp_path / 'annotated'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'clip.mp4: 6 frames analysed of 30' in result.stdout
  with open(tmp_path / 'faces.csv') as f:
    rows = list(csv.DictReader(f))
  assert {int(r['frame']) for r in rows} == {0, 5, 10, 15, 20, 25}
  assert all(r['gender'] in ('male', 'female') for r in rows)
  assert {float(r['time_s']) for r in rows} == {0.0, 0.5, 1.0, 1.5, 2.0, 2.5}
  with open(tmp_path / 'faces.json') as f:
    videos = json.load(f)['videos']
  assert len(videos[0]['frames']) == 6 and videos[0]['frames_read'] == 30
  annotated = cv2.VideoCapture(str(tmp_path / 'annotated' / 'clip_faces.mp4'))
  assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_unreadable_videos_are_one_line_errors(tmp_path):
  with pytest.raises(UserError, match='no such video file'):
    video.open_video(str(tmp_path / 'missing.mp4'))
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'not a video at all')
  with pytest.raises(UserError, match='cannot be read as a video'):
    video.open_video(str(broken))
