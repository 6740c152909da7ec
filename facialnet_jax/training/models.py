"""FacialNet (Liu et al.): a shared convolutional backbone and separate gender and age heads, in Flax linen."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from facialnet_jax.data import age_groups
from facialnet_jax.training import conv, max_pool

# The paper's layer table: (name, features, kernel, stride, padding). ReLU follows every conv.
BACKBONE_LAYERS = (
    ('conv1', 32, 3, 2, 1),
    ('conv2', 64, 3, 1, 1),
    ('conv3', 128, 3, 2, 1),
    ('conv4', 128, 3, 1, 1),
    ('conv5', 128, 1, 1, 0),
    ('conv6', 256, 3, 2, 0),
    ('conv7', 512, 3, 2, 1),
    ('conv8', 512, 1, 1, 0),
)

# He (Kaiming) normal, fan-in: with it the network learns in the first epoch, while small
# PyTorch-style inits leave it at chance for epochs (see STACK_NOTES).
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def _conv_layer(implementation: str, features: int, kernel: int, stride: int, padding: int,
                dtype: Any, name: str, relu: bool = False) -> nn.Module:
  """One conv layer (with ReLU when `relu`, 'onednn' only); every implementation stores the
  same `kernel` (HWIO) and `bias` params."""
  implementation = conv.resolve(implementation)
  if implementation == 'xla':
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), dtype=dtype,
                   kernel_init=he_normal, name=name)
  return conv.Conv2D(features=features, kernel_size=kernel, stride=stride, padding=padding,
                     implementation=implementation, dtype=dtype, kernel_init=he_normal,
                     relu=relu, name=name)


class Backbone(nn.Module):
  """conv1…conv8 with ReLU, then one 3×3/2 max-pool: 75×75×C → 2×2×512 → 2048 features."""
  dtype: Any = jnp.float32
  batch_norm: bool = False
  conv_implementation: str = 'auto'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    x = images.astype(self.dtype)
    # With oneDNN and no BatchNorm, convolution, bias and ReLU are one oneDNN call, and the
    # activations between layers bfloat16.
    fused_relu = conv.resolve(self.conv_implementation) == 'onednn' and not self.batch_norm
    for name, features, kernel, stride, padding in BACKBONE_LAYERS:
      x = _conv_layer(self.conv_implementation, features, kernel, stride, padding,
                      self.dtype, name, relu=fused_relu)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                         name=f'{name}_bn')(x)
      if not fused_relu:
        x = nn.relu(x)
    x = max_pool.max_pool(x, window=3, stride=2, onednn=fused_relu)
    return x.reshape((x.shape[0], -1)).astype(self.dtype)


class Head(nn.Module):
  """Dense layers with ReLU and dropout, then class logits (float32 whatever the compute dtype)."""
  num_classes: int
  hidden_features: Sequence[int] = (512, 64)
  dropout_rates: Sequence[float] = (0.5, 0.3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, train: bool) -> jax.Array:
    x = features
    for width, rate in zip(self.hidden_features, self.dropout_rates, strict=True):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=he_normal)(x))
      x = nn.Dropout(rate, deterministic=not train)(x)
    # A zero classifier starts every head at exactly chance (uniform predictions) instead of
    # at a loss several times higher; the layers below still get gradients from step one.
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros)(x)
    return logits.astype(jnp.float32)


class FacialNet(nn.Module):
  """Backbone shared by a gender head (dropout 0.5/0.3) and an age-group head (dropout 0.4/0.2)."""
  dtype: Any = jnp.float32
  batch_norm: bool = False
  conv_implementation: str = 'auto'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    features = Backbone(self.dtype, self.batch_norm, self.conv_implementation,
                        name='backbone')(images, train)
    return {
        'gender': Head(age_groups.NUM_GENDERS, dropout_rates=(0.5, 0.3), dtype=self.dtype,
                       name='gender_head')(features, train),
        'age': Head(age_groups.NUM_AGE_GROUPS, dropout_rates=(0.4, 0.2), dtype=self.dtype,
                    name='age_head')(features, train),
    }


def create_model(model_config) -> FacialNet:
  """Builds FacialNet from the `config.model` section."""
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise ValueError(f'config.model.dtype={model_config.dtype!r} is not supported; '
                     f'use one of {sorted(dtypes)}.')
  return FacialNet(dtype=dtypes[model_config.dtype], batch_norm=model_config.batch_norm,
                   conv_implementation=model_config.conv_implementation)
