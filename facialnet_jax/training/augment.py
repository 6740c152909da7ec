"""Image preparation inside the compiled step: random zoom/shift/rotation/flip, lighting and photo-like degradations, crop, normalise."""

import jax
import jax.numpy as jnp

# The config.augment keys of the photo-like degradations (all 0 = off).
PHOTO_DEGRADATIONS = ('blur_probability', 'noise_std', 'saturation', 'colour_cast',
                      'grayscale_probability')


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


def _downscale_upscale(image: jax.Array, scale: jax.Array) -> jax.Array:
  """Shrinks (T, T, C) by `scale` (antialiased) and enlarges it back: the blur of a small face
  in a photo, at a scale drawn inside the compiled step (the shapes stay static)."""
  size = image.shape[0]
  # Edge-padding first, so the enlargement never reads the zeros beyond the shrunk image.
  pad = 4
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
  shape = padded.shape
  shrunk = jax.image.scale_and_translate(
      padded, shape, (0, 1), jnp.array([scale, scale]), jnp.zeros(2), 'linear', antialias=True)
  restored = jax.image.scale_and_translate(
      shrunk, shape, (0, 1), jnp.array([1 / scale, 1 / scale]), jnp.zeros(2), 'linear',
      antialias=True)
  return restored[pad:pad + size, pad:pad + size]


def _random_photo_degradation(key: jax.Array, image: jax.Array, config) -> jax.Array:
  """What separates a face in an ordinary photo from a clean training crop: low resolution
  (downscale-and-upscale blur), sensor noise, colour casts and black-and-white photos.
  Each part is off at its config default (0), so the default step is unchanged."""
  blur_key, scale_key, noise_key, sigma_key, colour_key, gray_key, saturation_key = (
      jax.random.split(key, 7))
  if config.blur_probability > 0:
    scale = jax.random.uniform(scale_key, (), minval=config.blur_min_scale, maxval=1.0)
    image = jnp.where(jax.random.bernoulli(blur_key, config.blur_probability),
                      _downscale_upscale(image, scale), image)
  channels = image.shape[-1]
  if channels == 3 and config.saturation > 0:
    gray = jnp.mean(image, axis=-1, keepdims=True)
    factor = 1.0 + jax.random.uniform(saturation_key, (), minval=-config.saturation,
                                      maxval=config.saturation)
    image = gray + (image - gray) * factor
  if channels == 3 and config.colour_cast > 0:
    gains = 1.0 + jax.random.uniform(colour_key, (3,), minval=-config.colour_cast,
                                     maxval=config.colour_cast)
    image = image * gains
  if channels == 3 and config.grayscale_probability > 0:
    # ITU-R BT.601 luma, as the builders' gray configs.
    luma = jnp.dot(image, jnp.array([0.299, 0.587, 0.114], image.dtype))[..., None]
    image = jnp.where(jax.random.bernoulli(gray_key, config.grayscale_probability),
                      jnp.broadcast_to(luma, image.shape), image)
  if config.noise_std > 0:
    sigma = jax.random.uniform(sigma_key, (), maxval=config.noise_std)
    image = image + sigma * jax.random.normal(noise_key, image.shape)
  return jnp.clip(image, 0.0, 1.0)


def photo_degradation_enabled(augment_config) -> bool:
  return any(augment_config.get(name, 0) > 0 for name in PHOTO_DEGRADATIONS)


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
    if photo_degradation_enabled(config.augment):
      # Its own keys (folded from the step's), so the draws above stay as they were.
      photo_keys = jax.random.split(jax.random.fold_in(key, 1), x.shape[0])
      x = jax.vmap(lambda k, im: _random_photo_degradation(k, im, config.augment))(
          photo_keys, x)
  elif stored_size > output_size:
    start = (stored_size - output_size) // 2
    x = x[:, start:start + output_size, start:start + output_size]
  return (x - config.model.pixel_mean) / config.model.pixel_std
