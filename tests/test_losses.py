"""The training losses' options (label smoothing, ordinal and label-distribution age losses, class
weights, mixup): each does what it says, unknown labels count nowhere, the defaults are the old
loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from facialnet_jax.data import input_pipeline
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import config_checks
from facialnet_jax.training import losses
from facialnet_jax.training import mixup
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import steps
from facialnet_jax.training import streaming
from facialnet_jax.training import train_state
from tests.conftest import tiny_config

AGE_GROUPS = 8
# Every option of the loss, each with the others at their defaults; class weights as passed.
LOSS_OPTIONS = {
    'defaults': ({}, None),
    'label smoothing': ({'label_smoothing': 0.1}, None),
    'ordinal': ({'age_loss': 'ordinal'}, None),
    'ordinal, smoothed': ({'age_loss': 'ordinal', 'label_smoothing': 0.1}, None),
    'label distribution': ({'age_loss': 'label_distribution', 'age_sigma': 1.5}, None),
    'class weights': ({}, {'gender': np.array([0.5, 2.0], np.float32),
                           'age': np.linspace(0.2, 3.0, AGE_GROUPS, dtype=np.float32)}),
}


def _loss_config(**overrides):
  config = tiny_config().loss
  config.update(overrides)
  return config


def _peaked(group: int, num_classes: int = AGE_GROUPS, height: float = 6.0) -> jax.Array:
  return height * jax.nn.one_hot(group, num_classes)[None]


@pytest.mark.parametrize('kind', losses.AGE_LOSSES)
def test_each_age_loss_is_lowest_when_the_logits_peak_at_the_true_group(kind):
  for true in range(AGE_GROUPS):
    values = [float(losses.head_loss(_peaked(guess), jnp.array([true]), kind))
              for guess in range(AGE_GROUPS)]
    assert np.argmin(values) == true, (kind, true, values)
    assert sorted(values)[0] < sorted(values)[1]  # strictly lowest


def test_ordinal_loss_costs_a_near_miss_less_than_a_far_one_and_cross_entropy_does_not():
  true = jnp.array([2])
  near, far = _peaked(3), _peaked(7)
  ordinal = [float(losses.head_loss(x, true, 'ordinal')) for x in (near, far)]
  cross_entropy = [float(losses.head_loss(x, true, 'cross_entropy')) for x in (near, far)]
  label_distribution = [float(losses.head_loss(x, true, 'label_distribution'))
                        for x in (near, far)]
  assert ordinal[0] < 0.5 * ordinal[1], ordinal  # one threshold wrong against five
  assert label_distribution[0] < label_distribution[1], label_distribution
  # Cross-entropy only sees the probability of the true group: every miss costs the same.
  assert cross_entropy[0] == pytest.approx(cross_entropy[1], rel=1e-6), cross_entropy


def test_ordinal_loss_is_the_sum_of_the_threshold_binary_cross_entropies():
  logits = jax.random.normal(jax.random.key(0), (5, AGE_GROUPS))
  labels = jnp.array([0, 3, 7, 5, 1])
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  above = np.stack([p[:, k + 1:].sum(1) for k in range(AGE_GROUPS - 1)], 1)
  targets = np.asarray(labels)[:, None] > np.arange(AGE_GROUPS - 1)
  expected = -(targets * np.log(above) + (1 - targets) * np.log(1 - above)).sum(1).mean()
  np.testing.assert_allclose(losses.head_loss(logits, labels, 'ordinal'), expected, rtol=1e-5)


def test_label_distribution_targets_are_a_normalised_gaussian_around_the_group():
  targets = np.asarray(losses.gaussian_targets(jnp.array([0, 4]), AGE_GROUPS, 1.0))
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  assert targets[1].argmax() == 4 and targets[1, 3] == pytest.approx(targets[1, 5])
  np.testing.assert_allclose(targets[1, 5] / targets[1, 4], np.exp(-0.5), rtol=1e-6)
  assert np.all(np.diff(targets[0]) < 0)  # group 0: falls away to one side only


def test_label_smoothing_is_optax_smoothed_cross_entropy_on_known_labels():
  logits = jax.random.normal(jax.random.key(1), (6, AGE_GROUPS))
  labels = jnp.array([0, -1, 3, 7, -1, 2])
  known = np.asarray(labels) >= 0
  expected = optax.softmax_cross_entropy(
      logits[known], optax.smooth_labels(jax.nn.one_hot(labels[known], AGE_GROUPS), 0.2)).mean()
  np.testing.assert_allclose(losses.head_loss(logits, labels, smoothing=0.2), expected,
                             rtol=1e-6)


@pytest.mark.parametrize('overrides, weights', LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_unknown_labels_add_nothing_to_the_loss_and_get_no_gradient(overrides, weights):
  config = _loss_config(**overrides)
  logits = {'gender': jax.random.normal(jax.random.key(2), (6, 2)),
            'age': jax.random.normal(jax.random.key(3), (6, AGE_GROUPS))}
  labels = {'gender': jnp.array([0, -1, 1, 1, -1, 0]), 'age_group': jnp.array([-1, 2, 5, -1, 0, 7])}
  loss_fn = lambda lg: losses.multitask_loss(lg, labels, config, weights)[0]
  loss, grads = jax.value_and_grad(loss_fn)(logits)
  assert np.all(grads['gender'][np.array([1, 4])] == 0)
  assert np.all(grads['age'][np.array([0, 3])] == 0)
  # The same loss from the known rows alone.
  gender_rows, age_rows = np.array([0, 2, 3, 5]), np.array([1, 2, 4, 5])
  alone = losses.multitask_loss({'gender': logits['gender'][gender_rows],
                                 'age': logits['age'][age_rows]},
                                {'gender': labels['gender'][gender_rows],
                                 'age_group': labels['age_group'][age_rows]}, config, weights)[0]
  np.testing.assert_allclose(loss, alone, rtol=1e-6)
  # A head with no known label at all: exactly zero, with zero gradient.
  unknown = {key: jnp.full(6, -1) for key in labels}
  loss, grads = jax.value_and_grad(
      lambda lg: losses.multitask_loss(lg, unknown, config, weights)[0])(logits)
  assert loss == 0 and all(np.all(g == 0) for g in jax.tree.leaves(grads))


def _old_multitask_loss(logits, batch, gender_weight, age_weight):
  """metrics.multitask_loss as it was before the loss options (commit 75caae0)."""
  def masked_cross_entropy(logits, labels):
    known = labels != -1
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(known, labels, 0))
    return jnp.sum(jnp.where(known, per_example, 0.0)) / jnp.maximum(jnp.sum(known), 1)
  gender_loss = masked_cross_entropy(logits['gender'], batch['gender'])
  age_loss = masked_cross_entropy(logits['age'], batch['age_group'])
  loss = gender_weight * gender_loss + age_weight * age_loss
  return loss, {'gender_loss': gender_loss, 'age_loss': age_loss}


def test_the_defaults_give_exactly_the_old_loss_and_gradients():
  config = _loss_config(gender_weight=0.7, age_weight=1.3)
  logits = {'gender': jax.random.normal(jax.random.key(4), (25, 2)),
            'age': 3 * jax.random.normal(jax.random.key(5), (25, AGE_GROUPS))}
  labels = {'gender': jax.random.randint(jax.random.key(6), (25,), -1, 2),
            'age_group': jax.random.randint(jax.random.key(7), (25,), -1, AGE_GROUPS)}
  new = jax.jit(jax.value_and_grad(
      lambda lg: losses.multitask_loss(lg, labels, config), has_aux=True))(logits)
  old = jax.jit(jax.value_and_grad(
      lambda lg: _old_multitask_loss(lg, labels, 0.7, 1.3), has_aux=True))(logits)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
    np.testing.assert_array_equal(a, b)


def test_class_weights_are_one_on_a_balanced_set_and_lift_the_rare_class():
  balanced = {'gender': np.array([0, 1] * 8 + [-1]), 'age_group': np.tile(np.arange(8), 3)}
  for scheme in ('inverse_sqrt', 'effective_number'):
    weights = losses.class_weights(balanced, scheme)
    np.testing.assert_allclose(weights['gender'], 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights['age'], 1.0, rtol=1e-6)
  skewed = {'gender': np.array([0] * 90 + [1] * 10 + [-1] * 50),
            'age_group': np.array([3] * 60 + [0] * 20 + [7] * 5 + [-1] * 9)}
  for scheme, beta in (('inverse_sqrt', 0.999), ('effective_number', 0.99)):
    weights = losses.class_weights(skewed, scheme, beta)
    assert weights['gender'][1] > 1 > weights['gender'][0], weights
    assert weights['age'][7] > weights['age'][0] > 1 > weights['age'][3], weights
    assert weights['age'][1] == 0  # absent from training: never used
    for key, head in (('gender', 'gender'), ('age_group', 'age')):
      known = skewed[key][skewed[key] >= 0]
      assert weights[head][known].mean() == pytest.approx(1.0, rel=1e-6)  # the loss's scale
  np.testing.assert_allclose(losses.class_weights(skewed, 'inverse_sqrt')['gender'],
                             np.array([1 / 3, 1]) / np.mean([1 / 3] * 90 + [1] * 10), rtol=1e-6)
  assert losses.class_weights(skewed, '') is None


def test_both_pipelines_splits_give_their_labels_for_the_class_weights():
  rng = np.random.default_rng(0)
  host = input_pipeline.HostSplit(
      np.zeros((2500, 2, 2, 1), np.uint8), rng.integers(-1, 2, 2500).astype(np.int32),
      rng.integers(-1, 8, 2500).astype(np.int32), np.arange(2500).astype(str))
  for split in (host, streaming.from_host(host)):
    labels = split.labels()
    assert set(labels) == {'gender', 'age_group'}
    np.testing.assert_array_equal(labels['gender'], host.gender)
    np.testing.assert_array_equal(labels['age_group'], host.age_group)


def test_class_weights_scale_each_known_example_by_its_class():
  logits = {'gender': jax.random.normal(jax.random.key(8), (4, 2)),
            'age': jnp.zeros((4, AGE_GROUPS))}
  labels = {'gender': jnp.array([0, 1, -1, 1]), 'age_group': jnp.full(4, -1)}
  weights = {'gender': np.array([0.5, 2.0], np.float32), 'age': np.ones(AGE_GROUPS, np.float32)}
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits['gender'], jnp.maximum(labels['gender'], 0))
  expected = (0.5 * per_example[0] + 2 * per_example[1] + 2 * per_example[3]) / 3
  _, parts = losses.multitask_loss(logits, labels, _loss_config(), weights)
  np.testing.assert_allclose(parts['gender_loss'], expected, rtol=1e-6)


def _augment_config(alpha: float, enabled: bool = True):
  return tiny_config(**{'augment.mixup_alpha': alpha, 'augment.enabled': enabled}).augment


def test_mixup_off_leaves_the_batch_and_the_loss_untouched():
  images = jax.random.normal(jax.random.key(9), (6, 4, 4, 1))
  key = jax.random.key(10)
  assert mixup.draw(key, 6, _augment_config(0.0)) is None
  assert mixup.draw(key, 6, _augment_config(0.4, enabled=False)) is None
  assert mixup.mix_images(images, None) is images
  labels = {'gender': jnp.array([0, 1, 1, 0, -1, 1]), 'age_group': jnp.arange(6)}
  assert mixup.metric_labels(labels, None) is labels


def test_mixup_blends_each_image_with_a_partner_by_one_beta_share():
  images = jax.random.uniform(jax.random.key(11), (8, 4, 4, 1))
  key = jax.random.key(12)
  mix = mixup.draw(key, 8, _augment_config(0.4))
  again = mixup.draw(key, 8, _augment_config(0.4))  # a resumed run's draw: the same
  assert float(mix.share) == float(again.share) and np.all(mix.partner == again.partner)
  assert 0 <= float(mix.share) <= 1
  assert sorted(np.asarray(mix.partner)) == list(range(8))
  mixed = mixup.mix_images(images, mix)
  np.testing.assert_allclose(
      mixed, mix.share * images + (1 - mix.share) * images[mix.partner], rtol=1e-6)
  # Convex: every pixel lies between its two sources.
  low = jnp.minimum(images, images[mix.partner]) - 1e-6
  high = jnp.maximum(images, images[mix.partner]) + 1e-6
  assert jnp.all((low <= mixed) & (mixed <= high))
  shares = [float(mixup.draw(jax.random.key(k), 8, _augment_config(0.4)).share)
            for k in range(200)]
  assert 0.3 < np.mean(shares) < 0.7 and np.std(shares) > 0.25  # Beta(0.4, 0.4): U-shaped


@pytest.mark.parametrize('overrides, weights', LOSS_OPTIONS.values(), ids=LOSS_OPTIONS.keys())
def test_mixup_loss_mixes_the_two_sides_each_masking_its_own_unknown_labels(overrides, weights):
  config = _loss_config(**overrides)
  loss_fn = lambda lg, lb: losses.multitask_loss(lg, lb, config, weights)
  logits = {'gender': jax.random.normal(jax.random.key(13), (4, 2)),
            'age': jax.random.normal(jax.random.key(14), (4, AGE_GROUPS))}
  # Row 0 knows no age, nor does its partner (row 1): its age logits learn nothing.
  labels = {'gender': jnp.array([1, 0, -1, 1]), 'age_group': jnp.array([-1, -1, 4, 6])}
  mix = mixup.Mix(jnp.float32(0.3), jnp.array([1, 0, 3, 2]))
  (loss, parts), grads = jax.value_and_grad(
      lambda lg: mixup.mixed_loss(loss_fn, lg, labels, mix), has_aux=True)(logits)
  own, theirs = loss_fn(logits, labels), loss_fn(logits, mixup.partner_labels(labels, mix))
  np.testing.assert_allclose(loss, 0.3 * own[0] + 0.7 * theirs[0], rtol=1e-6)
  np.testing.assert_allclose(parts['age_loss'], 0.3 * own[1]['age_loss']
                             + 0.7 * theirs[1]['age_loss'], rtol=1e-6)
  assert np.all(grads['age'][:2] == 0)
  assert np.all(grads['gender'] != 0)  # every row has a known gender on one side at least
  # The metrics score the larger share's labels: here the partner's (λ = 0.3).
  scored = mixup.metric_labels(labels, mix)
  assert scored['age_group'].tolist() == [-1, -1, 6, 4]


OPTIONS = {
    'label smoothing': {'loss.label_smoothing': 0.1},
    'mixup': {'augment.mixup_alpha': 0.4},
    'ordinal': {'loss.age_loss': 'ordinal'},
    'label distribution': {'loss.age_loss': 'label_distribution'},
}


def test_a_train_step_with_every_option_together_is_finite_and_keeps_its_keys():
  config = tiny_config(**{k: v for option in OPTIONS.values() for k, v in option.items()},
                       **{'loss.class_balance': 'effective_number'})
  config_checks.check_config(config)
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, steps_per_epoch=4)
  state = jax.jit(lambda key: train_state.create_train_state(
      model, tx, key, (75, 75, 1)))(jax.random.key(0))
  batch = {'image': jax.random.randint(jax.random.key(1), (8, 75, 75, 1), 0, 255, jnp.uint8),
           'gender': jnp.array([0, 1, 1, 0, -1, 1, 0, 0], jnp.int32),
           'age_group': jnp.array([0, 3, -1, 7, 2, 2, 5, -1], jnp.int32)}
  weights = losses.class_weights(jax.device_get(batch), 'effective_number')
  step = jax.jit(steps.make_train_step(model, tx, config, weights))
  new_state, step_metrics = step(state, batch)
  values = step_metrics.compute()
  assert np.isfinite(values['loss']) and int(new_state.nonfinite_steps) == 0
  # The same step again (a resume) draws the same mixup and augmentation: the same result.
  _, again = step(state, batch)
  assert again.compute()['loss'] == values['loss']


BAD_VALUES = {
    'loss.age_loss': 'poisson', 'loss.class_balance': 'inverse', 'loss.label_smoothing': -0.1,
    'augment.mixup_alpha': -1.0, 'loss.age_sigma': 0.0, 'loss.class_balance_beta': 1.0,
}


@pytest.mark.parametrize('key, value', BAD_VALUES.items(), ids=BAD_VALUES.keys())
def test_bad_loss_option_values_fail_with_one_line_naming_the_key(key, value):
  with pytest.raises(UserError) as raised:
    config_checks.check_config(tiny_config(**{key: value}))
  assert f'config.{key}=' in str(raised.value) and '\n' not in str(raised.value)
