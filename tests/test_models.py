"""FacialNet's architecture: the paper's parameter count, shapes, dtypes and the optional variants."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from facialnet_jax.training import models

PAPER_PARAMETER_COUNT = 4_159_242


def _init(model, batch=2, channels=1):
  # Compiled: op-by-op initialisation of a conv net takes many seconds on a CPU.
  return jax.jit(model.init, static_argnames='train')(
      jax.random.key(0), jnp.zeros((batch, 75, 75, channels)), train=False)


def test_parameter_count_matches_the_paper():
  variables = _init(models.FacialNet())
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == PAPER_PARAMETER_COUNT


def test_backbone_gives_2x2x512_features_and_heads_give_logits():
  model = models.FacialNet()
  variables = _init(model)
  features = models.Backbone().apply({'params': variables['params']['backbone']},
                                     jnp.zeros((3, 75, 75, 1)), train=False)
  assert features.shape == (3, 2 * 2 * 512)
  logits = model.apply(variables, jnp.ones((3, 75, 75, 1)), train=False)
  assert logits['gender'].shape == (3, 2)
  assert logits['age'].shape == (3, 8)


def test_layers_use_the_papers_explicit_padding():
  """SAME padding would pad the stride-2 convs (0, 1); the paper pads (1, 1) or nothing."""
  model = models.FacialNet()
  variables = _init(model)
  _, intermediates = models.Backbone().apply(
      {'params': variables['params']['backbone']}, jnp.zeros((1, 75, 75, 1)), train=False,
      capture_intermediates=True)
  sizes = {name: value['__call__'][0].shape[1]
           for name, value in intermediates['intermediates'].items() if name.startswith('conv')}
  assert sizes == {'conv1': 38, 'conv2': 38, 'conv3': 19, 'conv4': 19, 'conv5': 19,
                   'conv6': 9, 'conv7': 5, 'conv8': 5}


def test_dropout_is_active_only_in_training():
  model = models.FacialNet()
  variables = _init(model)
  # The classifiers start at zero (every logit 0); give them weights so dropout shows.
  head = variables['params']['age_head']['Dense_2']
  head['kernel'] = jax.random.normal(jax.random.key(4), head['kernel'].shape)
  images = jax.random.uniform(jax.random.key(1), (4, 75, 75, 1))
  eval_a = model.apply(variables, images, train=False)
  eval_b = model.apply(variables, images, train=False)
  train_a = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  train_b = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(3)})
  assert jnp.array_equal(eval_a['age'], eval_b['age'])
  assert not jnp.allclose(train_a['age'], train_b['age'])


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_logits_are_float32_whatever_the_compute_dtype(dtype):
  config = ml_collections.ConfigDict({'dtype': dtype, 'batch_norm': False,
                                      'conv_implementation': 'xla'})
  model = models.create_model(config)
  variables = _init(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  logits = model.apply(variables, jnp.ones((2, 75, 75, 1)), train=False)
  assert logits['gender'].dtype == jnp.float32


def test_batch_norm_variant_keeps_running_statistics():
  model = models.FacialNet(batch_norm=True)
  variables = _init(model)
  assert 'batch_stats' in variables
  _, updates = model.apply(variables, jnp.ones((2, 75, 75, 1)), train=True,
                           rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
  assert 'conv1_bn' in updates['batch_stats']['backbone']


def test_unknown_dtype_is_a_clear_error():
  config = ml_collections.ConfigDict({'dtype': 'float16', 'batch_norm': False,
                                      'conv_implementation': 'xla'})
  with pytest.raises(ValueError, match='config.model.dtype'):
    models.create_model(config)
