"""Held-out metrics, computed in NumPy from predictions so that ``evaluate`` can redo them.

Retrieval is leave-one-out over the test set: each test embedding queries all the others by
cosine similarity.
"""

from __future__ import annotations

import keras
import numpy as np

QUERY_CHUNK = 1024  # bounds the similarity block at QUERY_CHUNK x test-set size


def _unit_rows(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def retrieval(embeddings, labels):
    """Recall@1 and MAP@R (Musgrave et al., 2020) of leave-one-out retrieval.

    MAP@R ranks, for a query with R other examples of its class, its R nearest neighbours and
    averages the precision at each rank that holds a match; queries alone in their class are
    skipped.
    """
    index = _unit_rows(np.asarray(embeddings, dtype="float64"))
    labels = np.asarray(labels)
    _, class_index, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = class_sizes[class_index] - 1  # R: the other examples of each query's class
    depth = int(relevant.max())
    if depth == 0:
        raise ValueError("retrieval needs at least two test examples of some class")
    hits_at_1, average_precisions = [], []
    for start in range(0, len(labels), QUERY_CHUNK):
        rows = np.arange(start, min(start + QUERY_CHUNK, len(labels)))
        similarity = index[rows] @ index.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # a query never retrieves itself
        nearest = np.argpartition(-similarity, depth - 1, axis=1)[:, :depth]
        order = np.take_along_axis(similarity, nearest, axis=1).argsort(axis=1, kind="stable")
        ranked = np.take_along_axis(nearest, order[:, ::-1], axis=1)
        match = labels[ranked] == labels[rows, None]
        hits_at_1.append(match[:, 0])
        r = relevant[rows]
        within_r = np.arange(1, depth + 1) <= r[:, None]
        precision = np.cumsum(match, axis=1) / np.arange(1, depth + 1)
        ap = np.sum(precision * match * within_r, axis=1) / np.maximum(r, 1)
        average_precisions.append(ap[r > 0])
    return {
        "recall_at_1": float(np.mean(np.concatenate(hits_at_1))),
        "map_at_r": float(np.mean(np.concatenate(average_precisions))),
    }


def accuracy(predictions, labels, task, positive):
    """Top-1 accuracy for classifiers; sign agreement with ``positive`` for binary models."""
    if task == "binary":
        return {"accuracy": float(np.mean((predictions[:, 0] > 0) == positive))}
    return {"accuracy": float(np.mean(np.argmax(predictions, axis=1) == labels))}


@keras.saving.register_keras_serializable(package="keras_margin")
def sign_accuracy(y_true, y_pred):
    """Fraction of examples whose score has the sign of their -1 / +1 label."""
    agree = keras.ops.equal(y_true > 0, y_pred > 0)
    return keras.ops.mean(keras.ops.cast(agree, "float32"), axis=-1)
