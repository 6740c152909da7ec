"""ONNX export: onnxruntime gives JAX's probabilities, the file says how to feed it, and what cannot be exported says why."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest

from facialnet_jax.inference import face_prediction
from facialnet_jax.inference import onnx_export
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import conv
from facialnet_jax.training import exported_model
from facialnet_jax.training import models
from facialnet_jax.training import restore
from facialnet_jax.training import train
from tests.conftest import REPO_ROOT, tiny_config

# Float32 throughout; measured differences are ~1e-6 (summation order of the convolutions).
TOLERANCE = 1e-4


def _faces(run, count=13, seed=0):
  size = run.stored_image_size
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, run.channels),
                                              dtype=np.uint8)


def _assert_same_probabilities(run, flip, images, tolerance=TOLERANCE, varied=True):
  expected = face_prediction.make_predictor(run, batch_size=8, flip=flip)(images)
  exported = onnx_export.to_onnx(run, flip).SerializeToString()
  got = onnx_export.make_predictor(exported, batch_size=8)(images)
  for head in ('gender', 'age'):
    # Outputs that differ between faces: the comparison can see a wrong layer.
    assert not varied or expected[head].std(axis=0).max() > 0.01, head
    assert got[head].shape == expected[head].shape
    np.testing.assert_allclose(got[head], expected[head], atol=tolerance, err_msg=head)


@pytest.fixture(scope='module')
def trained_runs(tmp_path_factory):
  """Tiny synthetic runs (gray): plain on 75px faces, and batch norm on 83px faces (centre crop)."""
  runs = {}
  for name, overrides in (('plain', {}),
                          ('batch_norm_crop', {'model.batch_norm': True,
                                               'data.synthetic_image_size': 83})):
    directory = tmp_path_factory.mktemp(name)
    # Float32 convolutions: the graph must then equal the run to 1e-4 ('auto' could pick
    # oneDNN's bfloat16 ones; every implementation is compared further down).
    train.train_and_evaluate(tiny_config(**{'num_epochs': 1, 'data.synthetic_train_examples': 20,
                                            'data.synthetic_test_examples': 5,
                                            'model.conv_implementation': 'xla', **overrides}),
                             str(directory))
    runs[name] = _with_random_weights(restore.restore_run(str(directory), 'latest'))
  return runs


def _with_random_weights(run):
  """The run with every parameter and batch statistic drawn at random: two steps of training
  leave the zero-initialised output layers near zero, so the outputs would hardly depend on the
  input and a wrong layer in the graph could pass unseen."""
  rng = np.random.default_rng(1)
  draw = lambda a, std=0.1: np.asarray(rng.normal(0, std, np.shape(a)), np.float32)
  # Kernels at He scale (2 / fan-in), so that activations neither vanish nor explode.
  # Batch-norm scales near 1, else each layer shrinks the signal tenfold.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: draw(a, np.sqrt(2 / np.prod(np.shape(a)[:-1]))) if np.ndim(a) > 1
      else 1 + draw(a) if path[-1].key == 'scale' else draw(a), jax.device_get(run.state.params))
  stats = jax.tree_util.tree_map_with_path(
      lambda path, a: np.abs(draw(a)) + 0.5 if path[-1].key == 'var' else draw(a),
      jax.device_get(run.state.batch_stats))
  state = dataclasses.replace(run.state, params=params, batch_stats=stats)
  return dataclasses.replace(run, state=state)


@pytest.mark.parametrize('implementation', conv.IMPLEMENTATIONS)
@pytest.mark.parametrize('flip', [False, True])
def test_onnxruntime_matches_jax_for_every_conv_implementation(trained_runs, implementation,
                                                                flip):
  run = trained_runs['plain']
  config = run.config.copy_and_resolve_references()
  config.model.conv_implementation = implementation
  run = dataclasses.replace(run, config=config, model=models.create_model(config.model))
  # 'onednn' (and 'auto' where it picks it) rounds each convolution's inputs to bfloat16 (8
  # significant bits) where the export computes the float32 network: probabilities agree to
  # about 1e-2, not 1e-4.
  tolerance = 2e-2 if conv.resolve(implementation) == 'onednn' else TOLERANCE
  _assert_same_probabilities(run, flip, _faces(run), tolerance)


def test_batch_norm_and_centre_crop_export(trained_runs):
  run = trained_runs['batch_norm_crop']
  assert run.stored_image_size == 83
  # Known gap: with random batch-norm statistics every ReLU of this tiny run ends dead, so its
  # outputs do not vary between faces and this checks the graph runs, not each layer's values.
  _assert_same_probabilities(run, False, _faces(run), varied=False)


def test_the_shipped_model_exports_with_its_flip_and_metadata():
  run = exported_model.load_run(None)
  assert run.config.flip_test  # the export follows it unless told otherwise
  _assert_same_probabilities(run, True, _faces(run, count=9))
  proto = onnx_export.to_onnx(run)
  metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
  assert metadata['image_size'] == 75 and metadata['channels'] == 3
  assert metadata['flip'] is True
  assert metadata['age_classes'][0] == '0-2' and len(metadata['gender_classes']) == 2
  image = proto.graph.input[0]
  assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == [
      'batch', 75, 75, 3]


def test_a_bfloat16_run_is_refused_in_one_line(trained_runs):
  run = trained_runs['plain']
  config = run.config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  with pytest.raises(UserError, match='computes in bfloat16; only float32 models export'):
    onnx_export.to_onnx(dataclasses.replace(run, config=config))


def test_export_command_writes_a_file_onnxruntime_runs(tmp_path):
  output = tmp_path / 'shipped.onnx'
  finished = subprocess.run([sys.executable, '-m', 'facialnet_jax.export', '--output',
                             str(output)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert f'Wrote {output}' in finished.stdout
  assert not (tmp_path / 'shipped.onnx.partial').exists()
  run = exported_model.load_run(None)
  images = _faces(run, count=3)
  got = onnx_export.make_predictor(output.read_bytes(), batch_size=2)(images)
  expected = face_prediction.make_predictor(run, batch_size=2, flip=True)(images)
  np.testing.assert_allclose(got['age'], expected['age'], atol=TOLERANCE)

  missing = subprocess.run([sys.executable, '-m', 'facialnet_jax.export', '--output',
                            str(tmp_path / 'no' / 'x.onnx')], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300, check=False)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path / "no"} does not exist; create it or choose another --output')


def test_predict_on_photos_agrees_between_backends(shared_data):
  photos = sorted(str(p) for p in (shared_data / 'fairface-dev').glob('*.jpg'))[:6]
  run = exported_model.load_run(None)
  results = {}
  for backend in face_prediction.BACKENDS:
    predictor = face_prediction.backend_predictor(backend, run, 8, True)
    results[backend] = list(face_prediction.predict_photos(photos, run, predictor, face_prediction.Options()))
  faces = 0
  for jax_result, onnx_result in zip(results['jax'], results['onnx']):
    for a, b in zip(jax_result.predictions, onnx_result.predictions, strict=True):
      faces += 1
      np.testing.assert_allclose(a.gender_probabilities, b.gender_probabilities, atol=TOLERANCE)
      np.testing.assert_allclose(a.age_probabilities, b.age_probabilities, atol=TOLERANCE)
  assert faces >= 4
