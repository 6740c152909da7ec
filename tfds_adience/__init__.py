"""TFDS dataset folder for Adience: `import tfds_adience.tfds_adience_dataset_builder` registers
the `tfds_adience` builder."""
