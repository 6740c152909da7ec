"""The training state: a pytree of arrays only, so it checkpoints, shards and donates as one."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from facialnet_jax.runtime import sharding

NO_STEP = -1


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs; the data position is derived from `step`."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  # Steps whose loss or gradients were NaN/inf: their update was not applied.
  nonfinite_steps: jax.Array
  first_nonfinite_step: jax.Array
  # The exponential moving average of `params` (config.ema.decay > 0), else None. Evaluation
  # uses it when present (steps.eval_params).
  ema_params: Any = None


def uses_ema(config) -> bool:
  """Whether the run keeps a moving average of its parameters (configs from before the
  setting existed: no)."""
  return float(config.get('ema', {}).get('decay', 0.0)) > 0


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, int, int], ema: bool = False) -> TrainState:
  """Initialises parameters and optimiser state (call under jit to build them on device); with
  `ema` the moving average starts at the initial parameters."""
  variables = model.init({'params': rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), NO_STEP, jnp.int32),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
  )


def create_train_state_on_mesh(model, tx: optax.GradientTransformation, seed: int,
                               image_shape: tuple[int, int, int], mesh,
                               ema: bool = False) -> TrainState:
  """Builds the state directly on the devices, replicated over the mesh (nothing built on the
  host and copied)."""
  init = jax.jit(lambda rng: create_train_state(model, tx, rng, image_shape, ema),
                 out_shardings=sharding.replicated(mesh))
  return init(jax.random.key(seed))
