"""What a training run needs around the Trainer: pre-flight checks, checkpoint I/O, run records."""
