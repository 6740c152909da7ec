"""Adience's raw files: the fold label files, and the face crops in folders or in the archives.

Layout, as a registered user downloads it (https://talhassner.github.io/home/projects/Adience/
Adience-data.html#agegender):

  fold_0_data.txt … fold_4_data.txt    tab-separated labels, one header line, 12 columns
  aligned.tar.gz → aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>
  faces.tar.gz   → faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>
"""

import dataclasses
import pathlib
import re
from typing import Sequence

from facialnet_jax.data import age_groups
from facialnet_jax.data import tfds_common
from facialnet_jax.data.folds import NUM_FOLDS, SPLIT_NAMES, train_and_test_splits  # noqa: F401

FOLD_FILE_NAMES = tuple(f'fold_{fold}_data.txt' for fold in range(NUM_FOLDS))
FOLD_COLUMNS = ('user_id', 'original_image', 'face_id', 'age', 'gender', 'x', 'y', 'dx', 'dy',
                'tilt_ang', 'fiducial_yaw_angle', 'fiducial_score')
FOLD_HEADER = '\t'.join(FOLD_COLUMNS)
# What the official fold files write for an unknown label. Any other string that
# facialnet_jax.age_groups cannot place is a typo or a file in another format, not a choice.
UNKNOWN_GENDER_LABELS = ('u', '')
UNKNOWN_AGE_LABELS = ('None', '')
# A year ('35') or a range ('(25, 32)'); one between two groups maps to unknown, by design.
_AGE_LABEL_RE = re.compile(r'^(\d+|\(\s*\d+\s*,\s*\d+\s*\))$')

# Crop kind → file name prefix inside <crops>/<user_id>/.
CROP_FILE_PREFIXES = {'aligned': 'landmark_aligned_face', 'faces': 'coarse_tilt_aligned_face'}
# 'auto' prefers the landmark-aligned crops (the benchmark's reference models use them) and
# falls back to the coarse tilt-aligned ones.
CROPS_PREFERENCE = ('aligned', 'faces')


@dataclasses.dataclass(frozen=True)
class FoldRow:
  """One label row of a fold file; `line` is 1-based in the file (the header is line 1)."""
  fold: int
  line: int
  user_id: str
  original_image: str
  face_id: str
  age_label: str
  gender_label: str

  @property
  def where(self) -> str:
    return f'{FOLD_FILE_NAMES[self.fold]} line {self.line}'

  def image_path(self, crops: str) -> str:
    prefix = CROP_FILE_PREFIXES[crops]
    return f'{crops}/{self.user_id}/{prefix}.{self.face_id}.{self.original_image}'


@dataclasses.dataclass(frozen=True)
class MalformedLine:
  fold: int
  line: int
  problem: str

  @property
  def where(self) -> str:
    return f'{FOLD_FILE_NAMES[self.fold]} line {self.line}'


def parse_fold_text(text: str, fold: int) -> tuple[list[FoldRow], list[MalformedLine]]:
  """Parses one fold file's text. Blank lines are skipped; a leading header line is checked
  (columns in another order would silently swap labels) and skipped."""
  rows, malformed = [], []
  for line_number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    if line_number == 1 and line.startswith('user_id'):
      _check_header(line, fold)
      continue
    fields = line.split('\t')
    problem = _line_problem(fields)
    if problem:
      malformed.append(MalformedLine(fold, line_number, problem))
      continue
    user_id, original_image, face_id, age, gender = (field.strip() for field in fields[:5])
    rows.append(FoldRow(fold, line_number, user_id, original_image, face_id, age, gender))
  return rows, malformed


def _check_header(line: str, fold: int) -> None:
  columns = [column.strip() for column in line.split('\t')]
  if columns != list(FOLD_COLUMNS):
    raise tfds_common.BadSourceError(
        f'{FOLD_FILE_NAMES[fold]} line 1: the header names the columns {", ".join(columns)}; '
        f'the Adience fold files have the {len(FOLD_COLUMNS)} tab-separated columns '
        f'{", ".join(FOLD_COLUMNS)}, in this order: restore the original file.')


def _line_problem(fields: Sequence[str]) -> str | None:
  if len(fields) != len(FOLD_COLUMNS):
    return (f'expected {len(FOLD_COLUMNS)} tab-separated columns ({", ".join(FOLD_COLUMNS)}), '
            f'found {len(fields)}')
  user_id, original_image, face_id, age, gender = (field.strip() for field in fields[:5])
  for name, value in (('user_id', user_id), ('original_image', original_image)):
    if not value or '/' in value or '\\' in value:
      return f'{name} {value!r} is not a valid name'
  if not face_id.isdigit():
    return f'face_id {face_id!r} is not a number'
  if not _AGE_LABEL_RE.match(age) and age not in UNKNOWN_AGE_LABELS:
    return f"age {age!r} is not a year, a range such as '(25, 32)' or None (unknown)"
  if (age_groups.gender_from_label(gender) == age_groups.UNKNOWN
      and gender.lower() not in UNKNOWN_GENDER_LABELS):
    return f"gender {gender!r} is not m, f or u (u or empty: unknown)"
  return None


def find_label_dir(manual_dir: pathlib.Path) -> pathlib.Path:
  """The folder holding fold_0_data.txt: the manual dir, or a folder up to two levels below it
  (archives unpacked from Kaggle and elsewhere add a folder or two)."""
  for pattern in ('', '*/', '*/*/'):
    for candidate in sorted(manual_dir.glob(pattern + FOLD_FILE_NAMES[0])):
      return candidate.parent
  raise FileNotFoundError(
      f'No {FOLD_FILE_NAMES[0]} in the manual dir {manual_dir} (nor in folders below it): put '
      f'the Adience label files {FOLD_FILE_NAMES[0]} … {FOLD_FILE_NAMES[-1]} there.')


def read_folds(label_dir: pathlib.Path) -> tuple[list[FoldRow], list[MalformedLine]]:
  """Reads all five fold files from `label_dir`, in fold order."""
  missing = [name for name in FOLD_FILE_NAMES if not (label_dir / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f'Missing Adience label files in {label_dir}: {", ".join(missing)}. All five '
        f'({FOLD_FILE_NAMES[0]} … {FOLD_FILE_NAMES[-1]}) are needed: they define the folds.')
  rows, malformed = [], []
  for fold, name in enumerate(FOLD_FILE_NAMES):
    text = (label_dir / name).read_text(encoding='utf-8', errors='replace')
    fold_rows, fold_malformed = parse_fold_text(text, fold)
    rows.extend(fold_rows)
    malformed.extend(fold_malformed)
  return rows, malformed


def available_crops(directory: pathlib.Path) -> dict[str, tfds_common.ImageSource]:
  """Crop kind → where its images are. An extracted folder wins over an archive (it is faster)."""
  sources = {}
  for crops in CROPS_PREFERENCE:
    archive = tfds_common.find_archive(directory, crops)
    if (directory / crops).is_dir():
      sources[crops] = tfds_common.FolderSource(directory)
    elif archive is not None:
      # Member paths are kept to their last 3 parts: <crops>/<user_id>/<file>.
      sources[crops] = tfds_common.ArchiveSource(archive, path_depth=3)
  return sources


def choose_image_source(label_dir: pathlib.Path, crops: str = 'auto'
                        ) -> tuple[str, tfds_common.ImageSource]:
  """Returns (crop kind, source) for `crops` in 'auto', 'aligned', 'faces'."""
  if crops not in ('auto', *CROP_FILE_PREFIXES):
    raise ValueError(f"crops must be 'auto', 'aligned' or 'faces', got {crops!r}.")
  sources = available_crops(label_dir)
  wanted = CROPS_PREFERENCE if crops == 'auto' else (crops,)
  for kind in wanted:
    if kind in sources:
      return kind, sources[kind]
  expected = ', '.join(f'{kind}.tar.gz or {kind}/' for kind in wanted)
  raise FileNotFoundError(
      f'No Adience images in {label_dir}: expected {expected} beside the fold files. Put the '
      'archive you downloaded there (it is read without extracting) or its extracted folder.')


def missing_image_fix(crops: str, source: tfds_common.ImageSource) -> str:
  if isinstance(source, tfds_common.ArchiveSource):
    return f'{source.archive.name} looks incomplete: download it again'
  return (f'extract {crops}.tar.gz completely into {source.root} (or remove the partial '
          f'{crops}/ folder and put {crops}.tar.gz there: it is read directly)')


def records_from_rows(rows: Sequence[FoldRow], crops: str) -> list[tfds_common.FaceRecord]:
  """One FaceRecord per row: split foldK, ClassLabels mapped by facialnet_jax.age_groups."""
  return [
      tfds_common.FaceRecord(
          key=f'{row.fold}-{row.line:06d}',
          split=SPLIT_NAMES[row.fold],
          where=row.where,
          image_path=row.image_path(crops),
          labels={'gender': age_groups.gender_from_label(row.gender_label),
                  'age_group': age_groups.age_group_from_label(row.age_label)},
          features={'age_label': row.age_label, 'user_id': row.user_id,
                    'face_id': row.face_id, 'original_image': row.original_image},
      )
      for row in rows
  ]
