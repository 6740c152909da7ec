"""A trained run on photos and videos: faces found (MTCNN) and aligned to the training crops'
framing, classified in batches (JAX or onnxruntime), annotated copies and CSV rows, videos frame
by frame, and the ONNX graph of a run."""
