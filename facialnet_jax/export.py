"""Exports a trained model (a run's checkpoint, an exported folder or the shipped model) to ONNX.

  python -m facialnet_jax.export [--workdir W] [--checkpoint best] [--flip] --output model.onnx

Input 'image': uint8 (batch, S, S, C) faces as the builders store them and `predict` aligns
them; outputs 'gender' (batch, 2) and 'age' (batch, 8) probabilities. Size, channels,
preprocessing, class names and flip are in the file's metadata (onnx.load(...).metadata_props).
Needs the onnx extra: pip install 'facialnet-jax[onnx]'.
"""

import json
import os

from absl import flags

from facialnet_jax.runtime import cli
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import exported_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  exported_model.define_model_flags('Average each face with its mirror image inside the graph '
                                    '(twice the work)')
  flags.DEFINE_string('output', None, 'Where to write the .onnx file.')


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}; give the file with --output')
  if not FLAGS.output:
    raise UserError('give --output model.onnx (where to write the exported model)')
  folder = os.path.dirname(os.path.abspath(FLAGS.output))
  if not os.path.isdir(folder):
    raise UserError(f'{folder} does not exist; create it or choose another --output')
  from facialnet_jax.inference import onnx_export  # pylint: disable=import-outside-toplevel
  run = exported_model.load_run(FLAGS.workdir, FLAGS.checkpoint)
  proto = onnx_export.to_onnx(run, FLAGS.flip)
  # Written beside and renamed: an interrupted export never leaves half a file.
  partial = FLAGS.output + '.partial'
  with open(partial, 'wb') as f:
    f.write(proto.SerializeToString())
  os.replace(partial, FLAGS.output)
  metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
  print(f'Wrote {FLAGS.output} ({os.path.getsize(FLAGS.output) / 1e6:.1f} MB): {run.describe()}; '
        f'input image uint8 (batch, {metadata["image_size"]}, {metadata["image_size"]}, '
        f'{metadata["channels"]}), outputs gender and age probabilities'
        f'{", flip inside" if metadata["flip"] else ""}.')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
