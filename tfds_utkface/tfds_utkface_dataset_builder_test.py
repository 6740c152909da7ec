"""tfds's standard builder checks on dummy_data/: 12 synthetic faces split 8/2/2 by the hash of
their names, plus one byte-identical copy that must be dropped as a duplicate."""

import tensorflow_datasets as tfds

from tfds_utkface import tfds_utkface_dataset_builder


class TfdsUtkfaceTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_utkface_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['gray75', 'rgb96']
  SPLITS = {'train': 8, 'validation': 2, 'test': 2}
  SKIP_CHECKSUMS = True  # Nothing is downloaded: UTKFace comes from the manual dir.

  def _make_builder(self, config=None):
    # tfds's standard checks read through tf.data, which reads TFRecord builds only; the
    # ArrayRecord default (random access, no TensorFlow) is checked in tests/.
    return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                              file_format='tfrecord')


if __name__ == '__main__':
  tfds.testing.test_main()
