"""The backbone's VALID max-pool: oneDNN's for bfloat16 activations on the oneDNN path, else flax's."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facialnet_jax.training import onednn_build


def max_pool(x: jax.Array, window: int, stride: int, onednn: bool) -> jax.Array:
  """window x window / stride VALID max-pool of NHWC x. With `onednn` (and the library
  available) a bfloat16 x is pooled by oneDNN: XLA:CPU computes reduce_window max's gradient as
  a variadic reduce_window carrying indices, 10 ms at batch 128 on FacialNet's 5x5x512."""
  if onednn and x.dtype == jnp.bfloat16 and onednn_build.available():
    return max_pool_onednn(x, window, stride)
  return nn.max_pool(x, (window, window), (stride, stride), padding='VALID')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_onednn(x, window: int, stride: int):
  """Bfloat16 NHWC max-pool; the gradient goes to the element oneDNN chose in each window."""
  return _forward(x, window, stride)[0]


def _forward(x, window, stride):
  n, h, w, c = x.shape
  out = (n, (h - window) // stride + 1, (w - window) // stride + 1, c)
  # The workspace: which element of each window was the maximum, one byte per output element.
  y, where = jax.ffi.ffi_call(
      'facialnet_onednn_max_pool_forward',
      (jax.ShapeDtypeStruct(out, jnp.bfloat16), jax.ShapeDtypeStruct(out, jnp.uint8)))(
          x, window=np.int64(window), stride=np.int64(stride))
  return y, (x, where)


def _backward(window, stride, res, dy):
  x, where = res
  dx = jax.ffi.ffi_call('facialnet_onednn_max_pool_backward',
                        jax.ShapeDtypeStruct(x.shape, jnp.bfloat16))(
                            dy.astype(jnp.bfloat16), where, window=np.int64(window),
                            stride=np.int64(stride))
  return (dx,)


max_pool_onednn.defvjp(_forward, _backward)
