"""Training: batching, checkpoints, the two-stage trainer."""
