"""The one function that turns a face image into the stored model input (size×size, gray or RGB).

The TFDS builders use it on the data sets' face crops, and prediction uses it on the face boxes a
detector finds, so that the network sees the same kind of input in both places. It needs only
numpy, OpenCV and Pillow.
"""

import io

import cv2
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

DEFAULT_IMAGE_SIZE = 75

_JPEG_MAGIC = b'\xff\xd8'
_JPEG_END = b'\xff\xd9'
# Some cameras append data after the end marker; it is rarely more than this.
_JPEG_END_SEARCH_BYTES = 1 << 16
# cv2 decodes JPEGs at 1/2, 1/4 or 1/8 scale for almost nothing (DCT scaling), which makes
# Adience's 816×816 aligned crops about as cheap as small images.
_REDUCED_GRAY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                  4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def preprocess_face(image, size: int = DEFAULT_IMAGE_SIZE, channels: int = 1) -> np.ndarray:
  """Returns the model input for one face image: a `(size, size, channels)` uint8 array.

  Face region: the input is taken to be a face crop already. Adience's `aligned/` (landmark
  aligned, square) and `faces/` (coarse tilt aligned) images are face crops with some margin,
  as are UTKFace's "aligned & cropped" faces and a detector's boxes. We keep that margin (the
  paper trains on the crops as given) and take the largest centred square, so that a
  non-square crop is cropped rather than stretched; a square crop is used whole.

  Steps: centre square crop → grayscale (ITU-R BT.601 luma, as JPEG's Y channel and
  `cv2.COLOR_RGB2GRAY`) or RGB → resize to `size` (`INTER_AREA` when shrinking, which averages
  pixels instead of aliasing; `INTER_LINEAR` when enlarging).

  Args:
    image: One of
      * encoded image bytes (JPEG, PNG, BMP, ...; CMYK JPEGs too). Large JPEGs are decoded at
        1/2, 1/4 or 1/8 scale when that still leaves at least `size` pixels, which is fast.
      * a numpy uint8 array in RGB order: (H, W) or (H, W, 1) gray, (H, W, 3) RGB or
        (H, W, 4) RGBA (alpha is ignored). Arrays from `cv2.imread` are BGR: convert them first.
      * a `PIL.Image.Image` of any mode (L, RGB, RGBA, CMYK, P, I;16, ...).
    size: side of the output square, in pixels.
    channels: 1 for grayscale, 3 for RGB.

  Returns:
    A C-contiguous `(size, size, channels)` uint8 array.

  Raises:
    ValueError: when the image cannot be decoded, is empty or has an unsupported layout.
  """
  if channels not in (1, 3):
    raise ValueError(f'channels must be 1 (gray) or 3 (RGB), got {channels}.')
  if size < 1:
    raise ValueError(f'size must be positive, got {size}.')
  if isinstance(image, (bytes, bytearray, memoryview)):
    pixels = _centre_square(_decode(bytes(image), size, channels))
  elif isinstance(image, Image.Image):
    pixels = _centre_square(pil_pixels(image, channels))
  elif isinstance(image, np.ndarray):
    # Crop before the colour conversion: a detector's box can be a small part of a big frame.
    pixels = _to_channels(_centre_square(_validate_array(image)), channels)
  else:
    raise ValueError(f'Expected image bytes, a numpy array or a PIL image, got {type(image)}.')
  side = pixels.shape[0]
  if side != size:
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    pixels = cv2.resize(pixels, (size, size), interpolation=interpolation)
  return np.ascontiguousarray(pixels.reshape(size, size, channels))


def _decode(data: bytes, size: int, channels: int) -> np.ndarray:
  """Decodes to (H, W) gray or (H, W, 3) RGB, at reduced scale for large JPEGs."""
  if not data:
    raise ValueError('the image file is empty (0 bytes)')
  reduction = 1
  if data.startswith(_JPEG_MAGIC):
    # cv2 decodes a truncated JPEG (an interrupted extraction) with a grey bottom and no
    # error; its end-of-image marker is missing. (0xFFD9 cannot occur inside coded data.)
    if _JPEG_END not in data[-_JPEG_END_SEARCH_BYTES:]:
      raise ValueError('the JPEG is truncated (it has no end-of-image marker)')
    reduction = _jpeg_reduction(data, size)
  flags = (_REDUCED_GRAY if channels == 1 else _REDUCED_COLOR)[reduction]
  try:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error:
    pixels = None
  if pixels is None:  # A format or a corruption cv2 does not handle: Pillow may.
    return _decode_with_pil(data, channels)
  if channels == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
  return pixels


def _jpeg_reduction(data: bytes, size: int) -> int:
  """The largest of 1, 2, 4, 8 that keeps the short side of the decoded JPEG at least `size`."""
  try:
    width, height = Image.open(io.BytesIO(data)).size  # Reads the header only.
  except Exception:  # pylint: disable=broad-except
    return 1  # Let the decoder report what is wrong.
  short_side = min(width, height)
  reduction = 1
  while reduction < 8 and -(-short_side // (reduction * 2)) >= size:
    reduction *= 2
  return reduction


def pil_pixels(image: Image.Image, channels: int) -> np.ndarray:
  """(H, W) gray (channels 1) or (H, W, 3) RGB uint8 pixels of a PIL image of any mode.

  16-bit gray images (PNG, TIFF) are scaled to 8 bits: Pillow's own convert('L') clips them,
  which turns nearly every pixel white.
  """
  if image.mode in _SIXTEEN_BIT_MODES or (image.mode == 'I' and image.getextrema()[1] > 255):
    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), 'L')
  return np.asarray(image.convert('L' if channels == 1 else 'RGB'))


def _decode_with_pil(data: bytes, channels: int) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(data)) as image:
      return pil_pixels(image, channels)
  except UnidentifiedImageError:
    raise ValueError(f'not an image format OpenCV or Pillow can read ({len(data)} bytes, '
                     f'starting {data[:8]!r})') from None
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'cannot decode the image ({len(data)} bytes): {error}') from error


def _validate_array(array: np.ndarray) -> np.ndarray:
  if array.dtype != np.uint8:
    raise ValueError(f'Expected a uint8 image array, got dtype {array.dtype}: convert it first '
                     '(for example with np.clip(x * 255, 0, 255).astype(np.uint8)).')
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
    raise ValueError(f'Expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape '
                     f'{array.shape}.')
  return array


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
  """(H, W[, 1|3|4]) uint8 RGB(A) or gray → (H, W) gray or (H, W, 3) RGB."""
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[:, :, 0]
  if array.ndim == 2:
    gray = np.ascontiguousarray(array)
    return gray if channels == 1 else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
  rgb = np.ascontiguousarray(array[:, :, :3])
  return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if channels == 1 else rgb


def _centre_square(pixels: np.ndarray) -> np.ndarray:
  height, width = pixels.shape[:2]
  if height == 0 or width == 0:
    raise ValueError(f'the image is empty ({width}×{height} pixels).')
  side = min(height, width)
  top = (height - side) // 2
  left = (width - side) // 2
  return pixels[top:top + side, left:left + side]
