"""2-D convolution layer with interchangeable CPU/GPU implementations.

`Conv2D` has the same parameters as `flax.linen.Conv` (``kernel`` in HWIO layout,
shape ``(k, k, in, features)``, and ``bias`` of shape ``(features,)``), so a
checkpoint trained with one implementation loads into any other.

Implementations (all compute the same function; see ``tests/test_conv.py``):

``'xla'``
    ``lax.conv_general_dilated`` with explicit symmetric padding. On GPU this is
    the right choice. On CPU it is the fastest float32 one *provided* the process was
    started with ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
    (``facialnet_jax.runtime.cpu_env`` sets it; see ``benchmarks/conv_speed.py``): without that
    flag jaxlib 0.10 sends every convolution to YNNPACK, whose weight-gradient convolutions are
    3-6x slower than XLA's own (Eigen) convolutions.

``'fast'``
    Same as ``'xla'`` for k>1 convolutions; 1x1 stride-1 convolutions become
    plain matrix products with a hand-written backward pass whose weight
    gradient is ``dy^T @ x`` (no transposed activations). Slightly faster than
    ``'xla'`` for the two 1x1 layers of FacialNet; the difference is within the
    noise of a whole training step.

``'patches'``
    im2col: every k>1 convolution is one matrix product over the k*k shifted
    (strided) slices concatenated on the channel axis, with a custom VJP whose
    input gradient is a col2im (sum of shifted/padded slices) and whose weight
    gradient is one matrix product. Kept as a reference point: on the 2-core
    CPU it is slower than ``'xla'`` with the flag above (building the patches
    costs more than it saves).

``'onednn'``
    CPU only: oneDNN's bfloat16 convolutions (AVX512-BF16 instructions, float32
    accumulation) called through XLA's FFI with a custom VJP; activations and
    kernels are rounded to bfloat16 inside the layer, the kernel gradient comes
    back in float32 (with the bias gradient from the same pass over dy). XLA:CPU's own
    convolutions never use the bf16 instructions. Stride-2 kernel gradients are computed as
    four stride-1 ones, or for small outputs as one forward convolution (see
    `_onednn_kernel_grad`), measured faster than oneDNN 3.2's strided kernel-gradient code at
    batch 128 and up; that code takes a layer with one input channel (FacialNet's conv1).
    With ``relu=True`` (FacialNet without BatchNorm) the bias and ReLU run inside the forward
    convolution (`conv_bias_relu_onednn`) and the layer returns bfloat16.
    The library is compiled on first use (``facialnet_jax/training/onednn_build.py``, needs
    oneDNN 3.x, a dependency on Linux x86-64, and a C++ compiler); where that is impossible
    (no compiler or oneDNN, no AVX512-BF16, not a CPU backend) the layer logs one line and
    computes 'xla'.

``'auto'`` (the default)
    'onednn' where it wins, 'xla' everywhere else (`resolve`). It wins on a
    single CPU device whose processor has AVX512-BF16: there the whole training
    step runs ~2x faster for a float32 model and ~1.5x for a bfloat16 one (README
    "bfloat16 convolutions through oneDNN"). On a GPU it is 'xla' with nothing
    logged, so the GPU path is unchanged; several devices stay on 'xla' (XLA
    would gather the batch onto each device around every FFI call); a CPU where
    oneDNN cannot run logs one info line.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from facialnet_jax.training import onednn_build

IMPLEMENTATIONS = ('auto', 'xla', 'fast', 'patches', 'onednn')


def resolve(implementation: str) -> str:
  """The implementation a layer runs: 'auto' becomes 'onednn' or 'xla'; the others stay."""
  if implementation != 'auto':
    return implementation
  if jax.default_backend() != 'cpu' or jax.device_count() != 1:
    return 'xla'
  if not onednn_build.available('auto'):
    return 'xla'
  _say_auto_chose_onednn()
  return 'onednn'


@functools.cache
def _say_auto_chose_onednn() -> None:
  logging.info("conv_implementation='auto': oneDNN's bfloat16 convolutions (this CPU has "
               'AVX512-BF16).')


def out_size(n: int, k: int, s: int, p: int) -> int:
  """Spatial output size of a k x k / stride s convolution with padding p."""
  return (n + 2 * p - k) // s + 1


def conv_xla(x, w, stride: int, padding: int):
  return lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# --------------------------------------------------------------------------
# 1x1 convolutions as matrix products.


@jax.custom_vjp
def conv1x1(x, w):
  """1x1 / stride 1 / no padding convolution, x NHWC, w (1,1,in,out)."""
  return jnp.dot(x, w[0, 0])


def _conv1x1_fwd(x, w):
  return jnp.dot(x, w[0, 0]), (x, w)


def _conv1x1_bwd(res, dy):
  x, w = res
  cin, cout = w.shape[2], w.shape[3]
  dx = lax.dot_general(dy, w[0, 0], (((3,), (1,)), ((), ())))
  # dW^T = dy^T @ x (contracting the N*H*W rows); its (out, in) result is tiny
  # to transpose, unlike the activations.
  dwt = lax.dot_general(dy.reshape(-1, cout), x.reshape(-1, cin), (((0,), (0,)), ((), ())))
  return dx, dwt.T.reshape(w.shape)


conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


# --------------------------------------------------------------------------
# im2col ("patches") convolution with a matrix-product backward pass.


def im2col(x, k: int, s: int, p: int):
  """(N,H,W,C) -> (N,Ho,Wo,k*k*C); channel order (i, j, c) matches HWIO."""
  n, h, w, c = x.shape
  ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
  cols = [
      lax.slice(xp, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                (1, s, s, 1))
      for i in range(k) for j in range(k)
  ]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def col2im(dcols, x_shape, k: int, s: int, p: int):
  """Adjoint of `im2col`: a sum of k*k shifted (interior-padded) slices."""
  _, h, w, c = x_shape
  _, ho, wo, _ = dcols.shape
  zero = jnp.zeros((), dcols.dtype)
  dx = None
  for idx in range(k * k):
    i, j = divmod(idx, k)
    blk = dcols[..., idx * c:(idx + 1) * c]
    lo_h, lo_w = i - p, j - p
    hi_h = h - (lo_h + s * (ho - 1) + 1)
    hi_w = w - (lo_w + s * (wo - 1) + 1)
    t = lax.pad(blk, zero, ((0, 0, 0), (lo_h, hi_h, s - 1), (lo_w, hi_w, s - 1), (0, 0, 0)))
    dx = t if dx is None else dx + t
  return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_patches(x, w, k: int, s: int, p: int):
  return _patches_fwd(x, w, k, s, p)[0]


def _patches_fwd(x, w, k, s, p):
  cols = im2col(x, k, s, p)
  return jnp.dot(cols, w.reshape(-1, w.shape[-1])), (x, w)


def _patches_bwd(k, s, p, res, dy):
  x, w = res
  cols = im2col(x, k, s, p)  # recomputed: cheaper than keeping it alive
  kk, cout = cols.shape[-1], w.shape[-1]
  dwt = lax.dot_general(dy.reshape(-1, cout), cols.reshape(-1, kk), (((0,), (0,)), ((), ())))
  dcols = lax.dot_general(dy, w.reshape(kk, cout), (((3,), (1,)), ((), ())))
  return col2im(dcols, x.shape, k, s, p), dwt.T.reshape(w.shape)


conv_patches.defvjp(_patches_fwd, _patches_bwd)


# --------------------------------------------------------------------------
# oneDNN bfloat16 convolutions through XLA's FFI (facialnet_jax/training/csrc/onednn_conv.cc).


def _onednn_call(target: str, result, *args, stride: int, padding: int):
  return jax.ffi.ffi_call(target, result)(*args, stride=np.int64(stride),
                                          padding=np.int64(padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_onednn(x, w, stride: int, padding: int):
  """x NHWC (any float dtype, result in it), w HWIO (float32 params: its gradient stays so)."""
  return _onednn_fwd(x, w, stride, padding)[0]


def _onednn_out(x, w, stride, padding):
  n, h, wd, _ = x.shape
  k, cout = w.shape[0], w.shape[3]
  shape = (n, out_size(h, k, stride, padding), out_size(wd, k, stride, padding), cout)
  return jax.ShapeDtypeStruct(shape, jnp.bfloat16)


def _onednn_fwd(x, w, stride, padding):
  xb = x.astype(jnp.bfloat16)
  y = _onednn_call('facialnet_onednn_conv_forward', _onednn_out(x, w, stride, padding), xb,
                   w.astype(jnp.bfloat16), stride=stride, padding=padding)
  # The kernel is kept in its own dtype (small) so that the bwd rule knows it.
  return y.astype(x.dtype), (xb, w)


def _onednn_grads(xb, w, dyb, stride, padding):
  """bfloat16 input gradient, float32 kernel gradient (w's dtype) and float32 bias gradient
  (dy summed per channel) from a bfloat16 dy."""
  dx = _onednn_call('facialnet_onednn_conv_backward_data',
                    jax.ShapeDtypeStruct(xb.shape, jnp.bfloat16), dyb, w.astype(jnp.bfloat16),
                    stride=stride, padding=padding)
  dw, db = _onednn_kernel_grad(xb, dyb, w.shape, stride, padding)
  return dx, dw.astype(w.dtype), db


def _onednn_bwd(stride, padding, res, dy):
  xb, w = res
  # Without the fused bias (BatchNorm configs) XLA adds the bias and differentiates it itself:
  # the bias gradient that oneDNN's kernel-gradient pass computes anyway is dropped.
  dx, dw, _ = _onednn_grads(xb, w, dy.astype(jnp.bfloat16), stride, padding)
  return dx.astype(dy.dtype), dw


conv_onednn.defvjp(_onednn_fwd, _onednn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv_bias_relu_onednn(xb, w, b, stride: int, padding: int):
  """relu(conv(xb, w) + b) in one oneDNN call: xb bfloat16 NHWC, w HWIO and b float32 (their
  gradients stay so); the result is bfloat16, the precision the next convolution reads. Unfused,
  XLA adds the bias and applies ReLU in float32 between the convolutions, forward and backward;
  fused, the activations between layers stay bfloat16 (3-4% faster whole step;
  benchmarks/onednn_history.md)."""
  return _bias_relu_fwd(xb, w, b, stride, padding)[0]


def _bias_relu_fwd(xb, w, b, stride, padding):
  y = _onednn_call('facialnet_onednn_conv_bias_relu_forward', _onednn_out(xb, w, stride, padding),
                   xb, w.astype(jnp.bfloat16), b.astype(jnp.float32), stride=stride,
                   padding=padding)
  return y, (xb, w, y)


def _bias_relu_bwd(stride, padding, res, dy):
  xb, w, y = res
  # where(y > 0, dy, 0) in oneDNN: XLA:CPU widened it to float32 and rounded back (3% of a step).
  dyb = jax.ffi.ffi_call('facialnet_onednn_relu_backward',
                         jax.ShapeDtypeStruct(y.shape, jnp.bfloat16))(dy.astype(jnp.bfloat16), y)
  return _onednn_grads(xb, w, dyb, stride, padding)


conv_bias_relu_onednn.defvjp(_bias_relu_fwd, _bias_relu_bwd)


def _onednn_kernel_grad_as_forward(xb, dyb, w_shape, stride, padding):
  """Float32 kernel gradient computed by oneDNN as a forward convolution (see onednn_conv.cc),
  and the bias gradient (a sum over dy in XLA: this route has no pass over dy to share)."""
  db = jnp.sum(dyb.astype(jnp.float32), axis=(0, 1, 2))
  k = w_shape[0]
  _, h, wd, _ = xb.shape
  _, oh, ow, _ = dyb.shape
  # Rows and columns that no window reaches are cropped: the right padding must not be negative.
  crop_h = min(0, k + (oh - 1) * stride - h - padding)
  crop_w = min(0, k + (ow - 1) * stride - wd - padding)
  if crop_h or crop_w:
    xb = xb[:, :h + crop_h, :wd + crop_w]
  dw = _onednn_call('facialnet_onednn_conv_backward_weights_as_forward',
                    jax.ShapeDtypeStruct(w_shape, jnp.float32), xb, dyb, stride=stride,
                    padding=padding)
  return dw, db


def _onednn_kernel_grad(xb, dyb, w_shape, stride, padding):
  """Float32 kernel and bias gradients, by the route measured fastest for the shape. A strided
  layer with a small output (FacialNet's conv7: 5x5 from 9x9) is one forward convolution; other
  strided layers are s*s stride-1 kernel gradients (`_onednn_kernel_grad_phases`). Alone,
  against oneDNN's strided kernel-gradient code (reading NHWC): batch 128, conv7 14.2 vs
  16.9-19.4 ms, conv3 (19x19 output) 10.8-12.0 vs 11.8-13.4, conv6 about even (11.5-12.1 vs
  11.3-12.9); batch 250, conv7 26.7 vs 36.4, conv3 25.3 vs 30.2. At batch 25 oneDNN's own was
  the faster one alone (conv3 1.84 vs 2.01 ms, conv7 2.73 vs 3.23), but the whole step measured
  the same either way (benchmarks/onednn_history.md). Stride 1, and a strided layer with too
  few input channels for the phases' bf16 blocks (FacialNet's conv1 has one), take oneDNN's own
  kernel gradient: for conv1 about 1 ms at batch 128, against 3.3-4 ms in XLA's float32 code
  (12 ms as phases)."""
  if stride == 1 or w_shape[2] < 16:
    return _onednn_kernel_grad_direct(xb, dyb, w_shape, stride, padding)
  if dyb.shape[1] * dyb.shape[2] <= 25:
    return _onednn_kernel_grad_as_forward(xb, dyb, w_shape, stride, padding)
  return _onednn_kernel_grad_phases(xb, dyb, w_shape, stride, padding)


def _kernel_and_bias(w_shape):
  """The FFI results of a kernel-gradient call: float32 HWIO kernel and per-channel bias."""
  return (jax.ShapeDtypeStruct(w_shape, jnp.float32),
          jax.ShapeDtypeStruct(w_shape[3:], jnp.float32))


def _onednn_kernel_grad_direct(xb, dyb, w_shape, stride, padding):
  """Float32 kernel and bias gradients by oneDNN's kernel-gradient code, at the layer's stride
  (the bias gradient from the same pass over dy)."""
  return _onednn_call('facialnet_onednn_conv_backward_weights', _kernel_and_bias(w_shape), xb,
                      dyb, stride=stride, padding=padding)


def _onednn_kernel_grad_phases(xb, dyb, w_shape, stride, padding):
  """Float32 kernel and bias gradients at stride s as s*s stride-1 ones, in one oneDNN call
  (faster than oneDNN 3.2's strided kernel-gradient code at batch 128 and up; measurements
  in `_onednn_kernel_grad`):
  kernel taps i = a + s*i' only meet input rows s*t + i - p, so phase (a, b) of the input,
  correlated with dy at stride 1, gives taps [a::s, b::s]. Same products, same count."""
  return _onednn_call('facialnet_onednn_conv_backward_weights_phases', _kernel_and_bias(w_shape),
                      xb, dyb, stride=stride, padding=padding)


def conv2d(x, w, stride: int, padding: int, implementation: str = 'xla'):
  """NHWC x HWIO convolution with symmetric padding, by the named implementation."""
  k = w.shape[0]
  if w.shape[0] != w.shape[1]:
    raise ValueError(f'square kernels only, got {w.shape}')
  implementation = resolve(implementation)
  if implementation == 'xla':
    return conv_xla(x, w, stride, padding)
  pointwise = k == 1 and stride == 1 and padding == 0
  if implementation == 'fast':
    return conv1x1(x, w) if pointwise else conv_xla(x, w, stride, padding)
  if implementation == 'patches':
    return conv1x1(x, w) if pointwise else conv_patches(x, w, k, stride, padding)
  if implementation == 'onednn':
    if onednn_build.available():
      return conv_onednn(x, w, stride, padding)
    return conv_xla(x, w.astype(x.dtype), stride, padding)
  raise ValueError(f'unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}')


class Conv2D(nn.Module):
  """Square-kernel 2-D convolution (NHWC), parameters laid out like `nn.Conv`.

  Attributes:
    features: output channels.
    kernel_size: k for a k x k kernel.
    stride: stride in both spatial dimensions.
    padding: symmetric zero padding ((p, p), (p, p)).
    implementation: one of `IMPLEMENTATIONS`; all give the same result.
    dtype: dtype of the computation (inputs and kernel are cast to it);
      parameters are always stored in float32.
    kernel_init, bias_init: initialisers (He/Kaiming normal fan-in, zeros).
    relu: apply ReLU to the result. With 'onednn' the bias and ReLU are then fused into the
      convolution and the result is bfloat16 whatever `dtype` (see `conv_bias_relu_onednn`).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  implementation: str = 'xla'
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')
  bias_init: Callable = nn.initializers.zeros_init()
  relu: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    implementation = resolve(self.implementation)
    if self.relu and implementation == 'onednn' and onednn_build.available():
      return conv_bias_relu_onednn(x.astype(jnp.bfloat16), kernel, bias, self.stride,
                                   self.padding)
    x = x.astype(self.dtype)
    # 'onednn' rounds the kernel itself and returns its gradient in float32.
    w = kernel if implementation == 'onednn' else kernel.astype(self.dtype)
    y = conv2d(x, w, self.stride, self.padding, implementation) + bias.astype(self.dtype)
    return nn.relu(y) if self.relu else y
