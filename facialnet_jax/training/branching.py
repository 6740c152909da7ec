"""One of two computations by a traced predicate: a conditional on CPU, a select elsewhere."""

from typing import Callable

import jax
import jax.numpy as jnp


def choose(pred: jax.Array, if_true: Callable, if_false: Callable):
  """if_true() where `pred`, else if_false(); both return pytrees of the same structure.

  On CPU a lax.cond: only the chosen side runs, and a state it passes through unchanged is not
  copied. Elsewhere both sides run and jnp.where picks, as this project always did there: a GPU
  conditional may wait for its predicate on the host, and the sides are cheap on a GPU.
  """
  if jax.default_backend() == 'cpu':
    return jax.lax.cond(pred, if_true, if_false)
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), if_true(), if_false())
