"""Device-resident splits: shuffling, batching and many steps per dispatch, all inside compiled code."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from facialnet_jax.data import age_groups
from facialnet_jax.data.age_groups import BATCH_KEYS
from facialnet_jax.runtime import sharding
from facialnet_jax.training import branching
from facialnet_jax.training import metrics as metrics_lib

# A fixed stream id keeps the data-order key apart from the augmentation and dropout keys.
_DATA_ORDER_STREAM = 0x0DA7A


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """One split held in device memory, rows split across the `data` axis.

  The arrays may carry padding rows at the end (so they split evenly across devices);
  `num_examples` counts the real ones, and only those are ever used.
  """
  arrays: dict[str, jax.Array]
  num_examples: int


def put_split_on_devices(arrays: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> DeviceSplit:
  """Copies a host split (image, gender, age_group) into device memory once."""
  num_examples = len(arrays['image'])
  devices = mesh.shape[sharding.DATA_AXIS]
  padding = -num_examples % devices
  placed = {}
  for key in BATCH_KEYS:
    array = arrays[key]
    if padding:
      fill = 0 if key == 'image' else age_groups.UNKNOWN
      pad_rows = np.full((padding, *array.shape[1:]), fill, array.dtype)
      array = np.concatenate([array, pad_rows])
    placed[key] = sharding.global_array(array, sharding.split_on_data_axis(mesh))
  return DeviceSplit(placed, num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Every example once per epoch: the last batch is padded (and masked) rather than dropped."""
  return -(-num_examples // batch_size)


def epoch_order(seed: int, epoch: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """The epoch's shuffled example indices, padded with -1 to whole batches."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DATA_ORDER_STREAM), epoch)
  order = jax.random.permutation(key, num_examples).astype(jnp.int32)
  padding = steps_per_epoch(num_examples, batch_size) * batch_size - num_examples
  return jnp.concatenate([order, jnp.full((padding,), -1, jnp.int32)])


def take_batch(arrays: dict[str, jax.Array], indices: jax.Array,
               batch_sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """Gathers rows; an index of -1 yields a row whose labels are unknown, so it counts nowhere."""
  valid = indices >= 0
  safe = jnp.where(valid, indices, 0)
  batch = {key: jnp.take(arrays[key], safe, axis=0) for key in BATCH_KEYS}
  for key in ('gender', 'age_group'):
    batch[key] = jnp.where(valid, batch[key], age_groups.UNKNOWN)
  return jax.lax.with_sharding_constraint(batch, batch_sharding)


def dispatch_steps(requested: int) -> int:
  """Train steps per compiled call: `requested`, or when 0 (auto) 1 on CPU and 100 elsewhere.

  XLA:CPU runs convolution gradients inside a while loop ~70x slower than outside one
  (measured: 4.5 s vs 65 ms for one 3x3 conv layer's gradient at batch 25), so on CPU each
  step is its own call; accelerators gain from fewer dispatches.
  """
  if requested:
    return requested
  return 1 if jax.default_backend() == 'cpu' else 100


def make_train_loop(train_step: Callable, split: DeviceSplit, batch_size: int, seed: int,
                    mesh: jax.sharding.Mesh, steps_per_call: int) -> Callable:
  """Returns a compiled run(state, totals, order, arrays, num_steps) → (state, totals + metrics,
  order).

  The batch of step s is batch s mod E of epoch s // E (E steps per epoch) of a permutation
  drawn from (seed, epoch): any step's data follow from the step alone, so a resumed run sees
  exactly the samples an uninterrupted one would. `order` is (epoch, permutation), the last one
  drawn (start from empty_order()); a step of another epoch draws its own, so it saves work, never
  changes a batch. With steps_per_call == 1 the loop is left out and num_steps must be 1. The
  state, the metric totals and the order are donated.
  """
  num_examples = split.num_examples
  epoch_steps = steps_per_epoch(num_examples, batch_size)
  batch_sharding = sharding.split_on_data_axis(mesh)

  def one_step(state, totals, order, arrays):
    epoch, position = jnp.divmod(state.step, epoch_steps)
    # Drawn once per epoch, not at every step: the permutation's two sorts of the whole split
    # came before the first convolution of each step (~5.5 ms of a 91 ms batch-25 CPU step).
    order = branching.choose(
        order[0] == epoch, lambda: order,
        lambda: (epoch, epoch_order(seed, epoch, num_examples, batch_size)))
    indices = jax.lax.dynamic_slice(order[1], (position * batch_size,), (batch_size,))
    state, step_metrics = train_step(state, take_batch(arrays, indices, batch_sharding))
    return state, totals.merge(step_metrics), order

  def run(state, totals, order, arrays, num_steps):
    if steps_per_call == 1:
      return one_step(state, totals, order, arrays)
    return jax.lax.fori_loop(0, num_steps, lambda _, c: one_step(*c, arrays),
                             (state, totals, order))

  return jax.jit(run, donate_argnums=(0, 1, 2))


def empty_order(num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """make_train_loop's `order` before any was drawn: epoch -1, which no step has."""
  return (jnp.int32(-1),
          jnp.full((steps_per_epoch(num_examples, batch_size) * batch_size,), -1, jnp.int32))


def make_eval_loop(eval_step: Callable, split: DeviceSplit, batch_size: int,
                   mesh: jax.sharding.Mesh) -> Callable:
  """Returns a compiled run(state, arrays) → (EvalMetrics, per-example class probabilities).

  Covers every example of the split in order; the last batch is padded and its padding masked,
  so the metrics are over the whole split.
  """
  num_examples = split.num_examples
  num_batches = steps_per_epoch(num_examples, batch_size)
  batch_sharding = sharding.split_on_data_axis(mesh)

  def run(state, arrays):
    def body(batch_index, carry):
      totals, probabilities = carry
      indices = batch_index * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
      indices = jnp.where(indices < num_examples, indices, -1)
      step_metrics, batch_probabilities = eval_step(
          state, take_batch(arrays, indices, batch_sharding))
      probabilities = {
          head: jax.lax.dynamic_update_slice_in_dim(
              probabilities[head], batch_probabilities[head], batch_index * batch_size, axis=0)
          for head in probabilities}
      return totals.merge(step_metrics), probabilities

    empty_probabilities = {
        'gender': jnp.zeros((num_batches * batch_size, age_groups.NUM_GENDERS)),
        'age': jnp.zeros((num_batches * batch_size, age_groups.NUM_AGE_GROUPS))}
    totals, probabilities = jax.lax.fori_loop(
        0, num_batches, body, (metrics_lib.EvalMetrics.empty(), empty_probabilities))
    return totals, {head: p[:num_examples] for head, p in probabilities.items()}

  return jax.jit(run)


class DeviceTrainFeed:
  """The training split in device memory and the compiled loop that trains on it."""

  def __init__(self, train_step: Callable, arrays: dict[str, np.ndarray], batch_size: int,
               seed: int, mesh: jax.sharding.Mesh, steps_per_call: int):
    self.split = put_split_on_devices(arrays, mesh)
    self._steps_per_call = steps_per_call
    self._loop = make_train_loop(train_step, self.split, batch_size, seed, mesh, steps_per_call)
    replicated = sharding.replicated(mesh)
    self._empty_totals = jax.jit(metrics_lib.TrainMetrics.empty, out_shardings=replicated)
    self._order = jax.jit(lambda: empty_order(self.split.num_examples, batch_size),
                          out_shardings=replicated)()
    self._count = lambda n: jax.device_put(np.int32(n), replicated)

  def run(self, state, num_steps: int):
    """Runs `num_steps` steps, `steps_per_call` per dispatch; returns (state, TrainMetrics).

    The step count is an argument of the compiled loop, so any count uses one compilation.
    """
    totals = self._empty_totals()
    done = 0
    while done < num_steps:
      count = min(self._steps_per_call, num_steps - done)
      state, totals, self._order = self._loop(state, totals, self._order, self.split.arrays,
                                              self._count(count))
      done += count
    return state, totals


class DeviceEvaluator:
  """A split in device memory and the compiled loop that evaluates every example of it."""

  def __init__(self, eval_step: Callable, arrays: dict[str, np.ndarray], batch_size: int,
               mesh: jax.sharding.Mesh):
    self.split = put_split_on_devices(arrays, mesh)
    self._loop = make_eval_loop(eval_step, self.split, batch_size, mesh)

  def __call__(self, state):
    """(EvalMetrics, {'gender': (N, 2), 'age': (N, 8)} probabilities), still on device."""
    return self._loop(state, self.split.arrays)
