"""Image preparation inside the compiled step: random zoom/shift/rotation/flip and lighting, crop, normalise."""

import jax
import jax.numpy as jnp


def _affine_sample(image: jax.Array, output_size: int, zoom: jax.Array, shift_y: jax.Array,
                   shift_x: jax.Array, angle: jax.Array, flip: jax.Array) -> jax.Array:
  """Bilinearly resamples one (S, S, C) image onto an output_size² grid around its centre.

  With zoom 1, no shift, rotation or flip, and S > output_size, this is the centre crop.
  """
  source_centre = (image.shape[0] - 1) / 2
  grid = jnp.arange(output_size, dtype=jnp.float32) - (output_size - 1) / 2
  v, u = jnp.meshgrid(grid, grid, indexing='ij')
  u = jnp.where(flip, -u, u)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rows = source_centre + shift_y + (cos * v - sin * u) / zoom
  cols = source_centre + shift_x + (sin * v + cos * u) / zoom

  def sample_channel(channel):
    return jax.scipy.ndimage.map_coordinates(channel, [rows, cols], order=1, mode='nearest')

  return jax.vmap(sample_channel, in_axes=-1, out_axes=-1)(image)


def _random_geometry(key: jax.Array, image: jax.Array, output_size: int, config) -> jax.Array:
  zoom_key, shift_key, angle_key, flip_key = jax.random.split(key, 4)
  zoom = 1.0 + jax.random.uniform(zoom_key, (), minval=-config.zoom, maxval=config.zoom)
  shift_y, shift_x = jax.random.uniform(
      shift_key, (2,), minval=-config.shift, maxval=config.shift) * output_size
  angle = jnp.deg2rad(jax.random.uniform(
      angle_key, (), minval=-config.rotation_degrees, maxval=config.rotation_degrees))
  flip = config.flip & jax.random.bernoulli(flip_key)
  return _affine_sample(image, output_size, zoom, shift_y, shift_x, angle, flip)


def _random_lighting(key: jax.Array, image: jax.Array, config) -> jax.Array:
  """Brightness shift and contrast stretch around the image's mean: the paper's lighting change."""
  brightness_key, contrast_key = jax.random.split(key)
  brightness = jax.random.uniform(
      brightness_key, (), minval=-config.brightness, maxval=config.brightness)
  contrast = 1.0 + jax.random.uniform(
      contrast_key, (), minval=-config.contrast, maxval=config.contrast)
  mean = jnp.mean(image)
  return jnp.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0)


def prepare_images(images: jax.Array, key: jax.Array | None, config) -> jax.Array:
  """uint8 (B, S, S, C) → normalised float32 (B, T, T, C), T = config.model.input_size.

  With a key and `config.augment.enabled` every image gets its own random transform (training);
  without a key the images are centre-cropped to T (evaluation and prediction).
  """
  output_size = config.model.input_size
  stored_size = images.shape[1]
  if stored_size < output_size:
    raise ValueError(f'Stored images are {stored_size}px but config.model.input_size is '
                     f'{output_size}; build the data set at a size of at least {output_size}.')
  x = images.astype(jnp.float32) / 255.0
  if key is not None and config.augment.enabled:
    geometry_keys, lighting_keys = jnp.split(jax.random.split(key, 2 * x.shape[0]), 2)
    x = jax.vmap(lambda k, im: _random_geometry(k, im, output_size, config.augment))(
        geometry_keys, x)
    x = jax.vmap(lambda k, im: _random_lighting(k, im, config.augment))(lighting_keys, x)
  elif stored_size > output_size:
    start = (stored_size - output_size) // 2
    x = x[:, start:start + output_size, start:start + output_size]
  return (x - config.model.pixel_mean) / config.model.pixel_std
