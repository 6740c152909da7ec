"""Photo-like degradations inside the compiled step: off by default (the step is unchanged), and
each one does what its name says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import augment
from facialnet_jax.training import config_checks
from tests.conftest import tiny_config


def _images(channels=3, count=6, size=75):
  rng = np.random.default_rng(0)
  # Sharp random blocks: plenty of high frequencies for the blur to remove.
  blocks = rng.integers(0, 256, (count, size // 5, size // 5, channels))
  return np.repeat(np.repeat(blocks, 5, axis=1), 5, axis=2).astype(np.uint8)


def _prepare(images, **augment_values):
  config = tiny_config(**{'model.input_size': 75})
  for key, value in augment_values.items():
    config.augment[key] = value
  normalised = augment.prepare_images(jnp.asarray(images), jax.random.key(3), config)
  return np.asarray(normalised) * config.model.pixel_std + config.model.pixel_mean


def test_off_by_default_the_step_is_what_it_was():
  images = _images()
  config = tiny_config(**{'model.input_size': 75})
  assert not augment.photo_degradation_enabled(config.augment)
  old = tiny_config(**{'model.input_size': 75})
  for key in augment.PHOTO_DEGRADATIONS:  # a config written before the keys existed
    del old.augment[key]
  np.testing.assert_array_equal(
      augment.prepare_images(jnp.asarray(images), jax.random.key(3), config),
      augment.prepare_images(jnp.asarray(images), jax.random.key(3), old))


def test_downscale_upscale_blurs_and_is_the_identity_at_scale_one():
  image = jnp.asarray(_images(count=1)[0], jnp.float32) / 255
  np.testing.assert_allclose(augment._downscale_upscale(image, jnp.float32(1.0)), image,
                             atol=1e-6)
  blurred = np.asarray(augment._downscale_upscale(image, jnp.float32(0.25)))
  def edges(x):
    return np.abs(np.diff(x, axis=0)).mean()
  assert blurred.shape == image.shape
  assert edges(blurred) < 0.5 * edges(np.asarray(image))
  # The mean brightness stays (no dark border from the shrunk image's edge).
  assert abs(blurred.mean() - float(image.mean())) < 0.02


def test_grayscale_gives_equal_channels_and_noise_changes_pixels():
  images = _images()
  gray = _prepare(images, grayscale_probability=1.0, **{'enabled': True})
  np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)
  np.testing.assert_allclose(gray[..., 1], gray[..., 2], atol=1e-5)
  plain = _prepare(images)
  noisy = _prepare(images, noise_std=0.1)
  assert 0.005 < np.abs(noisy - plain).mean() < 0.1


def test_colour_changes_leave_gray_input_alone():
  images = _images(channels=1)
  np.testing.assert_array_equal(
      _prepare(images), _prepare(images, saturation=0.5, colour_cast=0.2,
                                 grayscale_probability=1.0))


@pytest.mark.parametrize('key, value', [('blur_probability', 1.5), ('grayscale_probability', -0.1),
                                        ('blur_min_scale', 0.0), ('noise_std', -0.01)])
def test_bad_values_are_one_line_errors(key, value):
  config = tiny_config()
  config.augment[key] = value
  with pytest.raises(UserError, match=f'config.augment.{key}='):
    config_checks.check_config(config)
