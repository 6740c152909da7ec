"""Weight EMA (kept in the state, checkpointed, what evaluation uses) and flip test-time
augmentation (evaluation and the final report average an image with its mirror)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax import evaluate
from facialnet_jax.runtime import sharding
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import restore
from facialnet_jax.training import steps
from facialnet_jax.training import train
from facialnet_jax.training import train_state
from tests.conftest import tiny_config


def _state(config, seed: int = 0):
  """A fresh state whose zero-initialised classifier layers are made random, so the network's
  outputs depend on its input."""
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=10)
  state = train_state.create_train_state(model, tx, jax.random.key(seed), (75, 75, 1),
                                         train_state.uses_ema(config))
  leaves, treedef = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree.unflatten(treedef, [
      jnp.where(leaf == 0, 0.05 * jax.random.normal(key, leaf.shape), leaf)
      for leaf, key in zip(leaves, keys)])
  return model, tx, state.replace(params=params)


def _batch(images: np.ndarray) -> dict:
  unknown = jnp.full(len(images), -1, jnp.int32)
  return {'image': jnp.asarray(images), 'gender': unknown, 'age_group': unknown}


def _photos(count: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, 75, 75, 1), dtype=np.uint8)


def test_ema_moves_towards_the_trained_parameters_with_the_warmed_up_decay():
  config = tiny_config(**{'ema.decay': 0.99, 'augment.enabled': False})
  model, tx, state = _state(config)
  start = state.ema_params
  labels = np.random.default_rng(0).integers(0, 2, 8).astype(np.int32)
  batch = {'image': jnp.asarray(_photos(8)), 'gender': jnp.asarray(labels),
           'age_group': jnp.asarray(labels * 3)}
  train_step = jax.jit(steps.make_train_step(model, tx, config))
  after_one, _ = train_step(state, batch)
  # Step 0 decays with min(0.99, 1/10): the average moves 90% of the way to the new weights.
  expected = jax.tree.map(lambda e, p: 0.1 * e + 0.9 * p, start, after_one.params)
  for got, want in zip(jax.tree.leaves(after_one.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  trained = after_one
  for _ in range(5):
    trained, _ = train_step(trained, batch)
  distance = lambda a, b: float(sum(jnp.sum((x - y) ** 2) for x, y in
                                    zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  assert distance(trained.ema_params, trained.params) < distance(start, trained.params)
  assert distance(trained.ema_params, trained.params) > 0  # an average, not a copy


def test_evaluation_uses_the_moving_average_when_the_state_has_one():
  config = tiny_config(**{'ema.decay': 0.99})
  model, _, state = _state(config)
  _, _, other = _state(config, seed=5)
  state = state.replace(ema_params=other.params)
  images = _photos(4)
  _, probabilities = jax.jit(steps.make_eval_step(model, config))(state, _batch(images))
  normalised = (images.astype(np.float32) / 255 - 0.5) / 0.25
  with_ema = model.apply({'params': other.params}, normalised, train=False)
  with_trained = model.apply({'params': state.params}, normalised, train=False)
  np.testing.assert_allclose(probabilities['age'], jax.nn.softmax(with_ema['age']), rtol=1e-5)
  assert not np.allclose(probabilities['age'], jax.nn.softmax(with_trained['age']), rtol=1e-3)


def test_flip_of_a_mirror_symmetric_image_equals_the_plain_prediction():
  config = tiny_config()
  model, _, state = _state(config)
  half = _photos(3)[:, :, :38]
  symmetric = np.concatenate([half, half[:, :, :37][:, :, ::-1]], axis=2)
  assert (symmetric == symmetric[:, :, ::-1]).all()
  plain = jax.jit(steps.make_eval_step(model, config))(state, _batch(symmetric))[1]
  flipped = jax.jit(steps.make_eval_step(model, config, flip=True))(state, _batch(symmetric))[1]
  for head in ('gender', 'age'):
    np.testing.assert_allclose(flipped[head], plain[head], rtol=1e-5, atol=1e-6)


def test_flip_averages_an_image_with_its_mirror():
  config = tiny_config()
  model, _, state = _state(config)
  images = _photos(4)
  plain_step = jax.jit(steps.make_eval_step(model, config))
  plain = plain_step(state, _batch(images))[1]
  mirror = plain_step(state, _batch(images[:, :, ::-1]))[1]
  flipped = jax.jit(steps.make_eval_step(model, config, flip=True))(state, _batch(images))[1]
  for head in ('gender', 'age'):
    np.testing.assert_allclose(flipped[head], (plain[head] + mirror[head]) / 2, rtol=1e-5)
    assert not np.allclose(plain[head], mirror[head], rtol=1e-3)  # the test is not vacuous


@pytest.fixture(scope='module')
def ema_flip_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ema_flip'))
  results = train.train_and_evaluate(tiny_config(**{'ema.decay': 0.9, 'flip_test': True}),
                                     workdir)
  return workdir, results


def test_a_run_with_ema_checkpoints_it_and_evaluate_scores_it(ema_flip_run):
  workdir, results = ema_flip_run
  run = restore.restore_run(workdir, restore.LATEST)
  assert run.state.ema_params is not None
  assert any(not np.array_equal(e, p) for e, p in zip(jax.tree.leaves(run.state.ema_params),
                                                      jax.tree.leaves(run.state.params)))
  data = evaluate.load_evaluation_data(run, 'test')
  plain = evaluate.evaluate(run, data, flip=False)
  for key in ('gender_accuracy', 'age_accuracy', 'gender_loss'):
    assert plain.metrics[key] == pytest.approx(results['test']['final'][key], rel=1e-5)


def test_flip_is_reported_beside_the_plain_numbers(ema_flip_run):
  workdir, results = ema_flip_run
  assert set(results) >= {'test', 'test_flip', 'validation', 'validation_flip'}
  run = restore.restore_run(workdir, restore.LATEST)
  data = evaluate.load_evaluation_data(run, 'test')
  flipped = evaluate.evaluate(run, data, flip=True)
  assert flipped.flip and flipped.plain_metrics is not None
  for key in ('gender_loss', 'age_loss'):
    assert flipped.metrics[key] == pytest.approx(results['test_flip']['final'][key], rel=1e-5)
    assert flipped.plain_metrics[key] == pytest.approx(results['test']['final'][key], rel=1e-5)
    # The two losses differ: the mirrored images changed the averaged prediction.
    assert flipped.metrics[key] != pytest.approx(flipped.plain_metrics[key], rel=1e-6)
  assert 'with flip' in flipped.summary_line()


def test_resuming_with_the_moving_average_switched_is_refused(ema_flip_run, tmp_path):
  workdir, _ = ema_flip_run
  with pytest.raises(train.UserError, match='ema'):
    train.train_and_evaluate(tiny_config(**{'num_epochs': 3}), workdir)


def test_checkpoints_from_before_the_moving_average_existed_still_restore(tmp_path):
  """Runs trained before TrainState had ema_params saved no such field: they restore with it
  unset, array for array."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import checkpointing  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  _, _, state = _state(config)
  legacy = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)
            if field.name != 'ema_params'}
  checkpoints = checkpointing.RunCheckpoints(str(tmp_path), keep=1,
                                             best_metric='age_accuracy')
  checkpoints.save(3, legacy, {'step': 3})
  checkpoints.wait()
  restored, meta = checkpointing.restore(checkpoints.latest, 3,
                                         checkpointing.abstract_like(state))
  checkpoints.close()
  assert meta == {'step': 3} and isinstance(restored, train_state.TrainState)
  assert restored.ema_params is None
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(got, want)
