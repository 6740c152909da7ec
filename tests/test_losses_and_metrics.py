"""The masked multi-task loss and the metrics: unknown labels (-1) count nowhere."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from facialnet_jax.training import losses
from facialnet_jax.training import metrics
from facialnet_jax.training import models
from facialnet_jax.training import steps
from facialnet_jax.training import train_state
from tests.conftest import tiny_config


def test_masked_cross_entropy_averages_over_known_labels_only():
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
  labels = jnp.array([0, -1, 1])
  expected = np.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits[jnp.array([0, 2])], jnp.array([0, 1])))
  np.testing.assert_allclose(losses.masked_cross_entropy(logits, labels), expected, rtol=1e-6)


def test_all_unknown_labels_give_zero_loss():
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  assert losses.masked_cross_entropy(logits, jnp.array([-1, -1])) == 0.0


def test_batch_with_unknown_ages_trains_only_the_gender_head():
  """A face with only its gender known still teaches the gender head, and nothing flows
  into the age head."""
  config = tiny_config()
  model = models.create_model(config.model)
  state = jax.jit(lambda key: train_state.create_train_state(
      model, optax.sgd(0.1), key, (75, 75, 1)))(jax.random.key(0))
  batch = {'image': jax.random.randint(jax.random.key(1), (4, 75, 75, 1), 0, 255, jnp.uint8),
           'gender': jnp.array([0, 1, 1, 0], jnp.int32),
           'age_group': jnp.full((4,), -1, jnp.int32)}

  def loss_and_parts(params):
    images = steps.augment.prepare_images(batch['image'], None, config)
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': jax.random.key(2)})
    return losses.multitask_loss(logits, batch, config.loss)

  (loss, parts), grads = jax.jit(jax.value_and_grad(loss_and_parts, has_aux=True))(state.params)
  assert parts['age_loss'] == 0.0
  assert loss == parts['gender_loss'] > 0.0
  assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads['age_head']))
  assert any(jnp.any(g != 0) for g in jax.tree.leaves(grads['gender_head']))


def test_metrics_count_known_labels_and_one_off_neighbours():
  gender_logits = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  age_logits = jax.nn.one_hot(jnp.array([3, 3, 0, 7]), 8)
  collection = metrics.EvalMetrics.single_from_model_output(
      gender_logits=gender_logits, age_logits=age_logits,
      gender=jnp.array([0, 1, -1, 1]), age_group=jnp.array([3, 4, 2, -1]))
  values = collection.compute()
  assert values['gender_accuracy'] == 2 / 3  # the unknown third face is left out
  assert values['age_accuracy'] == 1 / 3
  assert values['age_one_off_accuracy'] == 2 / 3  # 3 for 4 is one off; 0 for 2 is not


def test_metrics_merge_like_one_big_batch():
  logits = jax.random.normal(jax.random.key(0), (10, 8))
  labels = jnp.array([0, 1, 2, 3, -1, 5, 6, 7, 7, -1])
  gender_logits = jax.random.normal(jax.random.key(1), (10, 2))
  gender = jnp.array([0, 1, -1, 1, 0, 0, 1, 1, 0, -1])

  def collect(s):
    return metrics.EvalMetrics.single_from_model_output(
        gender_logits=gender_logits[s], age_logits=logits[s], gender=gender[s],
        age_group=labels[s])

  whole = collect(slice(0, 10)).compute()
  merged = collect(slice(0, 3)).merge(collect(slice(3, 10))).compute()
  for key, value in whole.items():
    np.testing.assert_allclose(merged[key], value, rtol=1e-6)
