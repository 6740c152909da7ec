"""The streaming input path (config.data.pipeline='streaming'): the same splits and the same
every-example-once, resumable epochs as the device-resident path."""

import collections

import jax
import numpy as np
import tensorflow as tf

from facialnet_jax import input_pipeline, sharding, streaming
from tests.conftest import tiny_config


def _indexed_split(num_examples: int) -> streaming.StreamSplit:
  """Examples whose age_group is their index, so batches show which examples they hold."""
  arrays = {'image': np.zeros((num_examples, 2, 2, 1), np.uint8),
            'gender': np.zeros(num_examples, np.int32),
            'age_group': np.arange(num_examples, dtype=np.int32)}
  return streaming.StreamSplit(tf.data.Dataset.from_tensor_slices(arrays), num_examples,
                               (2, 2, 1))


def _feed(split, start_step: int) -> streaming.StreamingTrainFeed:
  return streaming.StreamingTrainFeed(lambda state, batch: (state, None), split, batch_size=5,
                                      seed=3, mesh=sharding.create_mesh(), shuffle_buffer=100,
                                      start_step=start_step)


def test_every_example_once_per_epoch_and_resume_continues_the_same_order():
  split = _indexed_split(23)
  epoch_steps = streaming.steps_per_epoch(23, 5)
  batches = _feed(split, 0)._batches_from(0)
  epochs = [np.concatenate([next(batches)['age_group'] for _ in range(epoch_steps)])
            for _ in range(3)]
  for labels in epochs:
    assert sorted(labels[labels >= 0]) == list(range(23))
    assert (labels < 0).sum() == 2  # 23 examples in 5 batches of 5: two masked slots
  assert not np.array_equal(epochs[0], epochs[1])
  # A run resumed at step 7 (epoch 1, batch 2) sees exactly the batches an unbroken one does.
  resumed = _feed(split, 7)._batches_from(7)
  later = np.concatenate([next(resumed)['age_group'] for _ in range(8)])
  np.testing.assert_array_equal(later, np.concatenate(epochs)[7 * 5:15 * 5])


def test_tfds_streams_hold_the_same_examples_as_the_device_path(small_demo_data_dir):
  config = tiny_config(**{'data.source': 'tfds', 'data.name': 'tfds_adience',
                          'data.data_dir': small_demo_data_dir, 'data.test_fold': 2,
                          'data.validation_fraction': 0.25})
  in_memory = input_pipeline.load_splits(config)
  streams = streaming.load_splits(config)
  for name, split in in_memory.items():
    stream = streams[name]
    assert stream.num_examples == len(split) > 0
    labels = [(int(e['gender']), int(e['age_group'])) for e in stream.dataset.as_numpy_iterator()]
    assert len(labels) == len(split)
    assert collections.Counter(labels) == collections.Counter(zip(split.gender.tolist(),
                                                                  split.age_group.tolist()))
    assert stream.image_shape == split.image_shape


def test_streaming_evaluation_returns_every_example_in_order():
  split = _indexed_split(23)

  def eval_step(state, batch):
    del state
    one_hot = jax.nn.one_hot(jax.numpy.maximum(batch['age_group'], 0), 8)
    return (streaming.metrics_lib.EvalMetrics.empty(),
            {'gender': one_hot[:, :2], 'age': one_hot})

  evaluator = streaming.StreamingEvaluator(eval_step, split, batch_size=10,
                                           mesh=sharding.create_mesh())
  _, probabilities = evaluator(None)
  assert probabilities['age'].shape == (23, 8)  # 3 batches of 10, the padding cut off
  np.testing.assert_array_equal(probabilities['age'].argmax(-1)[:8], np.arange(8))
