"""Inputs shared by several test modules."""

import numpy as np


def unit_rows(rng, n, d, dtype="float64"):
    """``n`` random rows of norm 1 in ``d`` dimensions: the embeddings Circle expects."""
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)
