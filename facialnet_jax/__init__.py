"""FacialNet in JAX/Flax: gender and age-group recognition from face images."""
