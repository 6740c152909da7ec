"""The streaming input path (config.data.pipeline='streaming'), for data that do not fit in device
memory: the host reads each batch by random access, without TensorFlow, a few batches ahead."""

import dataclasses
import queue
import threading
import weakref
from typing import Any, Callable, Iterator

import jax
import numpy as np

from facialnet_jax.data import age_groups
from facialnet_jax.data import input_pipeline
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import device_data
from facialnet_jax.training import metrics as metrics_lib

# Batches read ahead of the device: enough to hide a slow read, few enough to cost little memory.
PREFETCH_BATCHES = 3
# Subject ids are read in chunks of this many examples, so a large split never sits in memory.
_ID_CHUNK = 8192
# Examples per read when all labels are wanted: their images pass through memory, a chunk at once.
_LABEL_CHUNK = 1024


class HostArraySource:
  """Host arrays (image, gender, age_group) behind the interface of a TFDS data source: len()
  and __getitems__(indices) → example dicts. Synthetic data and benchmarks stream from it."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self._arrays = arrays

  def __len__(self) -> int:
    return len(self._arrays['image'])

  def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
    return [{key: values[i] for key, values in self._arrays.items()} for i in indices]


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A split read on demand: rows `rows` of `source`, a random-access source (a TFDS data source
  or a HostArraySource). A validation carve selects rows; an uncarved split has all of them."""
  source: Any
  rows: np.ndarray
  image_shape: tuple[int, int, int]

  def __len__(self) -> int:
    return len(self.rows)

  def read(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at `positions` of this split as one batch; a position of -1 gives a padding
    row (zero image, unknown labels) that counts nowhere."""
    valid = positions >= 0
    batch = {'image': np.zeros((len(positions), *self.image_shape), np.uint8),
             'gender': np.full(len(positions), age_groups.UNKNOWN, np.int32),
             'age_group': np.full(len(positions), age_groups.UNKNOWN, np.int32)}
    examples = self.source.__getitems__(self.rows[positions[valid]].tolist())
    if examples:  # A process's rows of the last batch may all be padding.
      batch['image'][valid] = np.stack([example['image'] for example in examples])
      for key in ('gender', 'age_group'):
        batch[key][valid] = [example[key] for example in examples]
    return batch

  def labels(self) -> dict[str, np.ndarray]:
    """Every example's gender and age_group, read in chunks (images are read too, and
    dropped: once per run, for the class weights)."""
    chunks = [self.read(np.arange(start, min(start + _LABEL_CHUNK, len(self))))
              for start in range(0, len(self), _LABEL_CHUNK)]
    return {key: np.concatenate([chunk[key] for chunk in chunks] or [np.zeros(0, np.int32)])
            for key in ('gender', 'age_group')}


def from_host(split: input_pipeline.HostSplit) -> StreamSplit:
  """A host-memory split as a stream (synthetic data, benchmarks)."""
  return StreamSplit(HostArraySource(split.arrays()), np.arange(len(split)), split.image_shape)


def _subject_ids(builder, split: str) -> np.ndarray:
  """Every example's user_id, in split order, without decoding a single image."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source = input_pipeline.data_source(builder, split,
                                      decoders={'image': tfds.decode.SkipDecoding()})
  ids = []
  for start in range(0, len(source), _ID_CHUNK):
    chunk = source.__getitems__(list(range(start, min(start + _ID_CHUNK, len(source)))))
    ids.extend(example['user_id'].decode() for example in chunk)
  return np.array(ids, str)


def load_splits(config) -> dict[str, StreamSplit]:
  """train / validation / test as streams; validation is carved by subject as on the device path."""
  data = config.data
  if data.source == 'synthetic':
    return {name: from_host(split) for name, split in input_pipeline.load_splits(config).items()}
  builder = input_pipeline.tfds_builder(data)
  names = input_pipeline.split_names(data)
  shape = tuple(builder.info.features['image'].shape)

  def whole(split):
    source = input_pipeline.data_source(builder, split)
    return StreamSplit(source, np.arange(len(source)), shape)

  splits = {'train': whole(names['train']), 'test': whole(names['test'])}
  if names['validation']:
    splits['validation'] = whole(names['validation'])
    return splits
  ids = _subject_ids(builder, names['train'])
  held_out = input_pipeline.is_validation_subject(ids, data.validation_fraction)
  input_pipeline.check_carve(held_out, ids, data.validation_fraction)
  # A source of its own for validation: it is read while the training feed reads ahead.
  splits['train'] = StreamSplit(splits['train'].source, np.flatnonzero(~held_out), shape)
  splits['validation'] = StreamSplit(input_pipeline.data_source(builder, names['train']),
                                     np.flatnonzero(held_out), shape)
  return splits


def _process_rows(batch_size: int) -> slice:
  """This process's rows of every global batch (its devices hold them)."""
  processes = jax.process_count()
  if batch_size % processes:
    raise UserError(f'The batch size {batch_size} does not split across the {processes} '
                    'processes of this run; use a multiple of the process count.')
  local = batch_size // processes
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def _on_devices(batch: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  """This process's rows, placed as its part of the global batch."""
  return {key: jax.make_array_from_process_local_data(batch_sharding, value)
          for key, value in batch.items()}


_epoch_order = jax.jit(device_data.epoch_order, static_argnums=(0, 2, 3))


def _train_batches(split: StreamSplit, batch_size: int, seed: int, step: int,
                   batch_sharding) -> Iterator[dict[str, jax.Array]]:
  """The training batches from global step `step` on, epoch after epoch: step s takes batch
  s mod E of epoch s // E (E steps per epoch), read directly, nothing skipped."""
  epoch_steps = device_data.steps_per_epoch(len(split), batch_size)
  rows = _process_rows(batch_size)
  epoch, position = divmod(step, epoch_steps)
  while True:
    order = np.asarray(_epoch_order(seed, np.int32(epoch), len(split), batch_size))
    for positions in order.reshape(epoch_steps, batch_size)[position:, rows]:
      yield _on_devices(split.read(positions), batch_sharding)
    epoch, position = epoch + 1, 0


class _Prefetcher:
  """Runs an iterator of batches in a background thread, at most PREFETCH_BATCHES ahead of
  next(); an error raised there is raised by next()."""

  def __init__(self, batches: Iterator):
    self._queue = queue.Queue(PREFETCH_BATCHES)
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(batches,), daemon=True,
                                    name='streaming-prefetch')
    self._thread.start()

  def _fill(self, batches: Iterator) -> None:
    try:
      for batch in batches:
        if not self._put(batch):
          return
    except Exception as error:  # pylint: disable=broad-except
      self._put(error)  # Batches are dicts, so an exception in the queue is unambiguous.

  def _put(self, item) -> bool:
    """Waits for room in the queue; False once stopped."""
    while not self._stopped.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, Exception):
      raise item
    return item

  def stop(self) -> None:
    self._stopped.set()
    if threading.current_thread() is not self._thread:
      self._thread.join()


class StreamingTrainFeed:
  """Feeds the training split batch by batch, one compiled step per batch.

  The device path's batches (device_data.epoch_order): every example once per epoch, the last
  batch padded and masked, the order drawn from (seed, epoch), so a resumed run continues
  exactly where the interrupted one was. Each process reads only its rows of each global batch.
  A background thread reads, decodes and places the next batches while the current one trains.
  """

  def __init__(self, train_step: Callable, split: StreamSplit, batch_size: int, seed: int,
               mesh: jax.sharding.Mesh, start_step: int):
    self._batches = _Prefetcher(_train_batches(split, batch_size, seed, start_step,
                                               sharding.split_on_data_axis(mesh)))
    # The thread runs until the feed is dropped (it does not hold the feed).
    weakref.finalize(self, self._batches.stop)
    self._empty_totals = jax.jit(metrics_lib.TrainMetrics.empty,
                                 out_shardings=sharding.replicated(mesh))

    def step_and_merge(state, totals, batch):
      state, step_metrics = train_step(state, batch)
      return state, totals.merge(step_metrics)

    self._step = jax.jit(step_and_merge, donate_argnums=(0, 1))

  def run(self, state, num_steps: int):
    """Runs `num_steps` steps; returns (state, TrainMetrics totals)."""
    totals = self._empty_totals()
    for _ in range(num_steps):
      state, totals = self._step(state, totals, next(self._batches))
    return state, totals


class StreamingEvaluator:
  """Evaluates every example of a split in order, batch by batch; returns (EvalMetrics,
  per-example class probabilities as host arrays) like the device path's DeviceEvaluator."""

  def __init__(self, eval_step: Callable, split: StreamSplit, batch_size: int,
               mesh: jax.sharding.Mesh):
    self._split = split
    self._batch_size = batch_size
    self._batch_sharding = sharding.split_on_data_axis(mesh)
    replicated = sharding.replicated(mesh)
    self._empty_totals = jax.jit(metrics_lib.EvalMetrics.empty, out_shardings=replicated)

    def step_and_merge(state, totals, batch):
      step_metrics, probabilities = eval_step(state, batch)
      return totals.merge(step_metrics), probabilities

    # Replicated outputs: every process holds every probability, in split order.
    self._step = jax.jit(step_and_merge, out_shardings=replicated)

  def _batches(self) -> Iterator[dict[str, jax.Array]]:
    num_batches = device_data.steps_per_epoch(len(self._split), self._batch_size)
    positions = np.arange(num_batches * self._batch_size)
    positions = np.where(positions < len(self._split), positions, -1)
    for batch in positions.reshape(num_batches, -1)[:, _process_rows(self._batch_size)]:
      yield _on_devices(self._split.read(batch), self._batch_sharding)

  def __call__(self, state):
    totals = self._empty_totals()
    probabilities = []
    batches = _Prefetcher(self._batches())
    try:
      for _ in range(device_data.steps_per_epoch(len(self._split), self._batch_size)):
        totals, batch_probabilities = self._step(state, totals, next(batches))
        probabilities.append(batch_probabilities)
    finally:
      batches.stop()
    probabilities = jax.device_get(probabilities)
    return totals, {head: np.concatenate([p[head] for p in probabilities])[:len(self._split)]
                    for head in ('gender', 'age')}
