"""Evaluation protocols: linear probe, kNN, fine-tuning, detection transfer."""
