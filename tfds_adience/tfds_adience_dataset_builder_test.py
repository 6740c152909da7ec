"""tfds's standard builder checks on dummy_data/: 20 synthetic faces, 4 per fold, plus one
repeated line in fold_1_data.txt that must be dropped as a duplicate."""

import tensorflow_datasets as tfds

from tfds_adience import tfds_adience_dataset_builder


class TfdsAdienceTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_adience_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['gray75', 'rgb96']
  SPLITS = {'fold0': 4, 'fold1': 4, 'fold2': 4, 'fold3': 4, 'fold4': 4}
  SKIP_CHECKSUMS = True  # Nothing is downloaded: Adience comes from the manual dir.

  def _make_builder(self, config=None):
    # tfds's standard checks read through tf.data, which reads TFRecord builds only; the
    # ArrayRecord default (random access, no TensorFlow) is checked in tests/.
    return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                              file_format='tfrecord')


if __name__ == '__main__':
  tfds.testing.test_main()
