"""CLU metric collections of the two heads; a label of -1 means unknown and is left out (the training losses are in losses.py)."""

import jax.numpy as jnp
import optax
from clu import metrics

from facialnet_jax.data import age_groups


def _per_example_cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))


def _gender_loss(gender_logits, gender, **_):
  return {'values': _per_example_cross_entropy(gender_logits, gender),
          'mask': gender != age_groups.UNKNOWN}


def _age_loss(age_logits, age_group, **_):
  return {'values': _per_example_cross_entropy(age_logits, age_group),
          'mask': age_group != age_groups.UNKNOWN}


def _gender_accuracy(gender_logits, gender, **_):
  return {'values': (jnp.argmax(gender_logits, -1) == gender).astype(jnp.float32),
          'mask': gender != age_groups.UNKNOWN}


def _age_accuracy(age_logits, age_group, **_):
  return {'values': (jnp.argmax(age_logits, -1) == age_group).astype(jnp.float32),
          'mask': age_group != age_groups.UNKNOWN}


def _age_one_off_accuracy(age_logits, age_group, **_):
  """The standard Adience 1-off metric: the predicted group is the true one or a neighbour."""
  distance = jnp.abs(jnp.argmax(age_logits, -1) - age_group)
  return {'values': (distance <= 1).astype(jnp.float32), 'mask': age_group != age_groups.UNKNOWN}


# Per-example averages over known labels only.
_PER_EXAMPLE_METRICS = {
    'gender_loss': metrics.Average.from_fun(_gender_loss),
    'age_loss': metrics.Average.from_fun(_age_loss),
    'gender_accuracy': metrics.Average.from_fun(_gender_accuracy),
    'age_accuracy': metrics.Average.from_fun(_age_accuracy),
    'age_one_off_accuracy': metrics.Average.from_fun(_age_one_off_accuracy),
}
# Evaluation of whole splits.
EvalMetrics = metrics.Collection.create(**_PER_EXAMPLE_METRICS)
# Training adds the optimised (weighted, batch-mean) loss, averaged over steps.
TrainMetrics = metrics.Collection.create(loss=metrics.Average.from_output('loss'),
                                         **_PER_EXAMPLE_METRICS)
