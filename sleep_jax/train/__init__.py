"""Training: optimizer, pure train step, data parallelism, checkpoints, metrics and the loop."""
