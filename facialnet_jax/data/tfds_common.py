"""Pieces shared by the face data set builders (Adience, UTKFace): configs, raw file reading,
parallel decode + preprocess, exact-duplicate removal and the accounting of dropped rows.

A builder (a `FaceDatasetBuilder`) turns its label source into `FaceRecord`s, calls
`prepare_records` with an `ImageSource` (a folder or an archive), and yields the records it gets
back. Every row that does not become an example is in the `DropLog`, whose `metadata()` goes into
`builder.info.metadata`.
"""

import abc
import collections
import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
import shutil
import sys
import tarfile
import zipfile
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from facialnet_jax.data import preprocessing
from facialnet_jax.data.age_groups import UNKNOWN
from facialnet_jax.runtime import logging_setup
from facialnet_jax.runtime.errors import UserError
# At most this many dropped rows are listed one by one in the metadata (all are counted).
MAX_LISTED_DROPS = 2000
# What a new build is written as: read by random access without TensorFlow (tfds.data_source).
DEFAULT_FILE_FORMAT = 'array_record'

# Why a label row did not become an example. The first three are "bad records": they stop the
# build unless skip_bad_records is set or the builder skips that reason by default
# (FaceDatasetBuilder.SKIPPED_BY_DEFAULT). Duplicates are always dropped (when the config says so).
MALFORMED_LINE = 'malformed_line'
MISSING_IMAGE = 'missing_image'
UNREADABLE_IMAGE = 'unreadable_image'
DUPLICATE_ROW = 'duplicate_row'
DUPLICATE_IMAGE = 'duplicate_image'
BAD_RECORD_REASONS = (MALFORMED_LINE, MISSING_IMAGE, UNREADABLE_IMAGE)
DROP_REASONS = (*BAD_RECORD_REASONS, DUPLICATE_ROW, DUPLICATE_IMAGE)
DROP_REASON_DESCRIPTIONS = {
    MALFORMED_LINE: 'the labels could not be parsed (a label file line, or a file name that '
                    'holds them)',
    MISSING_IMAGE: 'the image the row names is not in the manual dir',
    UNREADABLE_IMAGE: 'the image file could not be read or decoded',
    DUPLICATE_ROW: 'the row names an image that an earlier row already names',
    DUPLICATE_IMAGE: 'the image is byte-identical to the image of an earlier row',
}


# ------------------------------------------------------------------------------------------
# Builder configs: stored image size and colour.


@dataclasses.dataclass(eq=False)
class FaceImageConfig(tfds.core.BuilderConfig):
  """A stored image format: `image_size`×`image_size`, 1 (gray) or 3 (RGB) channels.

  `drop_duplicates`: drop rows whose image is byte-identical to an earlier row's (the paper's
  preprocessing). A custom config with `drop_duplicates=False` (and its own name) keeps them.
  """
  image_size: int = preprocessing.DEFAULT_IMAGE_SIZE
  channels: int = 1
  drop_duplicates: bool = True

  def __post_init__(self):
    if self.channels not in (1, 3):
      raise ValueError(f'Config {self.name}: channels must be 1 or 3, got {self.channels}.')
    if self.image_size < 8:
      raise ValueError(f'Config {self.name}: image_size must be at least 8, got {self.image_size}.')


def image_config_name(image_size: int, channels: int) -> str:
  return f"{'gray' if channels == 1 else 'rgb'}{image_size}"


# 75 is the paper's input; 96 leaves room for random-crop augmentation down to 75.
STANDARD_IMAGE_FORMATS = ((75, 1), (96, 1), (75, 3), (96, 3))


def standard_image_configs(config_cls: type[FaceImageConfig] = FaceImageConfig,
                           **config_kwargs) -> list[FaceImageConfig]:
  """gray75 (default, the paper's), gray96, rgb75, rgb96."""
  configs = []
  for image_size, channels in STANDARD_IMAGE_FORMATS:
    colour = 'grayscale' if channels == 1 else 'RGB'
    configs.append(config_cls(
        name=image_config_name(image_size, channels),
        description=f'Faces stored as {image_size}×{image_size} {colour}, exact duplicates dropped.',
        image_size=image_size, channels=channels, **config_kwargs))
  return configs


def image_feature(config: FaceImageConfig) -> tfds.features.Image:
  # PNG: lossless, so the stored pixels are exactly what preprocess_face returned.
  return tfds.features.Image(shape=(config.image_size, config.image_size, config.channels),
                             encoding_format='png')


# ------------------------------------------------------------------------------------------
# Dropped rows: raise or record, and always count. Errors that stop a build: one line, shown
# without a traceback by `tfds build` (see report_build_errors_in_one_line).


class BadRecordError(ValueError, UserError):
  """A label row that cannot become an example; the message is one line saying what to do."""


class BadSourceError(ValueError, UserError):
  """A raw file that cannot be used at all (a truncated archive, a label file in another
  layout, a split left empty); skip_bad_records does not apply. One line saying what to do."""


class MissingSourceError(FileNotFoundError, UserError):
  """The raw files are not there (no manual dir, no images in it); says where to put them."""


_TFDS_CLI_MODULE = 'tensorflow_datasets.scripts.cli.main'


def _one_line_excepthook(previous):
  def excepthook(exc_type, exc, traceback):
    if isinstance(exc, UserError):
      sys.stdout.flush()
      print(f'error: {exc}', file=sys.stderr)
    else:
      previous(exc_type, exc, traceback)
  excepthook.facialnet_one_line = True
  return excepthook


class _QuietBuildLogs:
  """A logging filter for the noise `tfds build` shows around a face build (see
  quiet_build_command_line)."""

  def filter(self, record) -> bool:
    # tfds's warning about the very folder it is about to fill (the commands' rule: a folder
    # left half-built by an earlier try still warns).
    return not logging_setup.is_tfds_notice_of_a_missing_folder(record)


def quiet_build_command_line() -> None:
  """Under the `tfds build` command line, a face build prints its start, errors, warnings and
  one summary line: tfds's INFO lines (one per shard written, 'Generating…', 'Dataset generation
  completed…') and its warning about the empty folder it is about to fill go, and progress bars
  are shown only on a terminal (in a log file tqdm leaves cursor escapes). Nothing changes
  outside the command line. TensorFlow's import notices and apache-beam's apitools warning come
  before any project code runs and stay."""
  if _TFDS_CLI_MODULE not in sys.modules or getattr(quiet_build_command_line, 'done', False):
    return
  quiet_build_command_line.done = True
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('absl').addFilter(_QuietBuildLogs())
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()


def report_build_errors_in_one_line() -> None:
  """Under the `tfds build` command line, a UserError that stops the build (BadRecordError,
  BadSourceError, MissingSourceError) is printed as `error: <message>` instead of a traceback
  (the exit status stays 1). tfds's CLI lets exceptions reach the interpreter, so this is done
  with sys.excepthook; anything else keeps its traceback, and nothing changes outside the CLI."""
  if _TFDS_CLI_MODULE not in sys.modules:
    return
  if not getattr(sys.excepthook, 'facialnet_one_line', False):
    sys.excepthook = _one_line_excepthook(sys.excepthook)


def skip_hint(dataset_name: str, config_name: str = 'gray75') -> str:
  """How to skip bad records instead, from Python and from the command line (ends error lines)."""
  return (f'or build with skip_bad_records=True to skip such rows (Python: tfds.builder('
          f"'{dataset_name}/{config_name}', skip_bad_records=True); command line: tfds build "
          f'{dataset_name}/{config_name}/skip_bad_records=True --imports '
          f'{dataset_name}.{dataset_name}_dataset_builder --manual_dir DIR)')


@dataclasses.dataclass(frozen=True)
class DroppedRow:
  reason: str  # One of DROP_REASONS.
  where: str  # 'fold_2_data.txt line 17' or a file name.
  detail: str


def skipped_reasons(skip_bad_records: bool | None,
                    skipped_by_default: Iterable[str] = ()) -> frozenset[str]:
  """The bad-record reasons that are skipped (and counted) rather than stopping the build:
  all of them for True, none for False (strict), `skipped_by_default` for None."""
  if skip_bad_records is None:
    return frozenset(skipped_by_default)
  return frozenset(BAD_RECORD_REASONS if skip_bad_records else ())


class DropLog:
  """Counts every dropped row by reason; raises BadRecordError on bad records it does not skip."""

  def __init__(self, skip_bad_records: bool | None, skip_hint: str,
               skipped_by_default: Iterable[str] = ()):
    """`skip_bad_records`: True skips every bad record, False none, None (the builder's
    default) those whose reason is in `skipped_by_default`. `skip_hint` ends each error message,
    e.g. 'or pass skip_bad_records=True to skip them'."""
    self.skip_bad_records = skip_bad_records
    self.skipped_reasons = skipped_reasons(skip_bad_records, skipped_by_default)
    self._skip_hint = skip_hint
    self.dropped: list[DroppedRow] = []

  def bad_record(self, reason: str, where: str, problem: str, fix: str) -> None:
    """Raises `where: problem; fix, skip_hint` or, when skipping `reason`, records the row as
    dropped."""
    if reason not in self.skipped_reasons:
      raise BadRecordError(f'{where}: {problem}; {fix}, {self._skip_hint}.')
    self.dropped.append(DroppedRow(reason, where, problem))

  def duplicate(self, reason: str, where: str, detail: str) -> None:
    self.dropped.append(DroppedRow(reason, where, detail))

  def counts(self) -> dict[str, int]:
    counts = dict.fromkeys(DROP_REASONS, 0)
    counts.update(collections.Counter(row.reason for row in self.dropped))
    return counts

  def summary(self, nouns: Mapping[str, tuple[str, str]], max_named: int = 3) -> str | None:
    """'skipped 3 files with malformed names (a, b, c) and dropped 154 exact duplicate images',
    or None when nothing was dropped. `nouns` names the rows of each reason, singular and plural
    ('file with a malformed name', 'files with malformed names'); up to `max_named` skipped bad
    records are named, all are counted."""
    counts = self.counts()

    def counted(reason):
      return f'{counts[reason]:,} {nouns[reason][0 if counts[reason] == 1 else 1]}'

    skipped = []
    for reason in BAD_RECORD_REASONS:
      if counts[reason]:
        names = [row.where for row in self.dropped if row.reason == reason]
        listed = ', '.join(names[:max_named])
        more = f' and {len(names) - max_named:,} more' if len(names) > max_named else ''
        skipped.append(f'{counted(reason)} ({listed}{more})')
    dropped = [counted(reason) for reason in DROP_REASONS
               if reason not in BAD_RECORD_REASONS and counts[reason]]
    parts = []
    if skipped:
      parts.append('skipped ' + ', '.join(skipped))
    if dropped:
      parts.append('dropped ' + ', '.join(dropped))
    return ' and '.join(parts) or None

  def metadata(self) -> dict[str, Any]:
    return {
        'skip_bad_records': self.skip_bad_records,
        'bad_records_skipped': [reason for reason in BAD_RECORD_REASONS
                                if reason in self.skipped_reasons],
        'dropped_rows_total': len(self.dropped),
        'dropped_rows_by_reason': self.counts(),
        'drop_reasons': DROP_REASON_DESCRIPTIONS,
        'dropped_rows': [dataclasses.asdict(row) for row in self.dropped[:MAX_LISTED_DROPS]],
        'dropped_rows_listed': min(len(self.dropped), MAX_LISTED_DROPS),
    }


# ------------------------------------------------------------------------------------------
# Where the raw images are: a folder or an archive, read without extracting.


ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar', '.zip')
# What reading a truncated or corrupted archive raises (tarfile wraps most gzip errors).
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError)


def find_archive(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  """`directory/<stem>.tar.gz` (or .tgz, .tar, .zip) if there is one."""
  for suffix in ARCHIVE_SUFFIXES:
    if (directory / f'{stem}{suffix}').is_file():
      return directory / f'{stem}{suffix}'
  return None


class ImageSource(abc.ABC):
  """Raw images addressed by relative paths such as 'faces/<user>/<file>.jpg'."""

  @abc.abstractmethod
  def describe(self) -> str:
    """For messages: 'folder /data/adience' or 'archive /data/adience/faces.tar.gz'."""

  @abc.abstractmethod
  def list_paths(self) -> list[str]:
    """The path of every file in the source, sorted; an archive is read through once, and a
    path it holds twice is listed twice."""

  @abc.abstractmethod
  def iter_payloads(self, paths: set[str]) -> Iterator[tuple[str, bytes | pathlib.Path]]:
    """Yields (path, bytes or a file path to read) for each of `paths` that is present."""

  def missing_before_reading(self, paths: set[str]) -> set[str]:
    """Paths known to be missing without reading everything (folders); empty for archives."""
    del paths
    return set()


@dataclasses.dataclass(frozen=True)
class FolderSource(ImageSource):
  """Images under `root`, at `root / path`."""
  root: pathlib.Path

  def describe(self) -> str:
    return f'folder {self.root}'

  def list_paths(self) -> list[str]:
    return sorted(path.relative_to(self.root).as_posix() for path in self.root.rglob('*')
                  if path.is_file())

  def missing_before_reading(self, paths: set[str]) -> set[str]:
    return {path for path in paths if not (self.root / path).is_file()}

  def iter_payloads(self, paths: set[str]) -> Iterator[tuple[str, pathlib.Path]]:
    for path in sorted(paths):
      file_path = self.root / path
      if file_path.is_file():
        yield path, file_path  # Read in the worker threads, in parallel.


@dataclasses.dataclass(frozen=True)
class ArchiveSource(ImageSource):
  """Images inside a .tar, .tar.gz, .tgz or .zip archive, streamed in one pass.

  A member's path is its last `path_depth` components ('x/faces/u/f.jpg' → 'faces/u/f.jpg'
  for depth 3), so archives with an extra top folder or a './' prefix work too. Where two
  members have the same path, the first one in the archive is used.
  """
  archive: pathlib.Path
  path_depth: int

  def describe(self) -> str:
    return f'archive {self.archive}'

  def _key(self, member_name: str) -> str:
    parts = [part for part in member_name.replace('\\', '/').split('/') if part not in ('', '.')]
    return '/'.join(parts[-self.path_depth:])

  def _members(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yields (path, read) for each file member, in archive order; `read` works until the
    next member is taken. A truncated or damaged archive raises BadSourceError, from the
    listing or from `read`."""
    try:
      for path, read in self._read_members():
        yield path, functools.partial(self._read_checked, read)
    except _ARCHIVE_ERRORS as error:
      raise self._damaged(error) from error

  def _read_checked(self, read: Callable[[], bytes]) -> bytes:
    try:
      return read()
    except _ARCHIVE_ERRORS as error:
      raise self._damaged(error) from error

  def _damaged(self, error: BaseException) -> 'BadSourceError':
    return BadSourceError(
        f'{self.archive} cannot be read to the end ({type(error).__name__}: {error}): it is '
        'truncated or damaged, for example by an interrupted download; download it again.')

  def _read_members(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if self.archive.name.endswith('.zip'):
      with zipfile.ZipFile(self.archive) as archive:
        for info in archive.infolist():
          if not info.is_dir():
            yield self._key(info.filename), functools.partial(archive.read, info)
      return
    # 'r|*' streams: one sequential pass, no seeking back through a 2 GB gzip file.
    with tarfile.open(self.archive, mode='r|*') as archive:
      for member in archive:
        if member.isfile():
          yield self._key(member.name), lambda member=member: archive.extractfile(member).read()

  def list_paths(self) -> list[str]:
    return sorted(path for path, _ in self._members())

  def iter_payloads(self, paths: set[str]) -> Iterator[tuple[str, bytes]]:
    seen = set()
    for path, read in self._members():
      if path in paths and path not in seen:
        seen.add(path)
        yield path, read()


# ------------------------------------------------------------------------------------------
# Records: one label row each, turned into an example by prepare_records.


@dataclasses.dataclass
class FaceRecord:
  """One label row. `labels` are ClassLabel indices (-1 unknown); `features` the other features.

  `key` must be unique and stable (TFDS orders the shuffled examples by it), e.g. '2-000017'
  for fold 2, line 17. `where` says the same for people: 'fold_2_data.txt line 17'.
  `image`, `digest` and `masked_labels` are filled in by prepare_records.
  """
  key: str
  split: str
  where: str
  image_path: str
  labels: dict[str, int]
  features: dict[str, Any]
  image: bytes | None = None
  digest: str | None = None
  masked_labels: list[str] = dataclasses.field(default_factory=list)

  def example(self) -> dict[str, Any]:
    return {'image': self.image, **self.labels, **self.features}


@dataclasses.dataclass(frozen=True)
class _Processed:
  png: bytes | None
  digest: str | None
  error: str | None


def encode_png(pixels: np.ndarray) -> bytes:
  """PNG bytes of a (H, W, 1) gray or (H, W, 3) RGB uint8 array."""
  if pixels.shape[-1] == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
  # Level 9: 7.5% smaller than OpenCV's default on 75×75 faces, at the same decode speed.
  ok, encoded = cv2.imencode('.png', pixels, [cv2.IMWRITE_PNG_COMPRESSION, 9])
  if not ok:
    raise ValueError('PNG encoding failed.')
  return encoded.tobytes()


def _process_one(payload: bytes | pathlib.Path, image_size: int, channels: int) -> _Processed:
  try:
    data = payload.read_bytes() if isinstance(payload, pathlib.Path) else payload
  except OSError as error:
    return _Processed(None, None, f'cannot read it ({error.strerror or error})')
  digest = hashlib.sha1(data).hexdigest()
  try:
    pixels = preprocessing.preprocess_face(data, image_size, channels)
  except ValueError as error:
    return _Processed(None, digest, str(error))
  return _Processed(encode_png(pixels), digest, None)


def default_num_workers() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def preprocess_payloads(payloads: Iterable[tuple[str, bytes | pathlib.Path]], image_size: int,
                        channels: int, num_workers: int | None = None
                        ) -> Iterator[tuple[str, _Processed]]:
  """Decodes + preprocesses + PNG-encodes in a thread pool, keeping memory bounded.

  Threads, not processes: cv2's decode, resize and encode and hashlib release the GIL, so
  threads use every core without pickling images between processes, while the calling thread
  keeps reading (for example decompressing a tar.gz).
  """
  num_workers = num_workers or default_num_workers()
  max_in_flight = 32 * num_workers
  # Parallelism comes from the pool; cv2's own threads would oversubscribe the cores.
  cv2_threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  try:
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      in_flight = collections.deque()
      for path, payload in payloads:
        in_flight.append((path, pool.submit(_process_one, payload, image_size, channels)))
        while len(in_flight) >= max_in_flight:
          done_path, future = in_flight.popleft()
          yield done_path, future.result()
      while in_flight:
        done_path, future = in_flight.popleft()
        yield done_path, future.result()
  finally:
    cv2.setNumThreads(cv2_threads)


def prepare_records(records: Sequence[FaceRecord], source: ImageSource,
                    config: FaceImageConfig, drop_log: DropLog, missing_fix: str,
                    unreadable_fix: str, num_workers: int | None = None) -> list[FaceRecord]:
  """Reads, preprocesses and de-duplicates the images of `records`; returns those to keep.

  Every record that is not returned is in `drop_log` (or a BadRecordError was raised). In a
  group of byte-identical images the first record (in the given order) is kept; where the
  copies disagree on a label, the kept record's label is set to -1 (unknown) rather than
  trusting either copy (an unknown label conflicts with nothing).
  """
  wanted = {record.image_path for record in records}

  # Folders tell us what is missing before we spend time decoding.
  missing = source.missing_before_reading(wanted)
  for record in records:
    if record.image_path in missing:
      drop_log.bad_record(MISSING_IMAGE, record.where,
                          f'image {record.image_path} is missing', missing_fix)

  processed = dict(preprocess_payloads(source.iter_payloads(wanted - missing), config.image_size,
                                       config.channels, num_workers))
  usable = []
  for record in records:
    if record.image_path in missing:
      continue
    result = processed.get(record.image_path)
    if result is None:
      drop_log.bad_record(MISSING_IMAGE, record.where,
                          f'image {record.image_path} is not in {source.describe()}', missing_fix)
    elif result.error is not None:
      drop_log.bad_record(UNREADABLE_IMAGE, record.where,
                          f'image {record.image_path} is unreadable ({result.error})',
                          unreadable_fix)
    else:
      record.image = result.png
      record.digest = result.digest
      usable.append(record)
  if not config.drop_duplicates:
    return usable
  return drop_exact_duplicates(usable, drop_log)


def drop_exact_duplicates(records: Sequence[FaceRecord], drop_log: DropLog) -> list[FaceRecord]:
  """Keeps the first record of each group of byte-identical images (see prepare_records)."""
  groups = collections.defaultdict(list)
  for record in records:
    groups[record.digest].append(record)
  kept = []
  for record in records:
    group = groups[record.digest]
    first = group[0]
    if record is not first:
      reason = DUPLICATE_ROW if record.image_path == first.image_path else DUPLICATE_IMAGE
      drop_log.duplicate(reason, record.where,
                         f'{record.image_path} is identical to {first.image_path} '
                         f'kept from {first.where}')
      continue
    for name in record.labels:
      # Only known labels can contradict each other: 'm' and 'u' do not conflict.
      if len({other.labels[name] for other in group} - {UNKNOWN}) > 1:
        record.labels[name] = UNKNOWN
        record.masked_labels.append(name)
    kept.append(record)
  return kept


def label_masking_counts(records: Iterable[FaceRecord]) -> dict[str, int]:
  """Per label: how many kept records had it set to -1 because their duplicates disagreed."""
  counts = collections.Counter(name for record in records for name in record.masked_labels)
  return dict(sorted(counts.items()))


def count_values(values: Iterable[str]) -> dict[str, int]:
  """Occurrences per value, most common first (for the metadata)."""
  return dict(collections.Counter(values).most_common())


def split_records(records: Iterable[FaceRecord], split_names: Sequence[str]
                  ) -> Mapping[str, list[FaceRecord]]:
  by_split = {name: [] for name in split_names}
  for record in records:
    by_split[record.split].append(record)
  return by_split


def check_no_empty_split(by_split: Mapping[str, list[FaceRecord]],
                         explain: Callable[[str], str]) -> None:
  """Raises BadSourceError with `explain(split)` for the first split without examples (TFDS
  would stop with 'No examples were yielded', naming no file)."""
  for name, records in by_split.items():
    if not records:
      raise BadSourceError(explain(name))


def describe_preprocessing(config: FaceImageConfig) -> dict[str, Any]:
  return {
      'function': 'facialnet_jax.data.preprocessing.preprocess_face',
      'image_size': config.image_size,
      'channels': config.channels,
      'steps': 'largest centred square of the face crop, BT.601 luma (gray) or RGB, '
               'INTER_AREA resize (INTER_LINEAR when enlarging), stored as PNG (lossless)',
      'drop_duplicates': config.drop_duplicates,
  }


# ------------------------------------------------------------------------------------------
# The builder options and steps every face data set shares.


class _BuiltDatasetInfo(tfds.core.DatasetInfo):
  """The info of a data set this process has just built under `tfds build`: its repr, which
  the command prints last, is the build's one summary line."""

  build_summary: str

  def __repr__(self) -> str:
    return self.build_summary


class FaceDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the face builders: the `skip_bad_records` and `num_workers` options, the manual
  dir check, the writing of prepared records and the one line at the end of a build that says
  what was skipped or dropped. Subclasses set `MANUAL_DIR_CONTENTS`, and may set
  `SKIPPED_BY_DEFAULT` and `DROP_NOUNS`."""

  # Ends the error for a missing manual dir: 'the folder with the Adience files'.
  MANUAL_DIR_CONTENTS = 'the folder with the raw files'
  # Bad-record reasons skipped (and counted) unless skip_bad_records=False: those the official
  # release itself has, so that the documented command builds the files users download.
  SKIPPED_BY_DEFAULT: tuple[str, ...] = ()
  # How the end-of-build line names the rows of each drop reason: (singular, plural).
  DROP_NOUNS: Mapping[str, tuple[str, str]] = {
      MALFORMED_LINE: ('malformed label line', 'malformed label lines'),
      MISSING_IMAGE: ('row whose image is missing', 'rows whose image is missing'),
      UNREADABLE_IMAGE: ('row whose image is unreadable', 'rows whose image is unreadable'),
      DUPLICATE_ROW: ('repeated row', 'repeated rows'),
      DUPLICATE_IMAGE: ('exact duplicate image', 'exact duplicate images'),
  }

  def __init__(self, *, skip_bad_records: bool | None = None, num_workers: int | None = None,
               **kwargs):
    """`skip_bad_records`: True drops (and counts) rows with a missing or unreadable image or a
    malformed label instead of stopping; False stops at every such row; None (the default)
    skips those of `SKIPPED_BY_DEFAULT` and stops at the others. `num_workers`: decode threads
    (default: all cores).

    Neither is part of the config: on the same files a strict build either fails or writes
    exactly what a skipping build writes, so both can share one data directory. Both can be
    given on the command line too: `tfds build <name>/gray75/skip_bad_records=True`.
    """
    super().__init__(**kwargs)
    if kwargs.get('file_format') is None and not self.info.splits:
      # A new build is written as ArrayRecord, which training reads without TensorFlow
      # (tfds.data_source); a build already on disk keeps the format it was written in.
      self.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)
    self._skip_bad_records = skip_bad_records
    self._num_workers = num_workers
    self._original_state.update(skip_bad_records=skip_bad_records, num_workers=num_workers)
    self._drop_log: DropLog | None = None
    self._manual_dir_given = None  # download_config.manual_dir of the build under way
    report_build_errors_in_one_line()
    quiet_build_command_line()

  def _new_drop_log(self) -> DropLog:
    # A custom config cannot be named on the command line: show the default one there.
    config = self.builder_config
    config_name = (config.name if config in self.BUILDER_CONFIGS
                   else self.DEFAULT_BUILDER_CONFIG_NAME or config.name)
    self._drop_log = DropLog(self._skip_bad_records, skip_hint(self.name, config_name),
                             self.SKIPPED_BY_DEFAULT)
    return self._drop_log

  def build_summary(self) -> str:
    """The line printed at the end of a build: 'tfds_utkface/gray75: 15,247 examples (train
    12,104, validation 1,597, test 1,546) in <data dir>', then what was skipped or dropped:
    '; skipped 3 files with malformed names (…) and dropped 154 exact duplicate images; all
    are counted and listed in <data dir>/metadata.json (dropped_rows)'."""
    splits = self.info.splits
    line = (f'{self.name}/{self.builder_config.name}: {splits.total_num_examples:,} examples ('
            + ', '.join(f'{name} {split.num_examples:,}' for name, split in splits.items())
            + f') in {self.data_path}')
    summary = self._drop_log.summary(self.DROP_NOUNS) if self._drop_log else None
    if summary is None:
      return line
    where = ('all are counted and listed in' if len(self._drop_log.dropped) <= MAX_LISTED_DROPS
             else f'all are counted, the first {MAX_LISTED_DROPS:,} listed, in')
    return f'{line}; {summary}; {where} {self.data_path / "metadata.json"} (dropped_rows)'

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
    if self.is_prepared():
      self._say_last(self.build_summary().replace(': ', ': already built, ', 1))
      return super().download_and_prepare(download_dir=download_dir,
                                          download_config=download_config, **kwargs)
    config = download_config or tfds.download.DownloadConfig()
    self._manual_dir_given = config.manual_dir
    manual_dir = config.manual_dir or pathlib.Path(
        download_dir or self.data_dir_root / 'downloads') / 'manual'
    print(f'Building {self.name}/{self.builder_config.name} from {manual_dir} …', flush=True)
    # Folders tfds makes before the raw files are looked at: a build stopped for want of them
    # leaves none of those it made behind.
    root = pathlib.Path(self.data_dir_root)
    made_early = [root, root / 'downloads', root / self.name]
    existed = {folder: folder.exists() for folder in made_early}
    try:
      super().download_and_prepare(download_dir=download_dir, download_config=download_config,
                                   **kwargs)
    except MissingSourceError:
      for folder, was_there in existed.items():
        if not was_there:
          shutil.rmtree(folder, ignore_errors=True)
      raise

  def _log_download_bytes(self) -> None:
    # tfds's 'Downloading and preparing dataset Unknown size …': nothing is downloaded here, and
    # download_and_prepare above says what is being built from where.
    pass

  def _log_download_done(self) -> None:
    # Replaced by the summary line of _post_download_and_prepare_hook, which says more.
    pass

  def _post_download_and_prepare_hook(self) -> None:
    self._say_last(self.build_summary())

  def _say_last(self, line: str) -> None:
    if _TFDS_CLI_MODULE in sys.modules:
      # `tfds build` ends by printing repr(builder.info), some 130 lines; after a build (or a
      # build found done) by this process that repr is this line, so it is printed last.
      self.info.__class__ = _BuiltDatasetInfo
      self.info.build_summary = line
    else:
      print(line, flush=True)

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    try:
      return pathlib.Path(dl_manager.manual_dir)
    except AssertionError:
      # tfds's own message is the whole download guide, pointing at <data_dir>/downloads/manual.
      given = self._manual_dir_given
      if not given:
        problem = 'no --manual_dir was given'
      else:
        problem = f'{given} is {"empty" if pathlib.Path(given).is_dir() else "not a folder"}'
      raise MissingSourceError(
          f'{self.name} is built from files you download yourself and {problem}: pass '
          f'{self.MANUAL_DIR_CONTENTS} as --manual_dir DIR (Python: download_config='
          'tfds.download.DownloadConfig(manual_dir=DIR)); where to get them: README.md, '
          'section Data.') from None

  def _generate_examples(self, records):
    for record in records:
      yield record.key, record.example()


quiet_build_command_line()
