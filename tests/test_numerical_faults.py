"""Numerical faults: a NaN or inf loss (or NaN gradients) at a chosen step stops training with a
message naming the step and the last good checkpoint, which stays on disk and restorable;
config.skip_nonfinite=True skips the batch instead, also when resuming the stopped run, but
still stops a run that keeps failing (config.max_skipped_steps)."""

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime import sharding
from facialnet_jax.training import augment
from facialnet_jax.training import checkpointing
from facialnet_jax.training import losses
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import steps
from facialnet_jax.training import train
from facialnet_jax.training import train_state
from tests.conftest import tiny_config

# One epoch of 8 steps, a checkpoint every 2: step index 5 fails, the host sees it at the stop
# after step index 5 (state step 6), and the last good checkpoint is step 4.
BAD_STEP = 5
LAST_GOOD = 4
OVERRIDES = {'num_epochs': 1, 'checkpoint.every_steps': 2}


def _poison(monkeypatch, where: str, value: float, bad_step: int = BAD_STEP,
            every_step_after: bool = False) -> None:
  """Makes the loss (or the network's input, so the gradients too) `value` at train step
  `bad_step` only (or at it and every later step), inside the compiled step: the trainer cannot
  tell it from a real fault."""
  current = {}
  record_step = steps.step_keys

  def step_keys(seed, step):
    current['step'] = step  # traced: the poisoned step is chosen at run time
    return record_step(seed, step)

  monkeypatch.setattr(steps, 'step_keys', step_keys)
  poison = lambda x: x + jnp.where(
      (current['step'] >= bad_step) if every_step_after else (current['step'] == bad_step),
      value, 0.0)
  if where == 'loss':
    original_loss = losses.multitask_loss

    def multitask_loss(*args, **kwargs):
      loss, parts = original_loss(*args, **kwargs)
      return poison(loss), parts

    monkeypatch.setattr(losses, 'multitask_loss', multitask_loss)
  else:
    original_prepare = augment.prepare_images

    def prepare_images(images, key, config):
      prepared = original_prepare(images, key, config)
      return prepared if key is None else poison(prepared)  # evaluation has no key

    monkeypatch.setattr(augment, 'prepare_images', prepare_images)


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(name) for name in os.listdir(workdir / 'checkpoints') if name.isdigit())


def _latest_state(workdir):
  manager = checkpointing.open_manager(workdir / 'checkpoints')
  try:
    state, _ = checkpointing.restore_replicated(manager, manager.latest_step(),
                                                sharding.create_mesh())
  finally:
    manager.close()
  return jax.device_get(state)


# NaN input makes the loss NaN as well as the gradients; inf added to the loss leaves the
# gradients finite: between them both halves of the finiteness check are exercised.
FAULTS = {'inf loss, finite gradients': ('loss', np.inf),
          'NaN loss and gradients': ('input', np.nan)}


@pytest.mark.parametrize('where, value', FAULTS.values(), ids=FAULTS.keys())
def test_nonfinite_step_stops_training_naming_it_and_keeps_the_last_good_checkpoint(
    where, value, tmp_path, monkeypatch):
  _poison(monkeypatch, where, value)
  with pytest.raises(train.TrainingDiverged) as raised:
    train.train_and_evaluate(tiny_config(**OVERRIDES), str(tmp_path))
  message = str(raised.value)
  assert '\n' not in message
  assert message.startswith(
      f'The loss or gradients became NaN/inf at step {BAD_STEP} (the update from step '
      f'{BAD_STEP} to {BAD_STEP + 1} was not applied); training stopped. The last '
      f'good checkpoint is step {LAST_GOOD} in {tmp_path}/checkpoints. '), message
  assert 'config.skip_nonfinite=True' in message
  # Nothing after the fault was saved, everything before it still is, and it restores.
  assert _checkpoint_steps(tmp_path) == [2, LAST_GOOD]
  state = _latest_state(tmp_path)
  assert state['step'] == LAST_GOOD and state['nonfinite_steps'] == 0
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state['params']))
  assert not (tmp_path / run_directory.RESULTS_FILE).exists()


def test_skip_nonfinite_resumes_the_stopped_run_and_skips_the_bad_batch(tmp_path, monkeypatch,
                                                                          caplog):
  _poison(monkeypatch, 'input', np.nan)
  with pytest.raises(train.TrainingDiverged):
    train.train_and_evaluate(tiny_config(**OVERRIDES), str(tmp_path))
  # The user's fix, as the message suggests: the same command with skip_nonfinite=True.
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(
        tiny_config(**OVERRIDES, skip_nonfinite=True), str(tmp_path))
  assert any(f'Skipped 1 NaN/inf steps so far (the first at step {BAD_STEP})' in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  state = _latest_state(tmp_path)
  assert state['step'] == 8
  assert state['nonfinite_steps'] == 1 and state['first_nonfinite_step'] == BAD_STEP
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state['params']))
  assert np.isfinite(results['test']['final']['gender_accuracy'])


def test_fault_before_the_first_checkpoint_says_none_was_saved(tmp_path, monkeypatch):
  _poison(monkeypatch, 'loss', np.nan, bad_step=1)
  with pytest.raises(train.TrainingDiverged) as raised:
    train.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
  message = str(raised.value)
  assert 'step None' not in message, message
  assert message.startswith('The loss or gradients became NaN/inf at step 1 (the update from '
                            'step 1 to 2 was not applied); training stopped. '
                            'No checkpoint had been saved yet.'), message


def test_skipping_stops_a_run_that_keeps_failing(tmp_path, monkeypatch):
  # Every step from step 2 on fails. The host checks after each dispatch, so it stops at the
  # first check that sees more than 2 skipped steps; every checkpoint kept is from before that.
  _poison(monkeypatch, 'loss', np.nan, bad_step=2, every_step_after=True)
  with pytest.raises(train.TrainingDiverged) as raised:
    train.train_and_evaluate(
        tiny_config(**OVERRIDES, skip_nonfinite=True, max_skipped_steps=2), str(tmp_path))
  message = str(raised.value)
  match = re.match(
      r'(\d+) steps had a NaN/inf loss or gradients \(the first at step 2\), more than '
      r'config\.max_skipped_steps=2; training stopped\. The last good checkpoint is step (\d+) '
      f'in {re.escape(str(tmp_path))}/checkpoints\\. ', message)
  assert match and int(match[1]) > 2, message
  assert _checkpoint_steps(tmp_path)[-1] == int(match[2])
  state = _latest_state(tmp_path)
  assert 0 < state['nonfinite_steps'] <= 2
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state['params']))


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_a_skipped_step_leaves_weights_momentum_average_and_batch_statistics_as_they_were(
    backend, monkeypatch):
  # CPU keeps the old state with a conditional, other backends with jnp.where: both are traced
  # here (the backend is looked up while tracing), and both must keep every leaf bit for bit.
  config = tiny_config(**{'ema.decay': 0.9, 'model.batch_norm': True})
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=4)
  state = jax.jit(lambda key: train_state.create_train_state(
      model, tx, key, (75, 75, 1), ema=True))(jax.random.key(0))
  batch = {'image': jax.random.randint(jax.random.key(1), (8, 75, 75, 1), 0, 255, jnp.uint8),
           'gender': jnp.array([0, 1, 1, 0, -1, 1, 0, 0], jnp.int32),
           'age_group': jnp.array([0, 3, -1, 7, 2, 2, 5, -1], jnp.int32)}
  _poison(monkeypatch, 'loss', np.inf, bad_step=1)
  real_backend = jax.default_backend()
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  step = jax.jit(steps.make_train_step(model, tx, config))
  good, good_metrics = step(state, batch)  # step 0: updates everything
  bad, bad_metrics = step(good, batch)  # step 1: poisoned
  monkeypatch.setattr(jax, 'default_backend', lambda: real_backend)
  initial, before, after = jax.device_get((state, good, bad))
  for part in ('params', 'opt_state', 'ema_params', 'batch_stats'):
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                           getattr(initial, part), getattr(before, part)))
    assert any(changed), f'the good step left {part} unchanged'
    jax.tree.map(np.testing.assert_array_equal, getattr(after, part), getattr(before, part))
  assert (int(after.step), int(after.nonfinite_steps), int(after.first_nonfinite_step)) == (2, 1, 1)
  assert np.isfinite(good_metrics.compute()['loss'])
  assert float(bad_metrics.loss.count) == 0  # the skipped step counts in no metric
