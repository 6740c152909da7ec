"""Data parallelism with explicit sharding: one `data` mesh axis over every device of every process."""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from facialnet_jax.runtime.errors import UserError

DATA_AXIS = 'data'


def create_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices (all processes' under jax.distributed); axes stay automatic."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Parameters and optimiser state: one full copy per device."""
  return NamedSharding(mesh, PartitionSpec())


def split_on_data_axis(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches and device-resident data sets: the leading axis split across devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(batch_size: int, mesh: jax.sharding.Mesh, name: str) -> None:
  """Batches must split evenly across the devices of the `data` axis."""
  devices = mesh.shape[DATA_AXIS]
  if batch_size % devices:
    lower = max(devices, batch_size - batch_size % devices)
    raise UserError(
        f'{name}={batch_size} does not split across the {devices} devices of this run; '
        f'use a multiple of {devices} (for example --{name}={lower}).')


def global_array(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array (the same on every process) with `sharding`; each process copies
  only the shards its own devices hold."""
  return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])
