"""keras_margin's PyTorch-only code: the run-time checks under ``torch.compile`` and Circle's
blocked implementation."""
