"""What every training run shares, whatever its task: processes, checkpoints, signals, metrics, precision."""
