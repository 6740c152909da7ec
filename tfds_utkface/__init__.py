"""TFDS dataset folder for UTKFace: `import tfds_utkface.tfds_utkface_dataset_builder` registers
the `tfds_utkface` builder."""
