"""keras_margin's JAX-only code: run-time checks and Circle's blocked implementation."""
