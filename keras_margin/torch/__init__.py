"""keras_margin's PyTorch-only code: Circle's blocked implementation."""
