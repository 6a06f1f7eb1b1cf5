"""The training loop, checkpoints, metrics and plots."""
