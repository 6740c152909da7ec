"""Training end to end on CPU: learning, the device pipeline's epochs, exact resume, data parallelism.

Every run here goes through train_and_evaluate, whose loop runs under
jax.transfer_guard('disallow'): an accidental host<->device copy in the hot loop fails these tests.
"""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax.runtime import sharding
from facialnet_jax.training import device_data
from facialnet_jax.training import metrics as metrics_lib
from facialnet_jax.training import models
from facialnet_jax.training import onednn_build
from facialnet_jax.training import optim
from facialnet_jax.training import steps
from facialnet_jax.training import train
from facialnet_jax.training import train_state
from tests.conftest import (REPO_ROOT, final_params, initial_params, relative_difference,
                            run_launch, tiny_config, tiny_flags)

CHANCE_LOSS = float(np.log(2) + np.log(8))  # uniform predictions on both heads
# Runs compared across device or process counts: 4 steps of batch 16, no augmentation.
# Float sums in another order differ by ~1e-7; training amplifies that slowly until a ReLU or
# max-pool flips on one example, after which two runs drift apart chaotically (measured: a
# jump at step 6 of batch 8, then x1.4 per step). A few steps compare the computation itself;
# augmentation is off because its sin/cos differ by ~1e-5 across shard sizes (tested below).
# 'xla' on both: 'auto' would pick oneDNN's bfloat16 convolutions on one CPU device and 'xla' on
# eight, and this compares how the step is sharded, not two kinds of arithmetic.
DEVICE_COMPARISON = {'augment.enabled': False, 'batch_size': 16, 'num_epochs': 1,
                     'model.conv_implementation': 'xla'}


def _stripes(num_examples: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Images that state their labels plainly: gender lights the left half, the age group
  lights one of eight bands on the right."""
  rng = np.random.default_rng(seed)
  gender = rng.integers(0, 2, num_examples).astype(np.int32)
  age_group = rng.integers(0, 8, num_examples).astype(np.int32)
  images = np.zeros((num_examples, 75, 75, 1), np.uint8)
  for i, (g, a) in enumerate(zip(gender, age_group)):
    images[i, :, :37] = 200 * g
    images[i, a * 9:a * 9 + 9, 37:] = 255
  return {'image': images, 'gender': gender, 'age_group': age_group}


def test_loss_falls_well_below_chance_within_a_few_dozen_steps():
  # At 3e-3 batch-8 Adam sometimes spikes near step 40 (measured: loss 1.29 -> 2.63 for one
  # rounding order of the convolutions, not for two others); at 2e-3 every route and seed
  # tried (0-3) ended at 0.6-1.3 after 50 steps, far below the bound.
  config = tiny_config(**{'optimizer.learning_rate': 2e-3, 'augment.enabled': False})
  mesh = sharding.create_mesh()
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=12)
  state = train_state.create_train_state_on_mesh(model, tx, 0, (75, 75, 1), mesh)
  feed = device_data.DeviceTrainFeed(steps.make_train_step(model, tx, config), _stripes(96),
                                     config.batch_size, config.seed, mesh, steps_per_call=1)
  losses = []
  for _ in range(10):
    state, chunk = feed.run(state, 5)
    losses.append(float(jax.device_get(chunk).compute()['loss']))
  assert losses[0] == pytest.approx(CHANCE_LOSS, rel=0.1)  # zero-initialised classifiers
  assert np.mean(losses[-2:]) < 0.75 * CHANCE_LOSS, losses


def test_device_pipeline_yields_every_example_once_per_epoch():
  num_examples, batch_size = 23, 5
  mesh = sharding.create_mesh()
  arrays = {'image': np.arange(num_examples, dtype=np.uint8).reshape(-1, 1, 1, 1),
            'gender': np.zeros(num_examples, np.int32),
            'age_group': np.arange(num_examples, dtype=np.int32)}
  split = device_data.put_split_on_devices(arrays, mesh)

  @jax.jit
  def epoch_batches(epoch):
    order = device_data.epoch_order(7, epoch, num_examples, batch_size)
    return jax.vmap(lambda i: device_data.take_batch(
        split.arrays, jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,)),
        sharding.replicated(mesh)))(jnp.arange(device_data.steps_per_epoch(num_examples,
                                                                           batch_size)))

  orders = []
  for epoch in range(3):
    labels = np.asarray(epoch_batches(epoch)['age_group']).ravel()
    seen = labels[labels >= 0]
    assert sorted(seen) == list(range(num_examples))
    assert (labels < 0).sum() == 2  # 23 examples in 5 batches of 5: two masked slots
    orders.append(seen)
  assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


@flax.struct.dataclass
class _Recorder:
  """A stand-in train state that keeps the labels of every batch it was trained on."""
  step: jax.Array
  seen: jax.Array  # (steps, batch size) age groups, one row per step


@pytest.mark.parametrize('steps_per_call', [1, 3])
def test_every_step_trains_on_its_own_epochs_batch_even_when_the_state_jumps(steps_per_call):
  # The feed keeps the last epoch's permutation between steps; whatever step the state is at
  # (the next epoch, an earlier checkpoint, a resumed run with a new feed) its batch must be
  # the one device_data.epoch_order gives for that step.
  num_examples, batch_size, epoch_steps = 23, 5, 5
  mesh = sharding.create_mesh()
  arrays = {'image': np.zeros((num_examples, 1, 1, 1), np.uint8),
            'gender': np.zeros(num_examples, np.int32),
            'age_group': np.arange(num_examples, dtype=np.int32)}

  def record(state, batch):
    seen = state.seen.at[state.step].set(batch['age_group'])
    return state.replace(step=state.step + 1, seen=seen), metrics_lib.TrainMetrics.empty()

  def expected(step):
    epoch, position = divmod(step, epoch_steps)
    order = np.asarray(device_data.epoch_order(7, epoch, num_examples, batch_size))
    return order[position * batch_size:(position + 1) * batch_size]

  def train(feed, start, num_steps):
    state = _Recorder(jnp.int32(start), jnp.full((20, batch_size), -2, jnp.int32))
    state, _ = feed.run(state, num_steps)
    seen = np.asarray(state.seen)
    for step in range(start, start + num_steps):
      np.testing.assert_array_equal(seen[step], expected(step), err_msg=f'step {step}')

  feed = device_data.DeviceTrainFeed(record, arrays, batch_size, 7, mesh, steps_per_call)
  train(feed, 0, 7)  # into the second epoch
  train(feed, 2, 4)  # back to the first (an older checkpoint), same feed
  train(feed, 13, 3)  # on to the third
  train(device_data.DeviceTrainFeed(record, arrays, batch_size, 7, mesh, steps_per_call),
        8, 4)  # a resumed run: a new feed starts mid-epoch


@pytest.mark.parametrize('conv_implementation', ['xla', 'onednn'])
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, monkeypatch,
                                                        conv_implementation):
  if conv_implementation == 'onednn' and not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  config = tiny_config(**{'checkpoint.every_steps': 4, 'num_epochs': 3,
                          'model.conv_implementation': conv_implementation})
  uninterrupted = train.train_and_evaluate(config, tmp_path / 'uninterrupted')

  real_run = device_data.DeviceTrainFeed.run
  calls = {'n': 0}

  def crash_on_fourth_call(self, state, num_steps):
    calls['n'] += 1
    if calls['n'] == 4:
      raise KeyboardInterrupt('simulated crash')
    return real_run(self, state, num_steps)

  monkeypatch.setattr(device_data.DeviceTrainFeed, 'run', crash_on_fourth_call)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, tmp_path / 'interrupted')
  monkeypatch.setattr(device_data.DeviceTrainFeed, 'run', real_run)
  results = train.train_and_evaluate(config, tmp_path / 'interrupted')

  expected = final_params(tmp_path / 'uninterrupted')
  resumed = final_params(tmp_path / 'interrupted')
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  assert results['test']['final'] == uninterrupted['test']['final']


def test_a_run_that_recorded_the_retired_shuffle_buffer_resumes(tmp_path, monkeypatch, caplog):
  # Runs started before data.shuffle_buffer left the config carry it in their checkpoints'
  # run identity; resuming them must not call that "other data".
  real_identity = train.run_identity

  def identity_of_an_older_version(config):
    identity = real_identity(config)
    identity['data'] = {**identity['data'], 'shuffle_buffer': 20_000}
    return identity

  monkeypatch.setattr(train, 'run_identity', identity_of_an_older_version)
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path / 'run')
  monkeypatch.setattr(train, 'run_identity', real_identity)
  with caplog.at_level('INFO'):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path / 'run')
  assert any(record.getMessage().startswith('Resuming from the checkpoint at step')
             for record in caplog.records)


def test_one_and_eight_devices_train_to_the_same_parameters(tmp_path):
  flags = tiny_flags(**DEVICE_COMPARISON)
  for devices in (1, 8):
    finished = run_launch('--config', 'configs/synthetic.py', '--workdir',
                          str(tmp_path / f'devices{devices}'), *flags, devices=devices)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f'{devices} devices (cpu)' in finished.stderr
  one = final_params(tmp_path / 'devices1')
  eight = final_params(tmp_path / 'devices8')
  # Same data order, keys and global batch; only the order of float sums across devices
  # differs, so the runs end far closer together than training moved them (measured: 2e-6).
  # A wrong gradient average or data order would differ by 1e-2 to 1e1.
  assert relative_difference(one, eight, initial_params(tiny_config())) < 1e-4


_AUGMENT_ON_1_AND_8_DEVICES = """
import jax, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from tests.conftest import tiny_config
from facialnet_jax.training import augment
config = tiny_config()
images = np.random.default_rng(0).integers(0, 255, (8, 75, 75, 1), dtype=np.uint8)
outputs = []
for count in (1, 8):
  mesh = jax.make_mesh((count,), ('data',), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:count])
  placed = jax.device_put(images, NamedSharding(mesh, PartitionSpec('data')))
  prepare = jax.jit(lambda x: augment.prepare_images(x, jax.random.key(3), config))
  outputs.append(np.asarray(prepare(placed)))
print(float(np.abs(outputs[0] - outputs[1]).max()))
"""


def test_augmentation_agrees_across_device_counts():
  finished = subprocess.run(
      [sys.executable, '-c', _AUGMENT_ON_1_AND_8_DEVICES], cwd=REPO_ROOT, capture_output=True,
      text=True, timeout=300, check=False,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert finished.returncode == 0, finished.stderr[-3000:]
  # Normalised pixels span about [-2, 2]; measured differences are ~1.5e-5.
  assert float(finished.stdout.strip().splitlines()[-1]) < 1e-4


def test_the_quick_start_builds_the_demo_in_two_lines_without_library_noise(tmp_path):
  """The README's first command in a log file (not a terminal): the demo build's start and
  summary lines, no tqdm cursor escapes, no tfds INFO lines, no 'Variant folder' warning."""
  finished = run_launch('--config', 'configs/demo.py', '--workdir', str(tmp_path / 'run'),
                        f'--config.data.data_dir={tmp_path / "data"}', '--config.num_epochs=1')
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert finished.stdout.startswith('Building tfds_adience/gray75 from '), finished.stdout
  assert '2,500 examples (fold0 500, ' in finished.stdout, finished.stdout
  output = finished.stdout + finished.stderr
  for noise in ('\x1b', 'Generating', 'Shuffling', 'Load dataset info', 'Variant folder'):
    assert noise not in output, (noise, output[-3000:])


def test_launch_writes_events_checkpoints_and_resumes_on_rerun(tmp_path):
  workdir = tmp_path / 'run'
  args = ('--config', 'configs/synthetic.py', '--workdir', str(workdir), *tiny_flags())
  first = run_launch(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'starting from scratch' in first.stderr
  # Library start-up notices that read as problems are filtered at the source.
  # (TensorFlow's "oneDNN custom operations are on" line; not this project's own oneDNN line.)
  for noise in ("Unable to initialize backend 'tpu'", 'Resetting cache',
                'oneDNN custom operations', 'InitializeLog'):
    assert noise not in first.stderr, first.stderr[-3000:]
  # Training says one line per epoch (plus clu's occasional progress line), not one per metric.
  lines = first.stderr.splitlines()
  epochs = [i for i, line in enumerate(lines) if ' Epoch ' in line]
  assert len(epochs) == 2 and epochs[1] - epochs[0] <= 2, first.stderr[-3000:]
  assert not any('logging_writer.py' in line for line in lines), first.stderr[-3000:]
  assert list(workdir.glob('events.out.tfevents.*'))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert list((workdir / 'checkpoints_best').iterdir())
  config = json.loads((workdir / 'config.json').read_text())
  assert config['batch_size'] == 8
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results['test']) == {'final', 'best'}

  # Re-running the finished run's command says so in one line and changes nothing.
  written = (workdir / 'results.json').read_bytes()
  second = run_launch(*args)
  assert second.returncode == 0, second.stderr[-3000:]
  finished = [line for line in second.stderr.splitlines() if 'already finished' in line]
  assert len(finished) == 1 and finished[0].endswith(
      f'This run has already finished (step 16 of 16); its results are in '
      f'{workdir}/results.json. Use another --workdir for a new run, or a larger '
      '--config.num_epochs to train on.'), second.stderr[-3000:]
  for retraced in ('Resuming', 'Epoch 1/', 'Test ('):  # nothing retrained or evaluated
    assert retraced not in second.stderr
  assert (workdir / 'results.json').read_bytes() == written
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1

  # Asked for more epochs, the same command trains on from where the run ended.
  third = run_launch(*args, '--config.num_epochs=3')
  assert third.returncode == 0, third.stderr[-3000:]
  assert ('Resuming from the checkpoint at step 16 (end of epoch 2 of 3) in '
          f'{workdir}/checkpoints.') in third.stderr
  assert 'Epoch 3/3' in third.stderr and 'Epoch 2/' not in third.stderr
