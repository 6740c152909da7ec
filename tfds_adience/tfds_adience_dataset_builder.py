"""TFDS builder for Adience: the official five subject-exclusive folds, faces preprocessed as in
the paper (75×75 grayscale by default), from the files a registered user downloads."""

import dataclasses
import time

import tensorflow_datasets as tfds

from facialnet_jax.data import adience_files
from facialnet_jax.data import age_groups
from facialnet_jax.data import tfds_common

UNREADABLE_FIX = 'replace the file with a good copy from the Adience archive'


@dataclasses.dataclass(eq=False)
class AdienceConfig(tfds_common.FaceImageConfig):
  """Stored image format, plus which crops to read: 'auto' (aligned if present, else faces),
  'aligned' (landmark_aligned_face.*) or 'faces' (coarse_tilt_aligned_face.*)."""
  crops: str = 'auto'


class Builder(tfds_common.FaceDatasetBuilder):
  """Adience gender and age-group benchmark, one split per official fold."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official folds, FacialNet preprocessing, drop accounting.'}
  BUILDER_CONFIGS = tfds_common.standard_image_configs(AdienceConfig)
  DEFAULT_BUILDER_CONFIG_NAME = 'gray75'
  MANUAL_DIR_CONTENTS = 'the folder with the Adience files'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Adience needs a (free) registration, so TFDS cannot download it for you.
1. Register at https://talhassner.github.io/home/projects/Adience/Adience-data.html#agegender
   and open the download location you are given.
2. Download into one folder, the manual dir:
   * the label files fold_0_data.txt, fold_1_data.txt, fold_2_data.txt, fold_3_data.txt and
     fold_4_data.txt, and
   * aligned.tar.gz (landmark-aligned faces; used when present) and/or faces.tar.gz (coarse
     tilt-aligned faces).
   Leave the archives packed: they are read directly. Their extracted folders aligned/ and
   faces/ work too (aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>).
3. From the repository root: tfds build tfds_adience --config gray75 --manual_dir DIR
   (Python: tfds.builder('tfds_adience/gray75').download_and_prepare(
   download_config=tfds.download.DownloadConfig(manual_dir=DIR))).
No registration yet? `python -m facialnet_jax.demo_data DIR` writes a synthetic data set in
the same layout.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds_common.image_feature(config),
            'gender': tfds.features.ClassLabel(names=age_groups.GENDER_NAMES),
            'age_group': tfds.features.ClassLabel(names=age_groups.AGE_GROUP_NAMES),
            'age_label': tfds.features.Text(),
            'user_id': tfds.features.Text(),
            'face_id': tfds.features.Text(),
            'original_image': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='https://talhassner.github.io/home/projects/Adience/Adience-data.html',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    start = time.perf_counter()
    config = self.builder_config
    label_dir = adience_files.find_label_dir(self._manual_dir(dl_manager))
    drop_log = self._new_drop_log()

    rows, malformed = adience_files.read_folds(label_dir)
    for line in malformed:
      drop_log.bad_record(tfds_common.MALFORMED_LINE, line.where,
                          f'malformed label line ({line.problem})',
                          'fix the line or restore the original fold file')
    crops, source = adience_files.choose_image_source(label_dir, config.crops)
    records = adience_files.records_from_rows(rows, crops)
    kept = tfds_common.prepare_records(
        records, source, config, drop_log,
        missing_fix=adience_files.missing_image_fix(crops, source),
        unreadable_fix=UNREADABLE_FIX, num_workers=self._num_workers)
    by_split = tfds_common.split_records(kept, adience_files.SPLIT_NAMES)
    tfds_common.check_no_empty_split(by_split, lambda split: (
        f'{adience_files.FOLD_FILE_NAMES[adience_files.SPLIT_NAMES.index(split)]} gives no '
        f'examples ({sum(row.fold == adience_files.SPLIT_NAMES.index(split) for row in rows)} '
        'label rows, none kept): every fold must hold faces, as each is the test split in '
        'turn; restore the original fold file.'))

    self.info.metadata.clear()
    self.info.metadata.update({
        'crops': crops,
        'image_source': source.describe(),
        'label_rows': len(rows) + len(malformed),
        'examples': len(kept),
        'examples_per_split': {name: len(split) for name, split in by_split.items()},
        **drop_log.metadata(),
        'labels_masked_by_conflicting_duplicates': tfds_common.label_masking_counts(kept),
        'age_strings_without_group': tfds_common.count_values(
            row.age_label for row in rows
            if age_groups.age_group_from_label(row.age_label) == age_groups.UNKNOWN),
        'gender_strings_unknown': tfds_common.count_values(
            row.gender_label for row in rows
            if age_groups.gender_from_label(row.gender_label) == age_groups.UNKNOWN),
        'preprocessing': tfds_common.describe_preprocessing(config),
        'prepare_seconds': round(time.perf_counter() - start, 1),
    })
    return {name: self._generate_examples(split) for name, split in by_split.items()}
