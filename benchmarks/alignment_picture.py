"""Draws docs/alignment.png: UTKFace training crops above ordinary photos' faces as predict aligns
them, with the template's five landmark positions marked on both.

  python benchmarks/alignment_picture.py [--data ../shared/data] [--output docs/alignment.png]
"""

import argparse
import json
import pathlib

import cv2
import numpy as np
from PIL import Image

from facialnet_jax.inference import alignment
from facialnet_jax.inference import face_detection
from facialnet_jax.inference import face_prediction

TILE = 128
PAIRS = 5


def _tile(rgb: np.ndarray) -> np.ndarray:
  tile = cv2.resize(rgb, (TILE, TILE), interpolation=cv2.INTER_AREA)
  for x, y in alignment.TEMPLATE * TILE:
    cv2.circle(tile, (int(round(x)), int(round(y))), 2, (255, 220, 0), cv2.FILLED, cv2.LINE_AA)
  return tile


def _label(row: np.ndarray, text: str) -> np.ndarray:
  band = np.full((18, row.shape[1], 3), 255, np.uint8)
  cv2.putText(band, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  return np.vstack([band, row])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  root = pathlib.Path(__file__).resolve().parent.parent
  parser.add_argument('--data', default=str(root.parent / 'shared' / 'data'))
  parser.add_argument('--output', default=str(root / 'docs' / 'alignment.png'))
  args = parser.parse_args()
  data = pathlib.Path(args.data)
  training = sorted((data / 'utkface').glob('*.jpg'))[7::997][:PAIRS]
  truth = json.loads((data / 'fairface-dev' / 'ground_truth.json').read_text())
  photos = [data / 'fairface-dev' / row['filename'] for row in truth[3::37]][:PAIRS]
  top = [_tile(face_prediction.read_photo(str(path))) for path in training]
  bottom = []
  for path in photos:
    rgb = face_prediction.read_photo(str(path))
    face = face_detection.detect_faces(rgb)[0]
    bottom.append(_tile(alignment.align_face(rgb, face.landmark_array())))
  picture = np.vstack([_label(np.hstack(top), 'UTKFace training crops (aligned & cropped)'),
                       _label(np.hstack(bottom), 'fairface-dev photos: detected (MTCNN), '
                              'aligned by predict; dots: alignment.TEMPLATE')])
  pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  # 256 colours: a third of the file, no visible loss at this size.
  Image.fromarray(picture).quantize(256).save(args.output, optimize=True)
  print(f'{args.output}: {picture.shape[1]}×{picture.shape[0]}, '
        f'{pathlib.Path(args.output).stat().st_size // 1024} KB')


if __name__ == '__main__':
  main()
