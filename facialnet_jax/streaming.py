"""The streaming input path, for data that do not fit in device memory: tf.data reads, shuffles
and batches on the host, and each step receives one batch (config.data.pipeline='streaming').

Same contract as the device path: every example once per epoch (the last batch padded and
masked), the order drawn from (seed, epoch), and a resumed run continues exactly where the
interrupted one was. Each process reads only its shard of the training data.
"""

import dataclasses
from typing import Callable, Iterator

import jax
import numpy as np

from facialnet_jax import input_pipeline
from facialnet_jax import metrics as metrics_lib
from facialnet_jax import sharding
from facialnet_jax.errors import UserError
from facialnet_jax.metrics import UNKNOWN_LABEL
from facialnet_jax.steps import BATCH_KEYS


@dataclasses.dataclass
class StreamSplit:
  """A split as a tf.data.Dataset of examples (image, gender, age_group) and its size."""
  dataset: 'tf.data.Dataset'  # noqa: F821
  num_examples: int
  image_shape: tuple[int, int, int]

  def __len__(self) -> int:
    return self.num_examples


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


def from_host(split: input_pipeline.HostSplit) -> StreamSplit:
  """A host-memory split as a stream (synthetic data, benchmarks)."""
  return StreamSplit(_tf().data.Dataset.from_tensor_slices(split.arrays()), len(split),
                     split.image_shape)


def _examples(builder, split: str, keep=None) -> 'tf.data.Dataset':  # noqa: F821
  """A TFDS split as (image, gender, age_group) examples; `keep(user_id)` filters them."""
  tf = _tf()
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  if keep is not None:
    dataset = dataset.filter(lambda example: keep(example['user_id']))
  return dataset.map(lambda example: {
      'image': example['image'], 'gender': tf.cast(example['gender'], tf.int32),
      'age_group': tf.cast(example['age_group'], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)


def _subject_ids(builder, split: str) -> np.ndarray:
  """Every example's user_id, read without decoding a single image."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={'image': tfds.decode.SkipDecoding()})
  ids = [batch for batch in tfds.as_numpy(dataset.map(lambda e: e['user_id']).batch(8192))]
  return np.concatenate(ids).astype(str) if ids else np.array([], str)


def load_splits(config) -> dict[str, StreamSplit]:
  """train / validation / test as streams; validation is carved by subject as on the device path."""
  data = config.data
  if data.source == 'synthetic':
    return {name: from_host(split) for name, split in input_pipeline.load_splits(config).items()}
  tf = _tf()
  builder = input_pipeline.tfds_builder(data)
  names = input_pipeline.split_names(data)
  shape = tuple(builder.info.features['image'].shape)

  def whole(split):
    return StreamSplit(_examples(builder, split), builder.info.splits[split].num_examples, shape)

  splits = {'train': whole(names['train']), 'test': whole(names['test'])}
  if names['validation']:
    splits['validation'] = whole(names['validation'])
    return splits
  ids = _subject_ids(builder, names['train'])
  held_out = input_pipeline.is_validation_subject(ids, data.validation_fraction)
  input_pipeline.check_carve(held_out, ids, data.validation_fraction)
  held_out_ids = np.unique(ids[held_out])
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(held_out_ids), tf.ones(len(held_out_ids),
                                                                             tf.int32)), 0)
  splits['train'] = StreamSplit(
      _examples(builder, names['train'], lambda uid: table.lookup(uid) == 0),
      int((~held_out).sum()), shape)
  splits['validation'] = StreamSplit(
      _examples(builder, names['train'], lambda uid: table.lookup(uid) == 1),
      int(held_out.sum()), shape)
  return splits


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Global steps per epoch: every process runs as many steps as the one with the largest
  shard needs (shards differ by at most one example); the others pad with masked batches."""
  processes = jax.process_count()
  largest_shard = -(-num_examples // processes)
  return -(-largest_shard // (batch_size // processes))


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Fills a short batch up to `size` rows whose labels are unknown, so they count nowhere."""
  missing = size - len(batch['image'])
  if missing == 0:
    return batch
  padded = {}
  for key in BATCH_KEYS:
    fill = 0 if key == 'image' else UNKNOWN_LABEL
    rows = np.full((missing, *batch[key].shape[1:]), fill, batch[key].dtype)
    padded[key] = np.concatenate([batch[key], rows])
  return padded


class StreamingTrainFeed:
  """Feeds the training split batch by batch from tf.data (one compiled step per call)."""

  def __init__(self, train_step: Callable, split: StreamSplit, batch_size: int, seed: int,
               mesh: jax.sharding.Mesh, shuffle_buffer: int, start_step: int):
    processes = jax.process_count()
    if batch_size % processes:
      raise UserError(f'config.batch_size={batch_size} does not split across the {processes} '
                      'processes of this run; use a multiple of the process count.')
    self._split = split
    self._local_batch = batch_size // processes
    self._epoch_steps = steps_per_epoch(split.num_examples, batch_size)
    self._seed = seed
    self._shuffle_buffer = shuffle_buffer
    self._batch_sharding = sharding.split_on_data_axis(mesh)
    self._empty_batch = {key: np.zeros((0, *spec.shape[1:]) if key == 'image' else (0,),
                                       spec.dtype.as_numpy_dtype)
                         for key, spec in split.dataset.element_spec.items()}
    self._batches = self._batches_from(start_step)
    self._empty_totals = jax.jit(metrics_lib.TrainMetrics.empty,
                                 out_shardings=sharding.replicated(mesh))

    def step_and_merge(state, totals, batch):
      state, step_metrics = train_step(state, batch)
      return state, totals.merge(step_metrics)

    self._step = jax.jit(step_and_merge, donate_argnums=(0, 1))

  def _batches_from(self, step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from global step `step` on, epoch after epoch."""
    epoch, position = divmod(step, self._epoch_steps)
    local = self._split.dataset.shard(jax.process_count(), jax.process_index())
    while True:
      # A fixed seed per epoch (not reshuffled per iteration) makes the order a function of
      # (seed, epoch), so skipping `position` batches lands exactly where a crash left off.
      order = local.shuffle(self._shuffle_buffer, seed=self._seed * 1_000_003 + epoch,
                            reshuffle_each_iteration=False)
      batches = order.batch(self._local_batch).skip(position).prefetch(2).as_numpy_iterator()
      produced = position
      for batch in batches:
        yield _pad(batch, self._local_batch)
        produced += 1
      for _ in range(self._epoch_steps - produced):
        yield _pad(self._empty_batch, self._local_batch)
      epoch, position = epoch + 1, 0

  def run(self, state, num_steps: int):
    totals = self._empty_totals()
    for _ in range(num_steps):
      batch = {key: jax.make_array_from_process_local_data(self._batch_sharding, value)
               for key, value in next(self._batches).items()}
      state, totals = self._step(state, totals, batch)
    return state, totals


class StreamingEvaluator:
  """Evaluates every example of a split in order, batch by batch; returns (EvalMetrics,
  per-example class probabilities) like the device path's DeviceEvaluator."""

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

  def __call__(self, state):
    totals = self._empty_totals()
    probabilities = []
    rows = slice(jax.process_index() * self._batch_size // jax.process_count(),
                 (jax.process_index() + 1) * self._batch_size // jax.process_count())
    for batch in self._split.dataset.batch(self._batch_size).prefetch(2).as_numpy_iterator():
      size = len(batch['image'])
      batch = {key: jax.make_array_from_process_local_data(self._batch_sharding, value[rows])
               for key, value in _pad(batch, self._batch_size).items()}
      totals, batch_probabilities = self._step(state, totals, batch)
      probabilities.append({head: p[:size] for head, p in
                            jax.device_get(batch_probabilities).items()})
    return totals, {head: np.concatenate([p[head] for p in probabilities])
                    for head in ('gender', 'age')}
