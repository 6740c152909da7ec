"""oneDNN's max-pool gives flax's result and gradient on the oneDNN path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax.training import max_pool as M
from facialnet_jax.training import onednn_build


def _flax_pool(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding='VALID')


def _value_and_gradient(pool, x, dy):
  y, vjp = jax.vjp(pool, x)
  return y.astype(jnp.float32), vjp(dy)[0].astype(jnp.float32)


@pytest.mark.parametrize('values', ['distinct', 'ties'])
def test_onednn_max_pool_matches_flax_on_facialnets_shape(values):
  """FacialNet's pool (3x3/2 on 5x5x512, bfloat16): same maxima, and the gradient reaches the
  same element of each window, also where several share the maximum (post-ReLU zeros, equal
  bfloat16 values)."""
  if not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  rng = np.random.default_rng(0)
  shape = (16, 5, 5, 512)
  if values == 'distinct':  # each image and channel: 0..24 in a random order (exact in bf16)
    x = np.argsort(rng.random((16, 512, 25)), axis=-1).reshape(16, 512, 5, 5).transpose(0, 2, 3, 1)
  else:
    x = rng.integers(0, 3, shape)
  x = jnp.asarray(x, jnp.bfloat16)
  dy = jnp.asarray(rng.standard_normal((16, 2, 2, 512)), jnp.bfloat16)
  onednn = jax.jit(lambda x, dy: _value_and_gradient(
      lambda v: M.max_pool(v, 3, 2, onednn=True), x, dy))
  y, dx = jax.jit(lambda x, dy: _value_and_gradient(_flax_pool, x, dy))(x, dy)
  got_y, got_dx = onednn(x, dy)
  np.testing.assert_array_equal(got_y, y)
  np.testing.assert_array_equal(got_dx, dx)
  assert 'facialnet_onednn_max_pool' in jax.jit(
      lambda x: M.max_pool(x, 3, 2, onednn=True)).lower(x).as_text()


def test_max_pool_without_onednn_is_flaxs():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 5, 4)), jnp.float32)
  for onednn in (False, True):  # a float32 input never goes to oneDNN
    np.testing.assert_array_equal(M.max_pool(x, 3, 2, onednn=onednn), _flax_pool(x))
