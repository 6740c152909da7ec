"""Fine-tuning from another run (config.init_from): exactly the chosen parameters are taken, a
frozen backbone does not move, and a run with another model is refused in one line."""

import jax
import numpy as np
import pytest

from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import fine_tune
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import restore
from facialnet_jax.training import train
from facialnet_jax.training import train_state
from tests.conftest import final_params, initial_params, tiny_config


@pytest.fixture(scope='module')
def source_run(tmp_path_factory) -> str:
  """A finished tiny run to start from."""
  workdir = str(tmp_path_factory.mktemp('source'))
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


def _fresh_state(config, mesh):
  tx = optim.create_optimizer(config, steps_per_epoch=8)
  return train_state.create_train_state_on_mesh(
      models.create_model(config.model), tx, config.seed + 1, (75, 75, 1), mesh,
      train_state.uses_ema(config))


def _assert_trees_equal(tree, other):
  for leaf, other_leaf in zip(jax.tree.leaves(tree), jax.tree.leaves(other), strict=True):
    np.testing.assert_array_equal(leaf, other_leaf)


@pytest.mark.parametrize('heads', [True, False])
def test_the_chosen_parameters_are_restored_exactly(source_run, heads):
  config = tiny_config(init_from=source_run, init_heads=heads, seed=1)
  mesh = sharding.create_mesh()
  fresh = _fresh_state(config, mesh)
  started = jax.device_get(fine_tune.initialise_from(config, fresh, 1, mesh).params)
  source = jax.device_get(restore.restore_run(source_run, restore.BEST).state.params)
  _assert_trees_equal(started['backbone'], source['backbone'])
  expected_heads = source if heads else jax.device_get(fresh.params)
  for head in fine_tune.HEADS:
    _assert_trees_equal(started[head], expected_heads[head])
  if not heads:  # fresh heads really differ from the source's
    assert not np.array_equal(jax.tree.leaves(started['gender_head'])[0],
                              jax.tree.leaves(source['gender_head'])[0])


def test_another_model_is_refused_in_one_line(source_run):
  config = tiny_config(**{'init_from': source_run, 'model.batch_norm': True})
  mesh = sharding.create_mesh()
  with pytest.raises(UserError) as error:
    fine_tune.initialise_from(config, _fresh_state(config, mesh), 1, mesh)
  message = str(error.value)
  assert 'model.batch_norm False there, True here' in message and '\n' not in message


def test_a_missing_source_is_refused_before_training(tmp_path):
  config = tiny_config(init_from=str(tmp_path / 'no_such_run'))
  with pytest.raises(UserError, match='config.init_from=.*does not exist'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_frozen_backbone_stays_put_while_the_heads_learn(source_run, tmp_path):
  """One epoch with the backbone frozen: it ends exactly as the source's, the heads moved."""
  config = tiny_config(**{'init_from': source_run, 'num_epochs': 1,
                          'optimizer.freeze_backbone_epochs': 1.0})
  train.train_and_evaluate(config, str(tmp_path))
  tuned = final_params(tmp_path)
  source = jax.device_get(restore.restore_run(source_run, restore.BEST).state.params)
  _assert_trees_equal(tuned['backbone'], source['backbone'])
  assert not np.array_equal(tuned['age_head']['Dense_0']['kernel'],
                            source['age_head']['Dense_0']['kernel'])


def test_the_backbone_learning_rate_scale_slows_only_the_backbone():
  config = tiny_config(**{'optimizer.backbone_learning_rate_scale': 0.1,
                          'optimizer.weight_decay': 0.0})
  params = initial_params(config)
  tx = optim.create_optimizer(config, steps_per_epoch=8)
  ones = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(ones, tx.init(params), params, value=0.0)
  learning_rate = config.optimizer.learning_rate
  for name, tree in updates.items():
    expected = -learning_rate * (0.1 if name == 'backbone' else 1.0)
    for leaf in jax.tree.leaves(tree):
      np.testing.assert_allclose(leaf, expected, rtol=1e-6)
