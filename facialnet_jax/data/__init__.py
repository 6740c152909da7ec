"""Data sets and reading: the label vocabulary (age groups, heads, unknown labels), the raw
Adience and UTKFace files and the TFDS builders' shared kit, the paper's face preprocessing,
subject-exclusive folds and the synthetic demo set, and the loading of whole splits into host
memory (ArrayRecord by random access, without TensorFlow). Imports only `runtime`."""
