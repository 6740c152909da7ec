"""Synthetic demo data in Adience's raw layout, so that everything runs before registering.

`python -m facialnet_jax.demo_data OUT_DIR` writes fold_{0..4}_data.txt and
faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image> JPEGs of drawn, face-like
images (facialnet_jax.demo_faces) whose features depend on gender and age group. The faces are
SYNTHETIC: numbers measured on them say that the code runs and learns, nothing about real faces.
`ensure_demo_dataset(data_dir)` writes them if needed and builds them with the tfds_adience
builder.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

from facialnet_jax.data import adience_files
from facialnet_jax.data import age_groups
from facialnet_jax.data import demo_faces
from facialnet_jax.data import tfds_common

DEFAULT_NUM_SUBJECTS = 250
DEFAULT_IMAGES_PER_SUBJECT = 10
DEFAULT_IMAGE_SIZE = 96
DEFAULT_SEED = 0
# Share of rows whose gender, and independently whose age, is written as unknown, so that
# label masking is exercised. The image still shows the true gender and age group.
UNKNOWN_LABEL_FRACTION = 0.04
# Share of rows whose age is a bare year inside the group (as '29') instead of a range.
BARE_YEAR_FRACTION = 0.05
JPEG_QUALITY = 92
COMPLETE_MARKER = 'SYNTHETIC_DEMO_DATA.json'

# The official Adience spelling of each group's age string.
_AGE_RANGE_STRINGS = ('(0, 2)', '(4, 6)', '(8, 12)', '(15, 20)', '(25, 32)', '(38, 43)',
                      '(48, 53)', '(60, 100)')
_README = """\
SYNTHETIC demo data in the raw Adience layout (written by facialnet_jax.demo_data).
These are drawn, face-like images, not photographs of people. Hair length and jaw width depend
on gender; eye size, face roundness, hair greyness and wrinkles on age group. Use them to check
that the pipeline runs and learns; results on them say nothing about real faces.
"""


@dataclasses.dataclass(frozen=True)
class DemoSummary:
  out_dir: pathlib.Path
  num_subjects: int
  num_images: int
  rows_per_fold: tuple[int, ...]


def _age_string(rng: np.random.Generator, age_group: int) -> str:
  if rng.random() < UNKNOWN_LABEL_FRACTION:
    return 'None'
  if rng.random() < BARE_YEAR_FRACTION:
    low, high = age_groups.AGE_GROUP_YEARS[age_group]
    return str(int(rng.integers(low, (high if high is not None else 80) + 1)))
  return _AGE_RANGE_STRINGS[age_group]


def _gender_string(rng: np.random.Generator, gender: int) -> str:
  if rng.random() < UNKNOWN_LABEL_FRACTION:
    return str(rng.choice(['u', '']))
  return age_groups.GENDER_NAMES[gender]


def write_demo_raw(out_dir: str | pathlib.Path, num_subjects: int = DEFAULT_NUM_SUBJECTS,
                   images_per_subject: int = DEFAULT_IMAGES_PER_SUBJECT,
                   image_size: int = DEFAULT_IMAGE_SIZE, seed: int = DEFAULT_SEED) -> DemoSummary:
  """Writes the synthetic data set (fold files + faces/ JPEGs) into `out_dir`.

  Subjects (one user_id and one face_id each) get genders and age groups in equal shares and
  are dealt to the five folds in turn, so the folds are subject-exclusive and balanced.
  Deterministic for a given seed, whatever the number of threads.
  """
  if num_subjects < adience_files.NUM_FOLDS:
    raise ValueError(f'num_subjects must be at least {adience_files.NUM_FOLDS} (one per fold).')
  out_dir = pathlib.Path(out_dir)
  combos = [(gender, age_group) for age_group in range(age_groups.NUM_AGE_GROUPS)
            for gender in range(age_groups.NUM_GENDERS)]
  # Subject i has combination i mod 16 and goes to fold i mod 5: as 16 and 5 are coprime,
  # every fold gets every combination in turn.
  subject_labels = [combos[index % len(combos)] for index in range(num_subjects)]

  def write_subject(subject: int) -> list[str]:
    # One generator per subject: the output does not depend on the order the threads run in.
    subject_rng = np.random.default_rng([seed, subject])
    gender, age_group = subject_labels[subject]
    user_id = f'synthetic{subject:04d}@N00'
    face_id = str(subject + 1)
    user_dir = out_dir / 'faces' / user_id
    user_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for image_index in range(images_per_subject):
      original_image = f'synthetic_{subject:04d}_{image_index:03d}_o.jpg'
      rgb = demo_faces.draw_face(subject_rng, gender, age_group, image_size)
      ok, jpeg = cv2.imencode('.jpg', rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
      assert ok
      file_name = f'{adience_files.CROP_FILE_PREFIXES["faces"]}.{face_id}.{original_image}'
      (user_dir / file_name).write_bytes(jpeg.tobytes())
      fields = (user_id, original_image, face_id, _age_string(subject_rng, age_group),
                _gender_string(subject_rng, gender), '0', '0', str(image_size), str(image_size),
                '0', '0', '0')
      lines.append('\t'.join(fields))
    return lines

  fold_lines = [[adience_files.FOLD_HEADER] for _ in range(adience_files.NUM_FOLDS)]
  with concurrent.futures.ThreadPoolExecutor(tfds_common.default_num_workers()) as pool:
    for subject, lines in enumerate(pool.map(write_subject, range(num_subjects))):
      fold_lines[subject % adience_files.NUM_FOLDS].extend(lines)
  for fold, lines in enumerate(fold_lines):
    (out_dir / adience_files.FOLD_FILE_NAMES[fold]).write_text('\n'.join(lines) + '\n')
  (out_dir / 'README.txt').write_text(_README)
  return DemoSummary(out_dir, num_subjects, num_subjects * images_per_subject,
                     tuple(len(lines) - 1 for lines in fold_lines))


def demo_tfds_data_dir(data_dir: str | pathlib.Path | None = None,
                       num_subjects: int = DEFAULT_NUM_SUBJECTS,
                       images_per_subject: int = DEFAULT_IMAGES_PER_SUBJECT,
                       image_size: int = DEFAULT_IMAGE_SIZE, seed: int = DEFAULT_SEED
                       ) -> pathlib.Path:
  """The TFDS data_dir of one demo variant; its raw files are in <that>/raw.

  It is a folder below `data_dir` (None or '': TFDS's default, ~/tensorflow_datasets), apart
  from where a real Adience build goes (<data_dir>/tfds_adience), so the two never mix.
  """
  if not data_dir:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    data_dir = tfds.core.constants.get_default_data_dir()
  variant = f'{num_subjects}x{images_per_subject}_{image_size}px_seed{seed}'
  return pathlib.Path(data_dir).expanduser() / 'synthetic_adience_demo' / variant


@contextlib.contextmanager
def _exclusive_lock(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w') as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)  # Parallel test workers or runs wait for one writer.
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_demo_dataset(data_dir: str | pathlib.Path | None = None, config: str = 'gray75',
                        num_subjects: int = DEFAULT_NUM_SUBJECTS,
                        images_per_subject: int = DEFAULT_IMAGES_PER_SUBJECT,
                        image_size: int = DEFAULT_IMAGE_SIZE, seed: int = DEFAULT_SEED,
                        file_format: str | None = None):
  """Returns the prepared tfds_adience builder of the synthetic demo, writing and building it
  first when needed (idempotent; about 0.1 s when already built).

  The data set lives under `demo_tfds_data_dir(data_dir, ...)`, not in `data_dir` itself: use
  the returned builder (`builder.as_dataset(split='fold1+fold2+fold3+fold4')`,
  `builder.as_data_source()` with file_format='array_record', `builder.info.metadata`), or pass
  `demo_tfds_data_dir(...)` as the data_dir of `tfds.builder('tfds_adience/gray75', ...)`.
  """
  # Imported here: the raw-data writer must not need TensorFlow.
  from tfds_adience import tfds_adience_dataset_builder  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  root = demo_tfds_data_dir(data_dir, num_subjects, images_per_subject, image_size, seed)
  raw_dir = root / 'raw'
  builder_kwargs = {'config': config, 'data_dir': root}
  if file_format is not None:
    builder_kwargs['file_format'] = file_format
  with _exclusive_lock(root / '.lock'):
    if not (raw_dir / COMPLETE_MARKER).exists():
      if raw_dir.exists():
        shutil.rmtree(raw_dir)  # A previous run was interrupted while writing.
      with tempfile.TemporaryDirectory(dir=root) as tmp:
        summary = write_demo_raw(tmp, num_subjects, images_per_subject, image_size, seed)
        (pathlib.Path(tmp) / COMPLETE_MARKER).write_text(json.dumps({
            'synthetic': True, 'num_subjects': num_subjects,
            'images_per_subject': images_per_subject, 'image_size': image_size, 'seed': seed,
            'rows_per_fold': summary.rows_per_fold}))
        pathlib.Path(tmp).rename(raw_dir)
    builder = tfds_adience_dataset_builder.Builder(**builder_kwargs)
    if (builder.is_prepared() and file_format is None
        and builder.info.file_format.value != tfds_common.DEFAULT_FILE_FORMAT):
      # A demo built by an earlier version as TFRecord, which needs TensorFlow to read: the
      # demo is generated, so build it again in the current format.
      shutil.rmtree(builder.data_dir)
      builder = tfds_adience_dataset_builder.Builder(**builder_kwargs)
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  return builder


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description='Write the SYNTHETIC demo data set in the raw Adience layout (fold files + '
                  'faces/). Build it with: tfds build tfds_adience --config gray75 '
                  '--manual_dir OUT_DIR --data_dir SOMEWHERE_ELSE')
  parser.add_argument('out_dir', type=pathlib.Path)
  parser.add_argument('--num_subjects', type=int, default=DEFAULT_NUM_SUBJECTS)
  parser.add_argument('--images_per_subject', type=int, default=DEFAULT_IMAGES_PER_SUBJECT)
  parser.add_argument('--image_size', type=int, default=DEFAULT_IMAGE_SIZE)
  parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
  args = parser.parse_args(argv)
  try:
    summary = write_demo_raw(args.out_dir, args.num_subjects, args.images_per_subject,
                             args.image_size, args.seed)
  except ValueError as error:  # a bad count or size: one line, exit status 2, like a bad flag
    parser.error(str(error))
  print(f'Wrote {summary.num_images} SYNTHETIC faces of {summary.num_subjects} subjects to '
        f'{summary.out_dir} (rows per fold: {", ".join(map(str, summary.rows_per_fold))}).')


if __name__ == '__main__':
  main()
