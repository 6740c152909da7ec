"""Learning-rate schedules and the optimiser: the values users configure are the values used."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from facialnet_jax.training import optim
from tests.conftest import tiny_config


def _schedule(**overrides):
  config = tiny_config(**{'num_epochs': 10, 'optimizer.learning_rate': 0.1} | overrides)
  return optim.create_learning_rate_schedule(config, steps_per_epoch=10)


def test_constant_schedule():
  schedule = _schedule(**{'schedule.name': 'constant'})
  assert schedule(0) == schedule(99) == pytest.approx(0.1)


def test_piecewise_schedule_decays_at_epoch_boundaries():
  schedule = _schedule(**{'schedule.name': 'piecewise', 'schedule.boundaries_epochs': (3, 6),
                          'schedule.decay_factor': 0.5})
  np.testing.assert_allclose([schedule(29), schedule(30), schedule(60)], [0.1, 0.05, 0.025],
                             rtol=1e-6)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
  schedule = _schedule(**{'schedule.name': 'cosine', 'schedule.warmup_epochs': 2.0})
  np.testing.assert_allclose([schedule(0), schedule(10), schedule(20)], [0.0, 0.05, 0.1],
                             rtol=1e-6, atol=1e-9)
  assert schedule(100) == pytest.approx(0.0, abs=1e-9)


def test_warmup_then_constant():
  schedule = _schedule(**{'schedule.name': 'constant', 'schedule.warmup_epochs': 1.0})
  np.testing.assert_allclose([schedule(5), schedule(10), schedule(50)], [0.05, 0.1, 0.1],
                             rtol=1e-6)


def test_reduce_on_plateau_lowers_the_rate_when_the_loss_stops_improving():
  config = tiny_config(**{'schedule.name': 'plateau', 'optimizer.learning_rate': 0.1,
                          'schedule.plateau_patience': 2, 'schedule.plateau_factor': 0.5,
                          'schedule.plateau_epochs': 1.0})
  tx = optim.create_optimizer(config, steps_per_epoch=5)
  params = {'w': jnp.ones(3)}
  opt_state = tx.init(params)
  update = jax.jit(lambda s: tx.update({'w': jnp.ones(3)}, s, params, value=jnp.float32(1.0))[1])
  rate = jax.jit(lambda step, s: optim.current_learning_rate(config, 5, step, s))
  rates = []
  for step in range(40):
    opt_state = update(opt_state)
    rates.append(float(rate(step + 1, opt_state)))
  assert rates[0] == pytest.approx(0.1)
  assert rates[-1] < 0.1 / 3  # a flat loss for 8 epochs: at least two reductions


def test_weight_decay_is_l2_added_to_the_gradient():
  config = tiny_config(**{'optimizer.learning_rate': 0.1, 'optimizer.momentum': 0.0,
                          'optimizer.weight_decay': 0.01})
  tx = optim.create_optimizer(config, steps_per_epoch=1)
  params = {'w': jnp.full(2, 2.0)}
  updates, _ = tx.update({'w': jnp.zeros(2)}, tx.init(params), params, value=jnp.float32(0))
  np.testing.assert_allclose(updates['w'], -0.1 * 0.01 * 2.0, rtol=1e-6)


def test_gradient_clipping_bounds_the_update():
  config = tiny_config(**{'optimizer.learning_rate': 1.0, 'optimizer.momentum': 0.0,
                          'optimizer.weight_decay': 0.0, 'optimizer.grad_clip_norm': 1.0})
  tx = optim.create_optimizer(config, steps_per_epoch=1)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, tx.init(params), params, value=jnp.float32(0))
  # optax.tree.norm: optax.global_norm is deprecated (and only calls it).
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match='config.schedule.name'):
    _schedule(**{'schedule.name': 'exponential'})


def _utkface_schedule(num_epochs: int, steps_per_epoch: int = 10):
  from configs import utkface  # pylint: disable=import-outside-toplevel
  config = utkface.get_config()
  config.num_epochs = num_epochs
  return config, optim.create_learning_rate_schedule(config, steps_per_epoch)


def test_a_warmup_longer_than_half_a_short_run_is_cut_to_a_tenth_of_it_with_one_warning(caplog):
  config, schedule = _utkface_schedule(num_epochs=2)  # 5 warm-up epochs configured
  peak = config.optimizer.learning_rate
  # 0.2 epochs = 2 steps of warm-up, then the cosine decays over the rest of the 20 steps.
  np.testing.assert_allclose([schedule(1), schedule(2)], [peak / 2, peak], rtol=1e-6)
  assert float(schedule(20)) == pytest.approx(peak * config.schedule.cosine_final_fraction,
                                              abs=1e-9)
  with caplog.at_level('WARNING'):
    optim.warn_if_warmup_clipped(config)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert warnings == [
      'config.schedule.warmup_epochs=5 is more than half of config.num_epochs=2: warming up for '
      '0.2 epochs instead (10% of the run), so that the learning-rate schedule runs its course; '
      'set a warm-up of at most half the run to choose it yourself.']


@pytest.mark.parametrize('num_epochs', [100, 10])
def test_a_warmup_of_at_most_half_the_run_is_kept_exactly_and_silently(num_epochs, caplog):
  config, schedule = _utkface_schedule(num_epochs)
  expected = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.optimizer.learning_rate, warmup_steps=50,
      decay_steps=num_epochs * 10,
      end_value=config.optimizer.learning_rate * config.schedule.cosine_final_fraction)
  at = np.arange(num_epochs * 10 + 1)
  np.testing.assert_array_equal(jax.vmap(schedule)(at), jax.vmap(expected)(at))
  with caplog.at_level('WARNING'):
    optim.warn_if_warmup_clipped(config)
  assert not caplog.records
