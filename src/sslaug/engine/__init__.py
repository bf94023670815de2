"""The training engine: one loop for every method (AMP, DDP, checkpoints, logging)."""
