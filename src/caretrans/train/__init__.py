"""Training: recipe, loop, distributed set-up, checkpoints and metrics."""
