"""Every Conv2D implementation computes the same function as lax.conv ('xla').

Checked for every convolution shape of FacialNet (small batch): forward output
and the gradients with respect to the input, the kernel and the bias.
"""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialnet_jax.runtime import cpu_env
from facialnet_jax.training import conv as C
from facialnet_jax.training import onednn_build

# (name, input spatial size, in channels, out channels, kernel, stride, padding)
FACIALNET_CONVS = [
    ('conv1', 75, 1, 32, 3, 2, 1),
    ('conv2', 38, 32, 64, 3, 1, 1),
    ('conv3', 38, 64, 128, 3, 2, 1),
    ('conv4', 19, 128, 128, 3, 1, 1),
    ('conv5', 19, 128, 128, 1, 1, 0),
    ('conv6', 19, 128, 256, 3, 2, 0),
    ('conv7', 9, 256, 512, 3, 2, 1),
    ('conv8', 5, 512, 512, 1, 1, 0),
]
BATCH = 2


def _inputs():
  # numpy RNG: building the inputs must not compile anything.
  rng = np.random.default_rng(0)
  out = []
  for name, h, cin, cout, k, s, p in FACIALNET_CONVS:
    x = rng.standard_normal((BATCH, h, h, cin), np.float32)
    params = {
        'kernel': rng.standard_normal((k, k, cin, cout), np.float32) * np.sqrt(2.0 / (k * k * cin)),
        # Non-zero bias so that the bias path is exercised too.
        'bias': 0.1 * rng.standard_normal((cout,), np.float32),
    }
    ho = C.out_size(h, k, s, p)
    cot = rng.standard_normal((BATCH, ho, ho, cout), np.float32)
    out.append((x, params, cot))
  return out


def _all_layers(impl, relu=False):
  """Jitted: for every layer, (y, dx, dkernel, dbias) of <y, cotangent>."""
  mods = [C.Conv2D(f, k, s, p, implementation=impl, relu=relu)
          for _, _, _, f, k, s, p in FACIALNET_CONVS]

  @jax.jit
  def run(inputs):
    res = []
    for mod, (x, params, cot) in zip(mods, inputs):
      def f(x, params):
        y = mod.apply({'params': params}, x)
        return jnp.vdot(y, cot), y
      (_, y), (dx, dp) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, params)
      res.append((y, dx, dp['kernel'], dp['bias']))
    return res
  return run


@pytest.fixture(scope='module')
def inputs():
  return _inputs()


@pytest.fixture(scope='module')
def reference(inputs):
  return _all_layers('xla')(inputs)


# 'onednn' computes in bfloat16: checked within bfloat16's precision below; 'auto' is one of
# the two ('auto' tests below).
@pytest.mark.parametrize('impl', [i for i in C.IMPLEMENTATIONS
                                  if i not in ('xla', 'onednn', 'auto')])
def test_matches_xla(impl, inputs, reference):
  got = _all_layers(impl)(inputs)
  for (name, *_), want_l, got_l in zip(FACIALNET_CONVS, reference, got):
    for what, want, g in zip(('y', 'dx', 'dkernel', 'dbias'), want_l, got_l):
      assert g.shape == want.shape, (name, what)
      scale = float(jnp.max(jnp.abs(want)))
      err = float(jnp.max(jnp.abs(g - want)))
      assert err <= 1e-5 * scale + 1e-6, f'{impl} {name} {what}: max err {err} (scale {scale})'


def _assert_close_in_bfloat16(label, reference, got, y_dtype=None):
  for (name, *_), want_l, got_l in zip(FACIALNET_CONVS, reference, got):
    for what, want, g in zip(('y', 'dx', 'dkernel', 'dbias'), want_l, got_l):
      dtype = y_dtype if what == 'y' and y_dtype else want.dtype
      assert g.shape == want.shape and g.dtype == dtype, (name, what, g.dtype)
      # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%); summed over
      # hundreds of products with float32 accumulation the error stays near that.
      rel = float(jnp.linalg.norm(g.astype(jnp.float32) - want) / jnp.linalg.norm(want))
      assert rel < 1e-2, f'{label} {name} {what}: relative error {rel:.2e}'


def test_onednn_matches_xla_in_bfloat16(inputs, reference):
  if not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  _assert_close_in_bfloat16('onednn', reference, _all_layers('onednn')(inputs))


def test_onednn_with_bias_and_relu_fused_matches_xla_in_bfloat16(inputs, reference):
  """FacialNet's layers with oneDNN: bias and ReLU inside the convolution call, bfloat16 out;
  the gradients (through ReLU's mask) still reach x, the kernel and the bias."""
  if not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  # Where the pre-activation is within bfloat16 rounding of zero, the two may fall on different
  # sides of ReLU; the cotangent is zero there so that the gradients compare the rest.
  inputs = [(x, params, np.where(np.abs(y) > 0.01 * np.abs(y).max(), cot, 0).astype(np.float32))
            for (x, params, cot), (y, *_) in zip(inputs, reference)]
  reference = _all_layers('xla', relu=True)(inputs)
  got = _all_layers('onednn', relu=True)(inputs)
  _assert_close_in_bfloat16('onednn+relu', reference, got, y_dtype=jnp.bfloat16)
  for want_l in reference:  # ReLU cut some of each layer's outputs and gradients
    assert 0 < float(jnp.mean(want_l[0] > 0)) < 1


# Strided shapes (input size, in, out channels, kernel, stride, padding): FacialNet's conv3, conv6
# and conv7, one whose last input row no window reaches (cropped), and one so small that a
# phase has a single input row.
STRIDED_KERNEL_GRADS = [(38, 64, 128, 3, 2, 1), (19, 128, 256, 3, 2, 0), (9, 256, 512, 3, 2, 1),
                        (20, 16, 32, 3, 2, 0), (3, 16, 32, 3, 2, 1)]
# FacialNet's conv1 (one input channel: `_onednn_kernel_grad` takes the direct route for it).
CONV1 = (75, 1, 32, 3, 2, 1)


@pytest.mark.parametrize('route, h, cin, cout, k, s, p', [
    *((route, *shape) for route in ('phases', 'as_forward', 'direct')
      for shape in STRIDED_KERNEL_GRADS),
    ('direct', *CONV1)])
def test_onednn_strided_kernel_gradient_routes_match_xla(route, h, cin, cout, k, s, p):
  """Every way of computing a strided kernel gradient (`_onednn_kernel_grad` picks one per
  shape) gives lax.conv's, from the same bfloat16 operands with float32 accumulation, and the
  bias gradient, dy summed per channel."""
  if not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  rng = np.random.default_rng(1)
  o = C.out_size(h, k, s, p)
  xb = jnp.asarray(rng.standard_normal((3, h, h, cin)), jnp.bfloat16)
  dyb = jnp.asarray(rng.standard_normal((3, o, o, cout)), jnp.bfloat16)
  _, vjp = jax.vjp(lambda w: C.conv_xla(xb.astype(jnp.float32), w, s, p),
                   jnp.zeros((k, k, cin, cout), jnp.float32))
  want = vjp(dyb.astype(jnp.float32))[0]
  fn = getattr(C, f'_onednn_kernel_grad_{route}')
  got, got_bias = jax.jit(fn, static_argnums=(2, 3, 4))(xb, dyb, (k, k, cin, cout), s, p)
  assert got.shape == want.shape and got.dtype == jnp.float32
  # Same bfloat16 products, float32 sums in another order: rounding-level differences only.
  rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert rel < 1e-5, f'{route} {(h, cin, cout, k, s, p)}: relative error {rel:.2e}'
  want_bias = jnp.sum(dyb.astype(jnp.float32), axis=(0, 1, 2))
  assert got_bias.shape == (cout,) and got_bias.dtype == jnp.float32
  np.testing.assert_allclose(got_bias, want_bias, rtol=1e-5, atol=1e-4)


@pytest.fixture
def onednn_missing(monkeypatch):
  """oneDNN made unfindable for one test; the caches that remember the answer are reset."""
  def missing():
    raise onednn_build.Unavailable('oneDNN 3.x not found (test)')
  monkeypatch.setattr(onednn_build, 'find_onednn', missing)
  monkeypatch.setattr(onednn_build, '_registered', [])
  caches = (onednn_build.available, onednn_build.unavailable_reason)
  for cache in caches:
    cache.cache_clear()
  yield
  for cache in caches:
    cache.cache_clear()


@pytest.mark.parametrize('requested, level', [('onednn', logging.WARNING), ('auto', logging.INFO)])
def test_onednn_falls_back_to_xla_with_one_log_line(onednn_missing, caplog, inputs, reference,
                                                    requested, level):
  with caplog.at_level(logging.INFO):
    got = _all_layers(requested)(inputs)
    _all_layers(requested)(inputs)
  lines = [(r.levelno, r.getMessage()) for r in caplog.records if 'onednn' in r.getMessage().lower()]
  assert lines == [(level, f"conv_implementation='{requested}': oneDNN's bfloat16 convolutions "
                           "are unavailable (oneDNN 3.x not found (test)); using 'xla' "
                           "convolutions.")]
  for want_l, got_l in zip(reference, got):
    for want, g in zip(want_l, got_l):
      np.testing.assert_array_equal(g, want)


def test_auto_is_onednn_on_one_cpu_device_with_bf16_instructions():
  if not onednn_build.available():
    pytest.skip('oneDNN convolutions unavailable here (the warning says why)')
  assert jax.device_count() == 1
  assert C.resolve('auto') == 'onednn'
  for named in ('xla', 'fast', 'patches', 'onednn'):
    assert C.resolve(named) == named


def test_auto_leaves_gpus_and_several_devices_on_xla_without_a_word(monkeypatch, caplog):
  with caplog.at_level(logging.INFO):
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert C.resolve('auto') == 'xla'
    monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
    monkeypatch.setattr(jax, 'device_count', lambda: 2)
    assert C.resolve('auto') == 'xla'
  assert not caplog.records


def test_xla_matches_flax_conv(inputs):
  """Same parameter tree and same function as flax.linen.Conv with explicit padding."""
  pairs = [(nn.Conv(cout, (k, k), (s, s), padding=((p, p), (p, p))), C.Conv2D(cout, k, s, p))
           for _, _, _, cout, k, s, p in FACIALNET_CONVS]
  for (name, *_), (ref_mod, mod), (x, params, _) in zip(FACIALNET_CONVS, pairs, inputs):
    ref_shapes = jax.eval_shape(ref_mod.init, jax.random.PRNGKey(1), x)['params']
    shapes = jax.eval_shape(mod.init, jax.random.PRNGKey(1), x)['params']
    assert jax.tree_util.tree_structure(ref_shapes) == jax.tree_util.tree_structure(shapes)
    for key in ('kernel', 'bias'):
      assert ref_shapes[key].shape == shapes[key].shape == params[key].shape, (name, key)

  @jax.jit
  def both(inputs):
    return [(r.apply({'params': prm}, x), m.apply({'params': prm}, x))
            for (r, m), (x, prm, _) in zip(pairs, inputs)]

  for (name, *_), (want, got) in zip(FACIALNET_CONVS, both(inputs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))),
                               err_msg=name)


def test_output_sizes_match_the_paper():
  sizes = [75]
  for _, h, _, _, k, s, p in FACIALNET_CONVS:
    assert h == sizes[-1]
    sizes.append(C.out_size(h, k, s, p))
  assert sizes == [75, 38, 38, 19, 19, 19, 9, 5, 5]


def test_unknown_implementation():
  with pytest.raises(ValueError):
    jax.eval_shape(C.Conv2D(4, 3, 1, 1, implementation='nope').init, jax.random.PRNGKey(0),
                   jnp.ones((1, 5, 5, 1)))


def test_he_normal_default_init():
  x = jnp.ones((1, 9, 9, 128))
  kernel = jax.jit(C.Conv2D(256, 3, 1, 1).init)(jax.random.PRNGKey(0), x)['params']['kernel']
  std = float(jnp.std(kernel))
  # He fan-in: std = sqrt(2 / (3*3*128)) = 0.0417 (truncated normal keeps the variance).
  assert abs(std - (2.0 / (9 * 128)) ** 0.5) < 0.003


def test_cpu_env_overrides():
  assert cpu_env.cpu_env_overrides({}) == {'XLA_FLAGS': cpu_env.CPU_XLA_FLAGS,
                                           'GLIBC_TUNABLES': cpu_env.CPU_GLIBC_TUNABLES}
  got = cpu_env.cpu_env_overrides({'XLA_FLAGS': '--xla_dump_to=/tmp/x', 'GLIBC_TUNABLES': 'mine'})
  assert got == {'XLA_FLAGS': f'--xla_dump_to=/tmp/x {cpu_env.CPU_XLA_FLAGS}'}
  assert cpu_env.cpu_env_overrides({'XLA_FLAGS': cpu_env.CPU_XLA_FLAGS,
                                    'GLIBC_TUNABLES': 'x'}) == {}
  assert 'GLIBC_TUNABLES' not in cpu_env.cpu_env_overrides({}, with_malloc=False)


def test_a_failed_build_names_the_compiler_error(monkeypatch, tmp_path):
  """The one line that says why oneDNN is unavailable quotes the compiler's error, not the
  caret line g++ ends its report with."""
  compiler = tmp_path / 'failing-g++'
  compiler.write_text('#!/bin/sh\necho "onednn_conv.cc:12:3: error: expected \';\'" >&2\n'
                      'echo "   12 |   int x" >&2\necho "      |        ^" >&2\nexit 1\n')
  compiler.chmod(0o755)
  monkeypatch.setenv('CXX', str(compiler))
  monkeypatch.setenv(onednn_build.CACHE_VARIABLE, str(tmp_path / 'cache'))
  dnnl = onednn_build.OneDNN(str(tmp_path), str(tmp_path), '3.2')
  with pytest.raises(onednn_build.Unavailable, match="onednn_conv.cc:12:3: error: expected ';'$"):
    onednn_build.build(dnnl)
  assert not list((tmp_path / 'cache').iterdir())  # no half-built library left for later runs
