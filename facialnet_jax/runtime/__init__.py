"""Process plumbing shared by every command: one-line errors and the command-line wrapper, logging
and the stderr filter, the CPU environment, devices and the `data` mesh, several hosts, stop
signals, the persistent compilation cache and the run's clock, TensorBoard writers without
TensorFlow, and the run directory (its files, its lock, whole-file writes). Imports nothing
else of the package."""
