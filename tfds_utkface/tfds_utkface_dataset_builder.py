"""TFDS builder for UTKFace's aligned & cropped faces: gender, the 8 Adience age groups and the
exact age from the file names, faces preprocessed as in the paper (75×75 grayscale by default),
split into train / validation / test by a hash of the file name."""

import collections
import dataclasses
import hashlib
import pathlib
import time

import numpy as np
import tensorflow_datasets as tfds

from facialnet_jax.data import age_groups
from facialnet_jax.data import tfds_common

# UTKFace.tar.gz holds UTKFace/<age>_<gender>_<race>_<date&time>.jpg.chip.jpg.
ARCHIVE_STEM = 'UTKFace'
IMAGE_FOLDER = 'UTKFace'
IMAGE_SUFFIX = '.jpg'
FILE_NAME_FORMAT = '<age>_<gender>_<race>_<date&time>.jpg.chip.jpg'
# UTKFace's race field: 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others (Hispanic, Latino, ...).
RACE_NAMES = ('white', 'black', 'asian', 'indian', 'others')
# UTKFace writes gender 0 for male and 1 for female; map by name, not by coincidence of order.
GENDER_BY_DIGIT = {'0': age_groups.GENDER_NAMES.index('m'),
                   '1': age_groups.GENDER_NAMES.index('f')}

# A file's split is fixed by its own name: bucket = SHA-256 of the UTF-8 file name, first 8 bytes
# as a big-endian integer, modulo 100. Buckets below 80 are train, below 90 validation, the rest
# test. Adding or removing files never moves another file to another split.
SPLIT_BUCKET_LIMITS = (('train', 80), ('validation', 90), ('test', 100))
SPLIT_NAMES = tuple(name for name, _ in SPLIT_BUCKET_LIMITS)
SPLIT_RULE = ('bucket = int.from_bytes(sha256(file_name.encode("utf-8")).digest()[:8], "big") '
              '% 100; train: bucket < 80, validation: 80 <= bucket < 90, test: bucket >= 90')

MALFORMED_FIX = (f'rename it to {FILE_NAME_FORMAT} if you know its labels, or remove it '
                 '(the original UTKFace release has three such files: without '
                 'skip_bad_records=False they are skipped)')
UNREADABLE_FIX = 'replace the file with a good copy from UTKFace.tar.gz'


@dataclasses.dataclass(frozen=True)
class FaceFile:
  """The labels in one UTKFace file name; `gender` is a GENDER_NAMES index."""
  file_name: str
  age: int
  gender: int
  race: int


def parse_file_name(file_name: str) -> FaceFile:
  """Reads age, gender and race from `<age>_<gender>_<race>_<date&time>...jpg`.

  Raises ValueError saying what is wrong. The date and time are not checked: one file of the
  original release lacks the dot before 'jpg.chip.jpg' and its labels are fine.
  """
  fields = file_name.split('_')
  if len(fields) != 4:
    missing = ' (is the race missing?)' if len(fields) == 3 else ''
    raise ValueError(f"{len(fields)} '_'-separated fields{missing}, expected 4: "
                     f'{FILE_NAME_FORMAT}')
  age, gender, race, _ = fields
  if not age.isdigit():
    raise ValueError(f'age {age!r} is not a whole number of years')
  if gender not in GENDER_BY_DIGIT:
    raise ValueError(f'gender {gender!r} is not 0 (male) or 1 (female)')
  if not race.isdigit() or int(race) >= len(RACE_NAMES):
    raise ValueError(f'race {race!r} is not one of 0..{len(RACE_NAMES) - 1}')
  return FaceFile(file_name, int(age), GENDER_BY_DIGIT[gender], int(race))


def split_of(file_name: str) -> str:
  """The split of a file, from its name alone (see SPLIT_RULE)."""
  digest = hashlib.sha256(file_name.encode('utf-8')).digest()
  bucket = int.from_bytes(digest[:8], 'big') % 100
  return next(name for name, limit in SPLIT_BUCKET_LIMITS if bucket < limit)


def _holds_images(folder: pathlib.Path) -> bool:
  return folder.is_dir() and any(
      path.name.lower().endswith(IMAGE_SUFFIX) and path.is_file() for path in folder.iterdir())


def find_image_source(manual_dir: pathlib.Path) -> tfds_common.ImageSource:
  """The extracted folder (manual_dir/UTKFace/ or manual_dir itself) or UTKFace.tar.gz.

  A folder wins over the archive: it is faster to read. Only the folder's own files are faces
  (not those in folders below it); inside the archive every file counts, by its name alone.
  """
  for folder in (manual_dir / IMAGE_FOLDER, manual_dir):
    if _holds_images(folder):
      return tfds_common.FolderSource(folder)
  archive = tfds_common.find_archive(manual_dir, ARCHIVE_STEM)
  if archive is not None:
    return tfds_common.ArchiveSource(archive, path_depth=1)
  raise tfds_common.MissingSourceError(
      f'No UTKFace faces in {manual_dir}: expected {ARCHIVE_STEM}.tar.gz, its extracted '
      f'{IMAGE_FOLDER}/ folder, or the {FILE_NAME_FORMAT} files themselves. Put the archive '
      'there (it is read without extracting).')


def _is_face_file(path: str) -> bool:
  return '/' not in path and path.lower().endswith(IMAGE_SUFFIX)


def record_from_file(face: FaceFile) -> tfds_common.FaceRecord:
  """The file name is the key, the place in messages and, for want of person ids, the user_id."""
  return tfds_common.FaceRecord(
      key=face.file_name,
      split=split_of(face.file_name),
      where=face.file_name,
      image_path=face.file_name,
      labels={'gender': face.gender, 'age_group': age_groups.age_group_from_years(face.age),
              'age': face.age, 'race': face.race},
      features={'user_id': face.file_name, 'file_name': face.file_name},
  )


class Builder(tfds_common.FaceDatasetBuilder):
  """UTKFace (aligned & cropped faces), split 80/10/10 by a hash of the file name."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Hash-of-file-name splits, FacialNet preprocessing, drop accounting.'}
  BUILDER_CONFIGS = tfds_common.standard_image_configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'gray75'
  MANUAL_DIR_CONTENTS = 'the folder with UTKFace.tar.gz (or its extracted UTKFace/ folder)'
  # The original release has three file names without the race field: skipped and counted
  # unless skip_bad_records=False, so that the documented command builds the files users get.
  # An unreadable image still stops the build (a damaged download): skip_bad_records=True.
  SKIPPED_BY_DEFAULT = (tfds_common.MALFORMED_LINE,)
  DROP_NOUNS = {
      **tfds_common.FaceDatasetBuilder.DROP_NOUNS,
      tfds_common.MALFORMED_LINE: ('file with a malformed name', 'files with malformed names'),
      tfds_common.MISSING_IMAGE: ('file that vanished during the build',
                                  'files that vanished during the build'),
      tfds_common.UNREADABLE_IMAGE: ('unreadable image', 'unreadable images'),
      tfds_common.DUPLICATE_ROW: ('repeated file name', 'repeated file names'),
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
UTKFace is for non-commercial research only and is shared through a Google Drive link that TFDS
cannot follow, so download it yourself.
1. Open https://susanqq.github.io/UTKFace/ and download "Aligned&Cropped Faces": UTKFace.tar.gz
   (about 23,700 faces of 200×200 pixels named {FILE_NAME_FORMAT}).
2. Put UTKFace.tar.gz into a folder, the manual dir. Leave it packed: it is read directly. Its
   extracted UTKFace/ folder works too, as does a folder holding the .jpg.chip.jpg files.
   The in-the-wild images (part1/2/3.tar.gz) are not face crops: do not use them here.
3. From the repository root: tfds build tfds_utkface --config gray75 --manual_dir DIR
   (Python: tfds.builder('tfds_utkface/gray75').download_and_prepare(
   download_config=tfds.download.DownloadConfig(manual_dir=DIR))).
The original release has three files whose names lack the race field: the build skips them,
counts and lists them in the data set's metadata and says so in one line at its end. To stop at
such a file instead, add /skip_bad_records=False to the name (tfds build
tfds_utkface/gray75/skip_bad_records=False --imports tfds_utkface.tfds_utkface_dataset_builder
--manual_dir DIR); /skip_bad_records=True also skips unreadable images, which otherwise stop the
build.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds_common.image_feature(self.builder_config),
            'gender': tfds.features.ClassLabel(names=age_groups.GENDER_NAMES),
            'age_group': tfds.features.ClassLabel(names=age_groups.AGE_GROUP_NAMES),
            'age': tfds.features.Scalar(
                dtype=np.int32, doc='Age in years from the file name; -1 where byte-identical '
                'copies of the image disagree.'),
            'race': tfds.features.ClassLabel(names=RACE_NAMES),
            'user_id': tfds.features.Text(
                doc='The file name: UTKFace has no person ids, so each image is its own subject.'),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='https://susanqq.github.io/UTKFace/',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    start = time.perf_counter()
    config = self.builder_config
    source = find_image_source(self._manual_dir(dl_manager))
    drop_log = self._new_drop_log()

    paths = source.list_paths()
    names = [path for path in paths if _is_face_file(path)]
    copies = collections.Counter(names)
    if not copies:
      raise tfds_common.MissingSourceError(
          f'No {IMAGE_SUFFIX} files in {source.describe()}: expected UTKFace faces named '
          f'{FILE_NAME_FORMAT}.')
    faces = []
    for name in sorted(copies):
      for _ in range(copies[name] - 1):
        drop_log.duplicate(tfds_common.DUPLICATE_ROW, name,
                           f'{source.describe()} holds {copies[name]} files named {name}; '
                           'the first is used')
      try:
        faces.append(parse_file_name(name))
      except ValueError as error:
        drop_log.bad_record(tfds_common.MALFORMED_LINE, name, f'malformed file name ({error})',
                            MALFORMED_FIX)

    # Sorted by file name: of byte-identical copies, the first name is kept, in whatever split.
    kept = tfds_common.prepare_records(
        [record_from_file(face) for face in faces], source, config, drop_log,
        missing_fix=f'the file vanished from {source.describe()} during the build: build again',
        unreadable_fix=UNREADABLE_FIX, num_workers=self._num_workers)
    by_split = tfds_common.split_records(kept, SPLIT_NAMES)
    tfds_common.check_no_empty_split(by_split, lambda split: (
        f'The {split} split would be empty: {len(kept)} usable faces in {source.describe()}, '
        'and each goes to train, validation or test by a hash of its file name (80/10/10); '
        'build from the whole UTKFace release (about 23,700 faces).'))

    self.info.metadata.clear()
    self.info.metadata.update({
        'image_source': source.describe(),
        'image_files': len(names),
        'other_files_ignored': len(paths) - len(names),
        'examples': len(kept),
        'examples_per_split': {name: len(split) for name, split in by_split.items()},
        'split_rule': SPLIT_RULE,
        **drop_log.metadata(),
        'labels_masked_by_conflicting_duplicates': tfds_common.label_masking_counts(kept),
        'ages_between_groups': tfds_common.count_values(
            str(face.age) for face in faces
            if age_groups.age_group_from_years(face.age) == age_groups.UNKNOWN),
        'preprocessing': tfds_common.describe_preprocessing(config),
        'prepare_seconds': round(time.perf_counter() - start, 1),
    })
    return {name: self._generate_examples(split) for name, split in by_split.items()}
