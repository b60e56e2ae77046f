"""Points keras_margin's loader at another library file and reports, as JSON, what users see.

Run as ``python version_skew_probe.py LIBRARY``; the loader is not mocked, only aimed.
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from keras_margin.ops import _loader

_loader.LIBRARY_PATH = Path(sys.argv[1])

from keras_margin import losses, ops  # noqa: E402

rng = np.random.default_rng(0)
embeddings = rng.normal(size=(8, 4)).astype("float32")
embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])

report = {"available": ops.custom_op_available(), "reason": ops.custom_op_unavailable_reason()}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = losses.circle(labels, embeddings)
    second = losses.circle(labels, embeddings)
report["warnings"] = [str(w.message) for w in caught if w.category is RuntimeWarning]
composite = losses.circle(labels, embeddings, implementation="composite")
report["auto_equals_composite"] = bool(
    np.array_equal(first, composite) and np.array_equal(second, composite)
)
try:
    losses.circle(labels, embeddings, implementation="fused")
    report["fused_error"] = None
except RuntimeError as error:
    report["fused_error"] = str(error)
print(json.dumps(report))
