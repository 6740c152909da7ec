"""Training losses: masked cross-entropy (optionally label-smoothed), ordinal and label-distribution age losses, class weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from facialnet_jax.data import age_groups

AGE_LOSSES = ('cross_entropy', 'ordinal', 'label_distribution')
CLASS_BALANCE = ('', 'inverse_sqrt', 'effective_number')


def masked_mean(per_example: jax.Array, labels: jax.Array,
                class_weights: jax.Array | None = None) -> jax.Array:
  """Mean of per-example losses over the known labels (0 when none is), each scaled by its
  class's weight when `class_weights` is given."""
  known = labels != age_groups.UNKNOWN
  if class_weights is not None:
    per_example = per_example * jnp.asarray(class_weights)[jnp.where(known, labels, 0)]
  # Divided by the count of known labels, not by the weights' sum: the weights average 1 over
  # the training set, so the loss keeps its scale and a batch of rare classes does weigh more.
  # The max(…, 1) keeps an all-unknown batch at exactly zero loss and zero gradient.
  return jnp.sum(jnp.where(known, per_example, 0.0)) / jnp.maximum(jnp.sum(known), 1)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array,
                         class_weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the examples whose label is known (0 when none is)."""
  known = labels != age_groups.UNKNOWN
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(known, labels, 0))
  return masked_mean(per_example, labels, class_weights)


def gaussian_targets(labels: jax.Array, num_classes: int, sigma: float) -> jax.Array:
  """A discretised Gaussian over the class indices centred at each label, normalised: the
  target of label-distribution learning (Gao et al. 2017, DLDL), where neighbouring age groups
  share some of the probability."""
  squared_distance = (jnp.arange(num_classes) - labels[:, None]) ** 2
  return jax.nn.softmax(-squared_distance / (2 * sigma ** 2))


def ordinal_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example CORAL-style ordinal loss read off a softmax head (Cao et al. 2020): for each
  threshold k = 0 … K-2 the binary cross-entropy of P(y > k) = Σ_{j>k} p_j against the target's
  own tail mass (1[y > k] for a one-hot target), summed over the thresholds. A prediction one
  group off gets one threshold wrong, one four groups off gets four."""
  log_p = jax.nn.log_softmax(logits)
  classes = log_p.ndim - 1  # lax's cumulative ops take no negative axis
  # log P(y > k) - log P(y ≤ k) is the log-odds of the threshold, computed in log space so a
  # confident prediction stays finite.
  log_above = jax.lax.cumlogsumexp(log_p, axis=classes, reverse=True)[..., 1:]
  log_at_most = jax.lax.cumlogsumexp(log_p, axis=classes)[..., :-1]
  target_above = jax.lax.cumsum(targets, axis=classes, reverse=True)[..., 1:]
  return jnp.sum(optax.sigmoid_binary_cross_entropy(log_above - log_at_most, target_above), -1)


def head_loss(logits: jax.Array, labels: jax.Array, kind: str = 'cross_entropy',
              smoothing: float = 0.0, sigma: float = 1.0,
              class_weights: jax.Array | None = None) -> jax.Array:
  """One head's masked mean loss: `kind` is one of AGE_LOSSES; `smoothing` mixes the target
  with the uniform distribution (optax.smooth_labels) before any loss reads it."""
  if kind == 'cross_entropy' and not smoothing:
    # The paper's loss, computed exactly as before the options existed (defaults bit for bit).
    return masked_cross_entropy(logits, labels, class_weights)
  logits = logits.astype(jnp.float32)  # soft targets and the tails want float32 under bfloat16
  num_classes = logits.shape[-1]
  label_or_zero = jnp.maximum(labels, 0)  # unknown rows are masked out by masked_mean
  if kind == 'label_distribution':
    targets = gaussian_targets(label_or_zero, num_classes, sigma)
  else:
    targets = jax.nn.one_hot(label_or_zero, num_classes)
  if smoothing:
    targets = optax.smooth_labels(targets, smoothing)
  if kind == 'ordinal':
    per_example = ordinal_cross_entropy(logits, targets)
  else:
    per_example = optax.softmax_cross_entropy(logits, targets)
  return masked_mean(per_example, labels, class_weights)


def multitask_loss(logits: dict[str, jax.Array], labels: dict[str, jax.Array], loss_config,
                   class_weights: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """Weighted sum of the two heads' masked losses, plus the per-head terms.

  `labels` holds 'gender' and 'age_group' (a batch will do); `loss_config` is config.loss;
  `class_weights`, from class_weights() below, maps 'gender' and 'age' to per-class weights.
  Label smoothing applies to both heads; the age loss kind to the age head only.
  """
  weights = class_weights or {}
  gender_loss = head_loss(logits['gender'], labels['gender'],
                          smoothing=loss_config.label_smoothing,
                          class_weights=weights.get('gender'))
  age_loss = head_loss(logits['age'], labels['age_group'], loss_config.age_loss,
                       loss_config.label_smoothing, loss_config.age_sigma, weights.get('age'))
  loss = loss_config.gender_weight * gender_loss + loss_config.age_weight * age_loss
  return loss, {'gender_loss': gender_loss, 'age_loss': age_loss}


def _balanced(labels: np.ndarray, num_classes: int, scheme: str, beta: float) -> np.ndarray:
  counts = np.bincount(labels[labels != age_groups.UNKNOWN], minlength=num_classes).astype(np.float64)
  if not counts.any():
    return np.ones(num_classes, np.float32)
  present = counts > 0
  raw = np.zeros(num_classes)  # a class absent from training never weighs a loss
  if scheme == 'inverse_sqrt':
    raw[present] = counts[present] ** -0.5
  else:  # 'effective_number'
    raw[present] = (1 - beta) / (1 - beta ** counts[present])
  # The mean weight over the known training examples is 1: the loss keeps its scale.
  return (raw * counts.sum() / np.sum(raw * counts)).astype(np.float32)


def class_weights(labels: dict[str, np.ndarray], scheme: str,
                  beta: float = 0.999) -> dict[str, np.ndarray] | None:
  """Per-class loss weights from the training split's labels (host arrays; -1 left out), or
  None when `scheme` is ''.

  'inverse_sqrt': 1/√n_c. 'effective_number': (1 - β) / (1 - β^n_c), the inverse of the class's
  effective number of samples (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number
  of Samples"); β → 0 is no weighting, β → 1 is 1/n_c.
  """
  if not scheme:
    return None
  return {head: _balanced(np.asarray(labels[age_groups.LABEL_KEYS[head]]),
                         age_groups.NUM_CLASSES[head], scheme, beta)
          for head in age_groups.HEADS}
