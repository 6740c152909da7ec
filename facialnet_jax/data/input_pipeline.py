"""Where the data come from: TFDS builds or an in-memory synthetic set, split into train/validation/test.

Protocol: on fold-based data (Adience) the test split is one whole fold and the validation split
is carved from the training folds by subject, so no person is in two splits and the test fold is
never used to choose anything.
"""

import concurrent.futures
import dataclasses
import glob
import importlib
import os
import zlib

import numpy as np

from facialnet_jax.data import demo_faces
from facialnet_jax.data import folds
from facialnet_jax.runtime import tensorflow_optional
from facialnet_jax.runtime.errors import UserError

# Data set name → module whose import registers its TFDS builder.
TFDS_BUILDER_MODULES = {
    'tfds_adience': 'tfds_adience.tfds_adience_dataset_builder',
    'tfds_utkface': 'tfds_utkface.tfds_utkface_dataset_builder',
}
# Examples read per task when a split is read into memory.
_READ_CHUNK = 1024
# Subjects are assigned to validation by a hash bucket of their id out of this many.
_VALIDATION_BUCKETS = 10_000


@dataclasses.dataclass
class HostSplit:
  """A split in host memory: uint8 images (N, S, S, C), int32 labels (-1 unknown), subject ids,
  and where the data set stores them (UTKFace) exact ages in years and race (-1 unknown), which
  only the per-group reports read."""
  image: np.ndarray
  gender: np.ndarray
  age_group: np.ndarray
  subject_id: np.ndarray
  age: np.ndarray | None = None
  race: np.ndarray | None = None
  race_names: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.image)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.image.shape[1:])

  def arrays(self) -> dict[str, np.ndarray]:
    return {'image': self.image, 'gender': self.gender, 'age_group': self.age_group}

  def labels(self) -> dict[str, np.ndarray]:
    return {'gender': self.gender, 'age_group': self.age_group}

  def select(self, mask: np.ndarray) -> 'HostSplit':
    return HostSplit(self.image[mask], self.gender[mask], self.age_group[mask],
                     self.subject_id[mask], _select(self.age, mask), _select(self.race, mask),
                     self.race_names)


def _select(values: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
  return None if values is None else values[mask]


def _optional_labels(examples, features, key: str) -> np.ndarray | None:
  """The per-example `key` of a build whose features have it (UTKFace's age, race), else None."""
  if key not in features:
    return None
  return np.array([e[key] for e in examples], np.int32)


def is_validation_subject(subject_ids: np.ndarray, fraction: float) -> np.ndarray:
  """True for the subjects held out for validation: a stable hash of the id, not a random draw,
  so the same people are held out in every run and on every machine."""
  threshold = int(round(fraction * _VALIDATION_BUCKETS))
  buckets = np.array([zlib.crc32(str(s).encode()) % _VALIDATION_BUCKETS for s in subject_ids],
                     dtype=np.int64)
  return buckets < threshold


def check_carve(held_out: np.ndarray, subject_ids: np.ndarray, fraction: float) -> None:
  """Both sides of a validation carve must keep someone."""
  if held_out.all() or not held_out.any():
    raise UserError(f'config.data.validation_fraction={fraction} leaves '
                    f'{"no training" if held_out.all() else "no validation"} subjects among '
                    f'{len(np.unique(subject_ids))}; choose a fraction between 0 and 1 '
                    'that fits this data set.')


def carve_validation(train: HostSplit, fraction: float) -> tuple[HostSplit, HostSplit]:
  """Splits training data into (train, validation) by subject."""
  held_out = is_validation_subject(train.subject_id, fraction)
  check_carve(held_out, train.subject_id, fraction)
  return train.select(~held_out), train.select(held_out)


def split_names(data_config) -> dict[str, str]:
  """TFDS split expressions for train (before validation is carved), validation and test."""
  if data_config.test_fold >= 0:
    train, test = folds.train_and_test_splits(data_config.test_fold)
    return {'train': train, 'validation': '', 'test': test}
  return {'train': data_config.train_split, 'validation': data_config.validation_split,
          'test': data_config.test_split}


def synthetic_split(num_examples: int, image_size: int, seed: int,
                    unknown_fraction: float = 0.05) -> HostSplit:
  """Synthetic faces drawn in memory (no files): labels are learnable from the drawing.

  About `unknown_fraction` of the labels of each head are set to -1 (unknown).
  """
  rng = np.random.default_rng(seed)
  gender = rng.integers(0, 2, num_examples).astype(np.int32)
  age_group = rng.integers(0, 8, num_examples).astype(np.int32)
  images = np.stack([
      demo_faces.draw_face(rng, int(g), int(a), image_size).mean(axis=-1, keepdims=True)
      for g, a in zip(gender, age_group)]).astype(np.uint8)
  gender[rng.random(num_examples) < unknown_fraction] = -1
  age_group[rng.random(num_examples) < unknown_fraction] = -1
  # Four images per synthetic subject, so carving by subject is exercised.
  subject_id = np.array([f'synthetic-{seed}-{i // 4}' for i in range(num_examples)])
  return HostSplit(images, gender, age_group, subject_id)


def built_elsewhere(name: str, builder_config: str, searched: str) -> str | None:
  """A data dir other than `searched` that holds a build of `name/builder_config`, among those a
  `tfds build --data_dir` most likely went to: TFDS's default, the current directory and its
  subfolders; None when none does."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  here = os.getcwd()
  candidates = [tfds.core.constants.get_default_data_dir(), here] + sorted(
      entry.path for entry in os.scandir(here) if entry.is_dir() and entry.name[0] != '.')
  for candidate in candidates:
    if (os.path.realpath(candidate) != os.path.realpath(searched)
        and glob.glob(os.path.join(glob.escape(candidate), name, builder_config, '*',
                                   'dataset_info.json'))):
      return candidate
  return None


def _not_built_message(name: str, builder_config: str, data_dir_root: str,
                       data_dir: str | None, data_dir_flag: str) -> str:
  """The one-line error for a data set missing from `data_dir_root` (the configured `data_dir`,
  or None for TFDS's default): the data dir where it is built when one is found, else both ways
  on."""
  missing = f'The data set {name}/{builder_config} has not been built in {data_dir_root}'
  found = built_elsewhere(name, builder_config, data_dir_root)
  if found:
    return f'{missing}, but it is in {found}: pass {data_dir_flag}={found}.'
  return (f'{missing}. If you built it into another data dir, pass {data_dir_flag}=DIR; '
          f'otherwise build it with `tfds build {name} --config {builder_config} --manual_dir DIR'
          f'{" --data_dir " + data_dir if data_dir else ""}` (see README.md, "Data").')


def tfds_builder(data_config, data_dir_flag: str = '--config.data.data_dir'):
  """The TFDS builder named by the config; a clear error when it has not been built, naming
  `data_dir_flag` (the command's flag for the data dir) when it is built elsewhere.

  With `data.demo` the synthetic demo data set is generated and built first when missing.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if data_config.demo:
    from facialnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
    return demo_data.ensure_demo_dataset(data_config.data_dir or None,
                                         config=data_config.builder_config)
  name = data_config.name
  if name not in TFDS_BUILDER_MODULES:
    raise UserError(f'config.data.name={name!r} is not a known data set; use one of '
                    f'{sorted(TFDS_BUILDER_MODULES)} or config.data.source="synthetic".')
  importlib.import_module(TFDS_BUILDER_MODULES[name])
  data_dir = os.path.expanduser(data_config.data_dir) if data_config.data_dir else None
  builder = tfds.builder(f'{name}/{data_config.builder_config}', data_dir=data_dir)
  if not builder.is_prepared():
    raise UserError(_not_built_message(name, data_config.builder_config,
                                       str(builder.data_dir_root), data_dir, data_dir_flag))
  return builder


def is_random_access(builder) -> bool:
  """True for builds that tfds.data_source reads (ArrayRecord, the default), without TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return builder.info.file_format in tfds.core.file_adapters.FileFormat.with_random_access()


def rebuild_hint(builder) -> str:
  return (f'Rebuild it as ArrayRecord (the default now): delete {builder.data_dir} and run the '
          'same `tfds build` command again (README.md, "Data")')


def data_source(builder, split: str, **options):
  """TFDS's random-access source over `split` of an ArrayRecord build (`options`: decoders).
  One-line errors for an unknown split or a build without random access."""
  if not is_random_access(builder):
    raise UserError(f'{builder.name} in {builder.data_dir} was built as '
                    f'{builder.info.file_format.value}, which has no random access. '
                    f'{rebuild_hint(builder)}.')
  try:
    return builder.as_data_source(split=split, **options)
  except (ValueError, KeyError) as error:
    raise _unreadable_split(builder, split, error) from None


def load_tfds_split(builder, split: str) -> HostSplit:
  """Reads a whole split into host memory (about 6 kB per 75×75 grayscale face).

  ArrayRecord builds (the default) are read by random access, without TensorFlow; older
  TFRecord builds need TensorFlow's tf.data.
  """
  if not is_random_access(builder):
    return _load_tfrecord_split(builder, split)
  source = data_source(builder, split)
  # Decoding runs largely outside the GIL: threads read the split several times faster.
  chunks = [range(start, min(start + _READ_CHUNK, len(source)))
            for start in range(0, len(source), _READ_CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
    examples = [example for chunk in pool.map(source.__getitems__, chunks) for example in chunk]
  features = builder.info.features
  image_shape = features['image'].shape
  return HostSplit(
      np.stack([e['image'] for e in examples]) if examples else np.zeros((0, *image_shape),
                                                                         np.uint8),
      np.array([e['gender'] for e in examples], np.int32),
      np.array([e['age_group'] for e in examples], np.int32),
      np.array([e['user_id'].decode() for e in examples], dtype=str),
      _optional_labels(examples, features, 'age'), _optional_labels(examples, features, 'race'),
      tuple(features['race'].names) if 'race' in features else ())


def _unreadable_split(builder, split: str, error: Exception) -> UserError:
  return UserError(f'Split {split!r} of {builder.name} cannot be read ({error}); its splits '
                   f'are {sorted(builder.info.splits)}.')


def _load_tfrecord_split(builder, split: str) -> HostSplit:
  if not tensorflow_optional.installed():
    raise UserError(f'{builder.name} in {builder.data_dir} was built as TFRecord, which only '
                    f'TensorFlow reads, and TensorFlow is not installed. {rebuild_hint(builder)}; '
                    'or pip install tensorflow-cpu.')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    examples = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  except (ValueError, KeyError) as error:
    raise _unreadable_split(builder, split, error) from None
  return HostSplit(examples['image'], examples['gender'].astype(np.int32),
                   examples['age_group'].astype(np.int32),
                   np.array([s.decode() for s in examples['user_id']]))


def load_splits(config) -> dict[str, HostSplit]:
  """Host-memory train, validation and test splits as the config describes them."""
  data = config.data
  if data.source == 'synthetic':
    train = synthetic_split(data.synthetic_train_examples, data.synthetic_image_size, config.seed)
    test = synthetic_split(data.synthetic_test_examples, data.synthetic_image_size,
                           config.seed + 1)
    train, validation = carve_validation(train, data.validation_fraction)
    return {'train': train, 'validation': validation, 'test': test}
  if data.source != 'tfds':
    raise UserError(f'config.data.source={data.source!r} is unknown; use "tfds" or "synthetic".')
  builder = tfds_builder(data)
  names = split_names(data)
  train = load_tfds_split(builder, names['train'])
  if names['validation']:
    validation = load_tfds_split(builder, names['validation'])
  else:
    train, validation = carve_validation(train, data.validation_fraction)
  return {'train': train, 'validation': validation, 'test': load_tfds_split(builder, names['test'])}
