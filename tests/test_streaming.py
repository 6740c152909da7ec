"""The streaming input path (config.data.pipeline='streaming'): the same splits and the same
batches (every example once per epoch, resumable) as the device-resident path, read by random
access without TensorFlow."""

import collections
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from facialnet_jax.data import input_pipeline
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime import tensorflow_optional
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import device_data
from facialnet_jax.training import streaming
from facialnet_jax.training import train
from facialnet_jax.training.metrics import EvalMetrics
from facialnet_jax.training.metrics import TrainMetrics
from tests.conftest import (REPO_ROOT, final_params, initial_params, relative_difference,
                            tiny_config)


def _demo_config(data_dir: str):
  return tiny_config(**{'data.source': 'tfds', 'data.name': 'tfds_adience',
                        'data.data_dir': data_dir, 'data.test_fold': 2,
                        'data.validation_fraction': 0.25, 'data.pipeline': 'streaming'})


def _indexed_split(num_examples: int) -> streaming.StreamSplit:
  """Examples that say which they are: age_group is the index, the image value index + 1."""
  index = np.arange(num_examples)
  return streaming.from_host(input_pipeline.HostSplit(
      image=np.broadcast_to((index + 1).astype(np.uint8)[:, None, None, None],
                            (num_examples, 2, 2, 1)),
      gender=(index % 2).astype(np.int32), age_group=index.astype(np.int32),
      subject_id=index.astype(str)))


def _batches_trained_on(split, start_step: int, num_steps: int) -> list[dict[str, np.ndarray]]:
  """The batches a feed of batch 5 (seed 3) gives the train step, one run() per step."""
  def keep_batch(state, batch):
    del state
    return batch, TrainMetrics.empty()

  feed = streaming.StreamingTrainFeed(keep_batch, split, batch_size=5, seed=3,
                                      mesh=sharding.create_mesh(), start_step=start_step)
  batches, state = [], None
  for _ in range(num_steps):
    state, _ = feed.run(state, 1)
    batches.append(jax.device_get(state))
  return batches


def test_every_example_once_per_epoch_and_resume_continues_the_same_order():
  split = _indexed_split(23)
  epoch_steps = device_data.steps_per_epoch(23, 5)
  batches = _batches_trained_on(split, 0, 3 * epoch_steps)
  labels = np.stack([batch['age_group'] for batch in batches])
  for epoch in range(3):
    epoch_labels = labels[epoch * epoch_steps:(epoch + 1) * epoch_steps].ravel()
    assert sorted(epoch_labels[epoch_labels >= 0]) == list(range(23))
    assert (epoch_labels < 0).sum() == 2  # 23 examples in 5 batches of 5: two masked slots
    # The device path's order, so both paths train on the same batches.
    np.testing.assert_array_equal(epoch_labels, device_data.epoch_order(3, epoch, 23, 5))
  assert not np.array_equal(labels[:epoch_steps], labels[epoch_steps:2 * epoch_steps])
  for batch in batches:
    real = batch['age_group'] >= 0
    np.testing.assert_array_equal(batch['image'][:, 0, 0, 0],
                                  np.where(real, batch['age_group'] + 1, 0))
    np.testing.assert_array_equal(batch['gender'], np.where(real, batch['age_group'] % 2, -1))
  # A run resumed at step 7 (epoch 1, batch 2) sees exactly the batches an unbroken one does.
  resumed = _batches_trained_on(split, 7, 8)
  np.testing.assert_array_equal(np.stack([batch['age_group'] for batch in resumed]),
                                labels[7:15])


def test_a_read_error_in_the_background_thread_reaches_the_training_loop():
  class BrokenSource(streaming.HostArraySource):
    def __getitems__(self, indices):
      raise OSError('the disk went away')

  split = streaming.StreamSplit(BrokenSource({'image': np.zeros((4, 2, 2, 1), np.uint8)}),
                                np.arange(4), (2, 2, 1))
  with pytest.raises(OSError, match='the disk went away'):
    _batches_trained_on(split, 0, 1)


def test_streaming_evaluation_returns_every_example_in_order():
  split = _indexed_split(23)

  def eval_step(state, batch):
    del state
    one_hot = jax.nn.one_hot(jax.numpy.maximum(batch['age_group'], 0), 23)
    logits = {'gender_logits': one_hot[:, :2], 'age_logits': one_hot,
              'gender': batch['gender'], 'age_group': batch['age_group']}
    return EvalMetrics.single_from_model_output(**logits), {'gender': one_hot[:, :2],
                                                            'age': one_hot}

  evaluator = streaming.StreamingEvaluator(eval_step, split, batch_size=10,
                                           mesh=sharding.create_mesh())
  for _ in range(2):  # each call reads the split again
    totals, probabilities = evaluator(None)
    assert probabilities['age'].shape == (23, 23)  # 3 batches of 10, the padding cut off
    np.testing.assert_array_equal(probabilities['age'].argmax(-1), np.arange(23))
    # Every real example predicted right, and the 7 padding rows counted nowhere.
    assert jax.device_get(totals).compute()['age_accuracy'] == 1.0
    assert int(jax.device_get(totals.age_accuracy.count)) == 23


def test_tfds_streams_hold_the_same_examples_as_the_device_path(small_demo_data_dir):
  config = _demo_config(small_demo_data_dir)
  in_memory = input_pipeline.load_splits(config)
  streams = streaming.load_splits(config)
  for name, split in in_memory.items():
    stream = streams[name]
    assert len(stream) == len(split) > 0
    examples = stream.read(np.arange(len(stream)))
    assert collections.Counter(zip(examples['gender'].tolist(),
                                   examples['age_group'].tolist())) == collections.Counter(
                                       zip(split.gender.tolist(), split.age_group.tolist()))
    assert stream.image_shape == split.image_shape == examples['image'].shape[1:]


# Reads the demo build through the streaming path (load_splits, a training feed, an evaluator)
# and prints the TensorFlow modules that were imported: a fresh interpreter, so nothing that
# another test imported counts.
_WITHOUT_TENSORFLOW = """
import sys
import numpy as np
from facialnet_jax.runtime import sharding
from facialnet_jax.training import streaming
from facialnet_jax.training.metrics import EvalMetrics
from facialnet_jax.training.metrics import TrainMetrics
from tests.conftest import tiny_config

splits = streaming.load_splits(tiny_config(**{
    'data.source': 'tfds', 'data.name': 'tfds_adience', 'data.data_dir': sys.argv[1],
    'data.test_fold': 2, 'data.validation_fraction': 0.25, 'data.pipeline': 'streaming'}))
mesh = sharding.create_mesh()
feed = streaming.StreamingTrainFeed(lambda state, batch: (state + batch['image'].sum(),
                                                          TrainMetrics.empty()),
                                    splits['train'], 8, 0, mesh, 5)
state, _ = feed.run(np.int32(0), 6)
assert int(state) > 0
evaluator = streaming.StreamingEvaluator(
    lambda state, batch: (EvalMetrics.empty(), {'gender': batch['image'][:, 0, 0],
                                                'age': batch['image'][:, 0, 0]}),
    splits['test'], 16, mesh)
assert len(evaluator(None)[1]['age']) == len(splits['test'])
print(sorted(name for name in sys.modules if name.split('.')[0] == 'tensorflow'))
"""


def test_streaming_reads_tfds_builds_without_tensorflow(small_demo_data_dir):
  result = subprocess.run([sys.executable, '-c', _WITHOUT_TENSORFLOW, small_demo_data_dir],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_a_tfrecord_build_asks_for_an_arrayrecord_rebuild(tmp_path):
  if not tensorflow_optional.installed():
    pytest.skip('writing a TFRecord build needs TensorFlow')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from facialnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  from tfds_adience import tfds_adience_dataset_builder  # pylint: disable=import-outside-toplevel
  demo_data.write_demo_raw(tmp_path / 'raw', num_subjects=10, images_per_subject=1,
                           image_size=24, seed=1)
  builder = tfds_adience_dataset_builder.Builder(config='gray75', data_dir=tmp_path / 'tfds',
                                                 file_format='tfrecord')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / 'raw'))
  with pytest.raises(UserError, match='run the same `tfds build` command again') as error:
    streaming.load_splits(_demo_config(str(tmp_path / 'tfds')))
  assert '\n' not in str(error.value) and f'delete {builder.data_dir} ' in str(error.value)


# One of two processes (2 CPU devices each, batch 8): prints the rows of each training batch
# from step 3 on that this process's devices hold, then what an evaluation returns to it.
_ONE_OF_TWO_PROCESSES = """
import json, sys
import jax
import numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from facialnet_jax.data import input_pipeline
from facialnet_jax.runtime import sharding
from facialnet_jax.training import streaming
from facialnet_jax.training.metrics import EvalMetrics
from facialnet_jax.training.metrics import TrainMetrics

index = np.arange(23)
split = streaming.from_host(input_pipeline.HostSplit(
    np.zeros((23, 2, 2, 1), np.uint8), index % 2, index, index.astype(str)))
mesh = sharding.create_mesh()
feed = streaming.StreamingTrainFeed(lambda state, batch: (batch['age_group'],
                                                          TrainMetrics.empty()),
                                    split, 8, 3, mesh, 3)
state, rows = None, []
for _ in range(6):
  state, _ = feed.run(state, 1)
  shards = sorted(state.addressable_shards, key=lambda shard: shard.index[0].start)
  rows.append(np.concatenate([np.asarray(shard.data) for shard in shards]).tolist())
evaluator = streaming.StreamingEvaluator(
    lambda state, batch: (EvalMetrics.empty(), {'gender': jax.nn.one_hot(batch['gender'], 2),
                                                'age': jax.nn.one_hot(batch['age_group'], 23)}),
    split, 8, mesh)
predicted = evaluator(None)[1]['age'].argmax(-1).tolist()
print(json.dumps({'rows': rows, 'predicted': predicted}))
"""


def test_each_process_reads_its_own_rows_of_every_batch():
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    address = f'localhost:{probe.getsockname()[1]}'
  env = os.environ | {'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
                      'JAX_PLATFORMS': 'cpu'}
  workers = [subprocess.Popen([sys.executable, '-c', _ONE_OF_TWO_PROCESSES, address, str(p)],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in range(2)]
  outputs = [worker.communicate(timeout=300) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  first, second = (json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs)
  # Steps 3..8 with 3 steps per epoch: epochs 1 and 2 of the device path's order.
  order = np.concatenate([device_data.epoch_order(3, epoch, 23, 8) for epoch in (1, 2)])
  for step, (rows, other_rows) in enumerate(zip(first['rows'], second['rows'])):
    np.testing.assert_array_equal(rows, order[step * 8:step * 8 + 4])
    np.testing.assert_array_equal(other_rows, order[step * 8 + 4:step * 8 + 8])
  assert first['predicted'] == second['predicted'] == list(range(23))


@pytest.mark.slow
def test_streaming_trains_exactly_like_the_device_path(tmp_path):
  results = {}
  for pipeline in ('device', 'streaming'):
    config = tiny_config(**{'data.pipeline': pipeline, 'num_epochs': 1})
    results[pipeline] = train.train_and_evaluate(config, str(tmp_path / pipeline))
  # The same batches in the same order, so the same training up to float rounding.
  for split in ('validation', 'test'):
    for name, value in results['device'][split]['final'].items():
      assert results['streaming'][split]['final'][name] == pytest.approx(value, abs=1e-5), name
  assert relative_difference(final_params(tmp_path / 'streaming'),
                             final_params(tmp_path / 'device'),
                             initial_params(tiny_config())) < 1e-4
