"""preprocess_face: every input kind gives (size, size, C) uint8; bytes and arrays agree."""

import io

import cv2
import numpy as np
from PIL import Image
import pytest

from facialnet_jax.data import demo_faces
from facialnet_jax.data import preprocessing


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
  return cv2.imencode('.jpg', rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png(rgb: np.ndarray) -> bytes:
  return cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes()


RGB = demo_faces.draw_face(np.random.default_rng(0), 1, 4, 120)[:, 10:100]  # 120×90, not square.


def _pil(mode):
  buffer = io.BytesIO()
  Image.fromarray(RGB).convert(mode).save(buffer, format='TIFF' if mode == 'CMYK' else 'PNG')
  return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize('image', [
    RGB, RGB[:, :, 0], RGB[:, :, :1], np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)]),
    _jpeg(RGB), _png(RGB), bytearray(_png(RGB)), _pil('L'), _pil('RGBA'), _pil('CMYK'), _pil('P')],
    ids=['rgb', 'gray2d', 'gray3d', 'rgba', 'jpeg', 'png', 'bytearray', 'pil_l', 'pil_rgba',
         'pil_cmyk', 'pil_p'])
@pytest.mark.parametrize('size, channels', [(75, 1), (96, 3), (32, 1)])
def test_output_shape_and_dtype(image, size, channels):
  out = preprocessing.preprocess_face(image, size, channels)
  assert out.shape == (size, size, channels)
  assert out.dtype == np.uint8
  assert out.flags['C_CONTIGUOUS']


def test_centre_square_crop_keeps_the_middle():
  # A tall image: black top and bottom thirds, white middle. The centre square is all white.
  tall = np.zeros((300, 100, 3), np.uint8)
  tall[100:200] = 255
  assert preprocessing.preprocess_face(tall, 50, 1).min() == 255
  wide = np.zeros((100, 300), np.uint8)
  wide[:, 100:200] = 255
  assert preprocessing.preprocess_face(wide, 50, 1).min() == 255


def test_gray_is_bt601_luma_and_rgb_keeps_channel_order():
  colour = np.zeros((10, 10, 3), np.uint8)
  colour[..., 0] = 200  # Pure red.
  assert preprocessing.preprocess_face(colour, 10, 1)[0, 0, 0] == round(0.299 * 200)
  assert tuple(preprocessing.preprocess_face(colour, 10, 3)[0, 0]) == (200, 0, 0)
  assert tuple(preprocessing.preprocess_face(_png(colour), 10, 3)[0, 0]) == (200, 0, 0)


@pytest.mark.parametrize('channels', [1, 3])
def test_big_jpeg_bytes_match_the_array_path(channels):
  """Reduced-scale JPEG decoding (fast) stays close to decoding in full and resizing."""
  big = demo_faces.draw_face(np.random.default_rng(1), 0, 6, 816)
  data = _jpeg(big)
  decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
  from_bytes = preprocessing.preprocess_face(data, 75, channels).astype(int)
  from_array = preprocessing.preprocess_face(decoded, 75, channels).astype(int)
  assert np.abs(from_bytes - from_array).mean() < 2.0


@pytest.mark.parametrize('data, message', [
    (b'', 'empty'), (b'not an image at all', 'not an image format'),
    (_jpeg(RGB)[:500], 'truncated')])
def test_unreadable_bytes_raise_value_error(data, message):
  with pytest.raises(ValueError, match=message):
    preprocessing.preprocess_face(data)


@pytest.mark.parametrize('image', [np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10), np.float32),
                                   np.zeros((0, 10), np.uint8), 'a/path.jpg'])
def test_unsupported_inputs_raise_value_error(image):
  with pytest.raises(ValueError):
    preprocessing.preprocess_face(image)
