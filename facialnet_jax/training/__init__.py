"""Training: the config and its checks, FacialNet and its convolutions (XLA, oneDNN), the pure
compiled train and eval steps with their losses, augmentation and metrics, the optimiser, the
device-resident and streaming feeds, checkpoints, restoring and exporting a run, fine-tuning,
and `train.train_and_evaluate`, the loop `launch.py` runs."""
