"""Synthetic, face-like images whose drawn features depend on gender and age group (demo data only)."""

import numpy as np

# Per age group (0-2 … 60-100): how far the face is from a child's proportions, 0 → 1.
_AGE_PROGRESS = np.linspace(0.0, 1.0, 8)


def draw_face(rng: np.random.Generator, gender: int, age_group: int, size: int = 96) -> np.ndarray:
  """Draws one synthetic face as a (size, size, 3) uint8 RGB image.

  What a model can learn: gender sets hair length (long for 1 = female) and jaw width;
  age group sets eye size and face roundness (children), hair brightness (grey with age) and the
  number of forehead wrinkles. Subject-level nuisances (skin tone, position, scale, lighting,
  noise) are drawn from `rng` so that no single pixel gives the answer away.
  """
  if gender not in (0, 1):
    raise ValueError(f'gender must be 0 (male) or 1 (female), got {gender}.')
  if not 0 <= age_group < len(_AGE_PROGRESS):
    raise ValueError(f'age_group must be in 0..7, got {age_group}.')
  age = _AGE_PROGRESS[age_group] + rng.normal(0.0, 0.03)

  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  cx = 0.5 + rng.normal(0.0, 0.02)
  cy = 0.52 + rng.normal(0.0, 0.02)
  scale = 1.0 + rng.normal(0.0, 0.04)
  # Children's faces are rounder; men's jaws wider.
  half_width = scale * (0.27 + 0.03 * (1 - gender) - 0.02 * (1 - age))
  half_height = scale * (0.31 + 0.04 * age)

  background = rng.uniform(0.1, 0.9, size=3)
  image = np.broadcast_to(background, (size, size, 3)).copy()

  hair_level = 0.12 + 0.75 * age**2 + rng.normal(0.0, 0.04)
  hair_colour = np.clip(hair_level * np.array([1.0, 0.95, 0.9]), 0, 1)
  hair_top = ((x - cx) / (half_width * 1.15))**2 + ((y - cy + 0.04) / (half_height * 1.12))**2 < 1
  # Long hair falls to the shoulders beside the face.
  hair_length = 0.32 if gender == 1 else 0.02
  long_hair = (np.abs(x - cx) < half_width * 1.25) & (y > cy) & (y < cy + hair_length)
  image[hair_top | long_hair] = hair_colour

  skin = np.clip(rng.uniform(0.45, 0.85) * np.array([1.0, 0.85, 0.72]), 0, 1)
  face = ((x - cx) / half_width)**2 + ((y - cy) / half_height)**2 < 1
  forehead_line = cy - half_height * 0.55
  # Women get a fringe: hair stays over the top of the forehead.
  image[face if gender == 0 else face & (y > forehead_line - 0.02)] = skin

  eye_radius = 0.035 + 0.03 * (1 - age)
  eye_y = cy - 0.02 * scale
  for side in (-1, 1):
    eye_x = cx + side * half_width * 0.45
    eye = ((x - eye_x)**2 + (y - eye_y)**2) < eye_radius**2
    image[eye] = 0.95
    pupil = ((x - eye_x)**2 + (y - eye_y)**2) < (eye_radius * 0.45)**2
    image[pupil] = 0.05

  mouth_y = cy + half_height * 0.55
  mouth = (np.abs(x - cx) < half_width * 0.4) & (np.abs(y - mouth_y) < 0.012)
  image[mouth] = skin * 0.45

  wrinkles = int(round(age * 4))
  for i in range(wrinkles):
    line_y = cy - half_height * (0.35 + 0.08 * i)
    line = face & (np.abs(y - line_y) < 0.006) & (np.abs(x - cx) < half_width * 0.55)
    image[line] = skin * 0.6

  lighting = 1.0 + rng.normal(0.0, 0.1) + rng.normal(0.0, 0.15) * (x - 0.5)
  image = image * lighting[..., None] + rng.normal(0.0, 0.03, size=image.shape)
  return (np.clip(image, 0, 1) * 255).astype(np.uint8)
