"""Mixup (Zhang et al. 2018) inside the compiled step: each image blended with a partner's, the loss with the partner's labels."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from facialnet_jax.data import age_groups

LABEL_KEYS = tuple(age_groups.LABEL_KEYS.values())
# Folded into the step's augmentation key, so mixup draws from its own stream and the other
# augmentations' draws stay exactly what they were without it.
_STREAM = 1


class Mix(NamedTuple):
  share: jax.Array  # λ ~ Beta(α, α): the weight of each example's own image and labels
  partner: jax.Array  # (B,): the example each one is blended with, a permutation of the batch


def draw(key: jax.Array, batch_size: int, augment_config) -> Mix | None:
  """λ and the partners from the step's augmentation key, itself from (seed, step) alone, so a
  resumed run draws them again; None (no mixup) when config.augment.mixup_alpha is 0 or
  config.augment.enabled is False (it switches off every augmentation)."""
  alpha = augment_config.mixup_alpha
  if not alpha or not augment_config.enabled:
    return None
  share_key, partner_key = jax.random.split(jax.random.fold_in(key, _STREAM))
  return Mix(jax.random.beta(share_key, alpha, alpha),
             jax.random.permutation(partner_key, batch_size))


def mix_images(images: jax.Array, mix: Mix | None) -> jax.Array:
  """λ·image + (1 - λ)·partner's image (the batch itself without mixup)."""
  if mix is None:
    return images
  return mix.share * images + (1 - mix.share) * images[mix.partner]


def partner_labels(labels: dict, mix: Mix) -> dict:
  return {key: labels[key][mix.partner] for key in LABEL_KEYS}


def mixed_loss(loss_fn: Callable, logits: dict, labels: dict, mix: Mix | None):
  """λ·loss_fn(logits, own labels) + (1 - λ)·loss_fn(logits, partner's labels), applied to the
  loss and its parts alike. loss_fn masks each side's unknown labels on that side alone: a
  partner of unknown age adds nothing to the age loss, whatever its share of the image."""
  own = loss_fn(logits, labels)
  if mix is None:
    return own
  theirs = loss_fn(logits, partner_labels(labels, mix))
  return jax.tree.map(lambda a, b: mix.share * a + (1 - mix.share) * b, own, theirs)


def metric_labels(labels: dict, mix: Mix | None) -> dict:
  """The labels the train metrics score the mixed images against: those of the larger share
  (the example's own when λ ≥ 1/2), so train accuracy still reads as an accuracy; the train
  loss metric is the mixed loss that is optimised."""
  if mix is None:
    return labels
  partner = partner_labels(labels, mix)
  return {key: jnp.where(mix.share >= 0.5, labels[key], partner[key]) for key in LABEL_KEYS}
