"""The paper's recipe on UTKFace: train on `train`, select on `validation`, report on `test`
(fixed 80/10/10 splits by a hash of the file name; see tfds_utkface/README.md).

Build the data once first (about 30 s for the 15,404 faces of ../shared/data/utkface), from
UTKFace.tar.gz, its extracted UTKFace/ folder or a folder of the .jpg.chip.jpg faces, then train:

  tfds build tfds_utkface --config gray75 --manual_dir ../shared/data/utkface
  python launch.py --config configs/utkface.py --workdir runs/utkface

The build skips the files whose names are malformed (the original release has three), lists them
in the data set's metadata and says so in one line at its end; `tfds build
tfds_utkface/gray75/skip_bad_records=False --imports tfds_utkface.tfds_utkface_dataset_builder
--manual_dir DIR` stops at the first one instead (`--imports` needs the project installed:
`pip install -e .`). Run from the repository root, where tfds finds tfds_utkface/. With a data
dir other than TFDS's default, pass it to both commands: `--data_dir DIR` and
`--config.data.data_dir=DIR`.
"""

from facialnet_jax.base_config import get_base_config


def get_config():
  # Every other default is the paper's recipe (see facialnet_jax/base_config.py for each choice).
  config = get_base_config()
  config.data.name = 'tfds_utkface'
  config.data.builder_config = 'gray75'
  config.data.test_fold = -1  # No folds: the named splits below.
  config.data.train_split = 'train'
  config.data.validation_split = 'validation'
  config.data.test_split = 'test'
  return config
