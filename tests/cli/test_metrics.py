"""Retrieval and accuracy metrics against values worked out by hand."""

import numpy as np
import pytest

from keras_margin_cli import metrics


def test_retrieval_on_a_hand_worked_example():
    # Points on a circle at these angles (degrees); cosine similarity ranks by angle distance.
    angles = np.radians([0, 10, 30, 100, 115, 210])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 0, 1, 1])
    found = metrics.retrieval(points, labels)
    # Nearest neighbours: 0->1 (hit), 1->0 (hit), 2->1 (miss), 3->4 (miss), 4->3 (miss),
    # 5->4 (hit): Recall@1 = 3/6.
    assert found["recall_at_1"] == pytest.approx(3 / 6)
    # Every class has 3 members, so R = 2 for each query. Rankings (first two):
    # 0: 1(hit) 2(miss) -> AP = 1/2 * (1)               = 0.5
    # 1: 0(hit) 2(miss) -> 0.5
    # 2: 1(miss) 0(miss) -> 0
    # 3: 4(miss) 2(miss) -> 0
    # 4: 3(miss) 2(hit) -> 1/2 * (1/2)                  = 0.25
    # 5: 4(hit) 3(miss) -> 0.5
    assert found["map_at_r"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)


def test_retrieval_is_chunk_independent(rng, monkeypatch):
    embeddings = rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    whole = metrics.retrieval(embeddings, labels)
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 7)
    assert metrics.retrieval(embeddings, labels) == whole


def test_perfect_clusters_score_one(rng):
    labels = np.repeat(np.arange(5), 6)
    embeddings = np.eye(5)[labels] + 0.01 * rng.normal(size=(30, 5))
    assert metrics.retrieval(embeddings, labels) == {"recall_at_1": 1.0, "map_at_r": 1.0}


def test_retrieval_needs_a_pair():
    with pytest.raises(ValueError, match="at least two test examples of some class"):
        metrics.retrieval(np.eye(3), np.array([0, 1, 2]))


def test_accuracy():
    scores = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.4]])
    assert metrics.accuracy(scores, np.array([1, 0, 0]), "classifier", None) == {
        "accuracy": pytest.approx(2 / 3)
    }
    signs = np.array([[0.5], [-0.2], [0.1], [-3.0]])
    positive = np.array([True, False, False, False])
    assert metrics.accuracy(signs, None, "binary", positive) == {"accuracy": 0.75}
