"""A trained FacialNet as an ONNX graph (uint8 faces in, the two heads' probabilities out) and an onnxruntime predictor for it.

The graph is written node by node with onnx's own helpers from the model's layer table, the
parameters a run evaluates with and its preprocessing: FacialNet is eight convolutions, a
max-pool and two small dense heads, all standard ONNX operators. jax2onnx, the tracing
exporter, pins orbax-checkpoint below 0.11.37 and cannot be installed beside this project's
orbax (see README "Export to ONNX"). Every conv_implementation stores the same parameters, so
any float32 run exports; one trained with 'onednn' (bfloat16 convolutions: what 'auto', the
default, picks on a CPU with AVX512-BF16) becomes its float32 network, whose probabilities differ from its own JAX ones by bfloat16 rounding (about 1e-2).
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import numpy as np

from facialnet_jax.data import age_groups
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import models
from facialnet_jax.training import restore
from facialnet_jax.training import steps

OPSET = 17
INPUT = 'image'
OUTPUTS = age_groups.HEADS
# flax.linen.BatchNorm's default.
BATCH_NORM_EPSILON = 1e-5
_INSTALL_HINT = "install the export extra: pip install 'facialnet-jax[onnx]'"


def _onnx():
  try:
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f'ONNX export needs the onnx package; {_INSTALL_HINT}') from e
  return onnx


class _Graph:
  """Nodes and initializers under construction, with unique names."""

  def __init__(self, onnx):
    self.onnx = onnx
    self.nodes, self.initializers, self._names = [], [], set()

  def constant(self, name: str, value) -> str:
    if name not in self._names:
      self._names.add(name)
      self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
    self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
    return name


def _check_exportable(run: restore.RestoredRun) -> None:
  model = run.config.model
  if model.get('dtype', 'float32') != 'float32':
    # The graph computes in float32 whatever the training dtype; that is exact only for float32.
    raise UserError(f'this run computes in {model.dtype}; only float32 models export exactly '
                    '(the parameters are float32: retrain or evaluate it with '
                    '--config.model.dtype=float32 before exporting)')
  if run.stored_image_size < model.input_size:
    raise UserError(f'the run stores {run.stored_image_size}px faces but its model takes '
                    f'{model.input_size}px; it cannot be exported')


def _network(g: _Graph, x: str, params: dict, batch_stats: dict, prefix: str) -> dict[str, str]:
  """Backbone and heads on normalised NHWC images `x`; returns each head's probabilities."""
  x = g.node('Transpose', [x], f'{prefix}nchw', perm=[0, 3, 1, 2])
  backbone = params['backbone']
  for name, _, kernel, stride, padding in models.BACKBONE_LAYERS:
    layer = backbone[name]
    weight = g.constant(f'{name}.weight', np.transpose(layer['kernel'], (3, 2, 0, 1)))
    bias = g.constant(f'{name}.bias', layer['bias'])
    x = g.node('Conv', [x, weight, bias], f'{prefix}{name}', kernel_shape=[kernel, kernel],
               strides=[stride, stride], pads=[padding] * 4)
    if f'{name}_bn' in backbone:
      bn, stats = backbone[f'{name}_bn'], batch_stats['backbone'][f'{name}_bn']
      x = g.node('BatchNormalization',
                 [x, g.constant(f'{name}_bn.scale', bn['scale']),
                  g.constant(f'{name}_bn.bias', bn['bias']),
                  g.constant(f'{name}_bn.mean', stats['mean']),
                  g.constant(f'{name}_bn.var', stats['var'])],
                 f'{prefix}{name}_bn', epsilon=BATCH_NORM_EPSILON)
    x = g.node('Relu', [x], f'{prefix}{name}_relu')
  x = g.node('MaxPool', [x], f'{prefix}pool', kernel_shape=[3, 3], strides=[2, 2])
  # Back to NHWC before flattening: the first dense layers were trained on that order.
  x = g.node('Transpose', [x], f'{prefix}pool_nhwc', perm=[0, 2, 3, 1])
  features = g.node('Flatten', [x], f'{prefix}features', axis=1)
  probabilities = {}
  for head in OUTPUTS:
    layers = params[f'{head}_head']
    h = features
    for i in range(len(layers)):
      dense = layers[f'Dense_{i}']
      h = g.node('Gemm', [h, g.constant(f'{head}.dense{i}.weight', dense['kernel']),
                          g.constant(f'{head}.dense{i}.bias', dense['bias'])],
                 f'{prefix}{head}_dense{i}')
      if i < len(layers) - 1:
        h = g.node('Relu', [h], f'{prefix}{head}_relu{i}')
    probabilities[head] = g.node('Softmax', [h], f'{prefix}{head}_probabilities', axis=-1)
  return probabilities


def to_onnx(run: restore.RestoredRun, flip: bool | None = None):
  """The ONNX ModelProto of `run`: input 'image', uint8 (batch, S, S, C) faces as the builders
  store them (S = run.stored_image_size); outputs 'gender' (batch, 2) and 'age' (batch, 8)
  probabilities, as `predict` computes them (centre crop, normalisation, flip if asked;
  default: the run's config.flip_test). Preprocessing and classes are in the metadata."""
  onnx = _onnx()
  _check_exportable(run)
  flip = bool(run.config.get('flip_test', False)) if flip is None else flip
  variables = jax.device_get({'params': steps.eval_params(run.state),
                              'batch_stats': run.state.batch_stats or {}})
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), variables['params'])
  batch_stats = jax.tree.map(lambda a: np.asarray(a, np.float32), variables['batch_stats'])
  model = run.config.model
  size, channels, crop = run.stored_image_size, run.channels, model.input_size
  g = _Graph(onnx)

  # augment.prepare_images without a key: /255, centre crop, (x - mean) / std.
  x = g.node('Cast', [INPUT], 'image_float', to=onnx.TensorProto.FLOAT)
  x = g.node('Div', [x, g.constant('255', np.float32(255.0))], 'image_unit')
  if size > crop:
    start = (size - crop) // 2
    x = g.node('Slice', [x, g.constant('crop_starts', np.array([start, start], np.int64)),
                         g.constant('crop_ends', np.array([start + crop] * 2, np.int64)),
                         g.constant('crop_axes', np.array([1, 2], np.int64))], 'image_crop')
  x = g.node('Sub', [x, g.constant('pixel_mean', np.float32(model.pixel_mean))], 'image_centred')
  x = g.node('Div', [x, g.constant('pixel_std', np.float32(model.pixel_std))], 'image_normalised')
  outputs = _network(g, x, params, batch_stats, '')
  if flip:
    mirrored = g.node('Slice', [x, g.constant('flip_starts', np.array([-1], np.int64)),
                                g.constant('flip_ends', np.array([np.iinfo(np.int64).min],
                                                                 np.int64)),
                                g.constant('flip_axes', np.array([2], np.int64)),
                                g.constant('flip_steps', np.array([-1], np.int64))],
                      'image_mirrored')
    mirrored_outputs = _network(g, mirrored, params, batch_stats, 'mirrored_')
    half = g.constant('half', np.float32(0.5))
    outputs = {head: g.node('Mul', [g.node('Add', [outputs[head], mirrored_outputs[head]],
                                           f'{head}_sum'), half], f'{head}_mean')
               for head in OUTPUTS}
  for head in OUTPUTS:  # the outputs under their plain names
    g.node('Identity', [outputs[head]], head)

  graph = onnx.helper.make_graph(
      g.nodes, 'facialnet',
      [onnx.helper.make_tensor_value_info(INPUT, onnx.TensorProto.UINT8,
                                          ['batch', size, size, channels])],
      [onnx.helper.make_tensor_value_info(head, onnx.TensorProto.FLOAT, ['batch', age_groups.NUM_CLASSES[head]])
       for head in OUTPUTS],
      g.initializers)
  proto = onnx.helper.make_model(graph, producer_name='facialnet-jax',
                                 opset_imports=[onnx.helper.make_opsetid('', OPSET)])
  proto.ir_version = 8  # what onnxruntime releases of the last years all read
  metadata = {
      'image_size': size, 'channels': channels, 'colour': 'grayscale' if channels == 1 else 'RGB',
      'preprocessing': (f'faces aligned as facialnet_jax.predict aligns them, {size}x{size} uint8'
                        f' NHWC; inside: /255, centre crop to {crop}, (x - {model.pixel_mean}) /'
                        f' {model.pixel_std}'),
      'flip': flip, 'gender_classes': list(age_groups.GENDER_NAMES),
      'age_classes': list(age_groups.AGE_GROUP_NAMES),
      'source_workdir': run.workdir, 'source_checkpoint': run.checkpoint, 'step': run.step,
  }
  onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
  onnx.checker.check_model(proto, full_check=True)
  return proto


def make_predictor(model_bytes: bytes, batch_size: int,
                   threads: int = 0) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """predict(images uint8 (N, S, S, C)) → {'gender', 'age'} probabilities with onnxruntime, in
  batches of at most `batch_size` (face_prediction.make_predictor's contract)."""
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f'--backend=onnx needs onnxruntime; {_INSTALL_HINT}') from e
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # its warnings about unused initializers are not ours
  if threads:
    options.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(model_bytes, options,
                                         providers=['CPUExecutionProvider'])

  def predict(images: np.ndarray) -> dict[str, np.ndarray]:
    parts = [session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(images[i:i + batch_size])})
             for i in range(0, len(images), batch_size)]
    if not parts:
      return {head: np.zeros((0, age_groups.NUM_CLASSES[head]), np.float32) for head in OUTPUTS}
    return {head: np.concatenate([p[k] for p in parts]) for k, head in enumerate(OUTPUTS)}

  return predict
