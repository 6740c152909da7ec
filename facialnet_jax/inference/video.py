"""Gender and age group of the faces in a video file or a live camera, every Nth frame, through
predict's own detection, alignment and batched network."""

import dataclasses
import os
from typing import Callable, Iterator

import cv2
import numpy as np

from facialnet_jax.inference import face_prediction
from facialnet_jax.inference import prediction_outputs
from facialnet_jax.runtime.errors import UserError

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')


def is_video(argument: str) -> bool:
  """A video file by its extension, or a camera index ('0', '1', ...)."""
  return argument.isdigit() or argument.lower().endswith(VIDEO_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  source: str
  fps: float
  frames: int  # 0 for a camera (no end known)
  width: int
  height: int


def open_video(source: str) -> tuple[cv2.VideoCapture, VideoInfo]:
  """OpenCV's reader of a file or camera index, with its frame rate and length; a one-line
  error when it cannot be opened."""
  if not source.isdigit() and not os.path.isfile(source):
    raise UserError(f'{source}: no such video file.')
  capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
  if not capture.isOpened():
    what = (f'camera {source} cannot be opened (none there, or in use)' if source.isdigit()
            else f'{source} cannot be read as a video by OpenCV (damaged, or a codec it lacks)')
    raise UserError(f'{what}.')
  fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
  info = VideoInfo(source, fps if fps > 0 else 30.0,
                   0 if source.isdigit() else max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0),
                   int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                   int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
  return capture, info


def frame_step(info: VideoInfo, every: int, every_seconds: float) -> int:
  """Frames between two analysed frames: --every_seconds in the video's time when given, else
  --every."""
  if every_seconds > 0:
    return max(1, round(every_seconds * info.fps))
  if every < 1:
    raise UserError(f'--every={every} must be at least 1 (1 = every frame).')
  return every


def sampled_frames(capture: cv2.VideoCapture, step: int,
                   max_frames: int = 0) -> Iterator[tuple[int, np.ndarray]]:
  """(index, RGB frame) of every `step`th frame; the frames between are grabbed, not
  converted. Stops at the end, or after `max_frames` frames read (0: no limit)."""
  index = 0
  while not max_frames or index < max_frames:
    if index % step:
      if not capture.grab():
        return
    else:
      ok, bgr = capture.read()
      if not ok:
        return
      yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    index += 1


@dataclasses.dataclass
class FrameResult:
  """One analysed frame: its index, time in the video and faces with their predictions."""
  index: int
  time_s: float
  result: face_prediction.PhotoResult

  def to_json(self) -> dict:
    return {'frame': self.index, 'time_s': round(self.time_s, 3),
            'faces': [p.to_json() for p in self.result.predictions]}


def predict_video(capture: cv2.VideoCapture, info: VideoInfo, run, predictor: Callable,
                  options: face_prediction.Options, step: int, keep_pixels: bool = False,
                  batch_size: int = face_prediction.DEFAULT_BATCH_SIZE,
                  max_frames: int = 0) -> Iterator[FrameResult]:
  """Each analysed frame in order; faces go through the network a batch at a time, and a
  progress line with the time left is logged every few seconds."""
  progress = face_prediction.Progress(info.frames or max_frames, 'frames') if (
      info.frames or max_frames) else None
  pending: list[FrameResult] = []
  last_index = -1

  def flush() -> list[FrameResult]:
    face_prediction.classify([frame.result for frame in pending], predictor)
    done = list(pending)
    pending.clear()
    return done

  for index, rgb in sampled_frames(capture, step, max_frames):
    frame = FrameResult(index, index / info.fps, face_prediction.faces_in(
        rgb, f'{info.source}@{index}', run.stored_image_size, run.channels, options,
        keep_pixels))
    pending.append(frame)
    if progress:
      progress.step(index - last_index)
    last_index = index
    if sum(len(f.result.faces) for f in pending) >= batch_size:
      yield from flush()
  yield from flush()


class AnnotatedVideo:
  """The analysed frames with their faces marked, as an MP4 at the analysed frames' rate."""

  def __init__(self, path: str, info: VideoInfo, step: int):
    self.path = path
    self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'),
                                   max(info.fps / step, 1.0), (info.width, info.height))
    if not self._writer.isOpened():
      raise UserError(f'Cannot write the annotated video {path}; check --annotate_dir.')

  def write(self, frame: FrameResult) -> None:
    self._writer.write(prediction_outputs.annotated_bgr(frame.result))

  def close(self) -> None:
    self._writer.release()


def annotated_video_path(annotate_dir: str, source: str) -> str:
  stem = f'camera{source}' if source.isdigit() else os.path.splitext(os.path.basename(source))[0]
  return os.path.join(annotate_dir, f'{stem}_faces.mp4')


def predict_videos(sources: list[str], run, predictor: Callable, options: face_prediction.Options,
                   every: int, every_seconds: float, max_frames: int, annotate_dir: str | None,
                   batch_size: int, csv_writer=None) -> list[dict]:
  """predict's command line for videos: prints one line per face per analysed frame, writes
  CSV rows (with frame and time) and annotated videos; returns the JSON of each video."""
  import time  # pylint: disable=import-outside-toplevel
  outputs = []
  for source in sources:
    capture, info = open_video(source)
    step = frame_step(info, every, every_seconds)
    length = f'{info.frames} frames' if info.frames else 'live'
    print(f'{source}: {info.width}×{info.height}, {info.fps:.1f} fps, {length}; every '
          f'{step}{"st" if step == 1 else "th"} frame.')
    annotated = AnnotatedVideo(annotated_video_path(annotate_dir, source), info, step) if (
        annotate_dir) else None
    frames, faces, start = [], 0, time.perf_counter()
    try:
      for frame in predict_video(capture, info, run, predictor, options, step,
                                 keep_pixels=annotated is not None, batch_size=batch_size,
                                 max_frames=max_frames):
        for number, prediction in enumerate(frame.result.predictions, 1):
          print(f'  {frame.time_s:8.2f} s (frame {frame.index}) face {number}: '
                f'{prediction.describe()}')
        faces += len(frame.result.predictions)
        if annotated:
          annotated.write(frame)
        frame.result.rgb = None
        frames.append(frame.to_json())
        if csv_writer and frame.result.predictions:
          csv_writer.writerows(row | {'frame': frame.index, 'time_s': f'{frame.time_s:.3f}'}
                               for row in prediction_outputs.csv_rows(frame.result))
      read = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
    finally:
      capture.release()
      if annotated:
        annotated.close()
    seconds = time.perf_counter() - start
    speed = f', {read / info.fps / max(seconds, 1e-9):.1f}× real time' if read else ''
    print(f'{source}: {len(frames)} frames analysed of {read} in {seconds:.1f} s{speed}; '
          f'{faces} faces{"; annotated video " + annotated.path if annotated else ""}.')
    outputs.append({'video': source, 'fps': info.fps, 'frame_step': step, 'frames_read': read,
                    'seconds': round(seconds, 2), 'frames': frames})
  return outputs
