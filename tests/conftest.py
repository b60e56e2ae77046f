import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test id, so every case is reproducible across runs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
