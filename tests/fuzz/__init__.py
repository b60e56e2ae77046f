"""Hypothesis fuzz tests of the keras_margin losses.

The "ci" profile (the default, see conftest.py) is deterministic and small, and runs in the
normal `python -m pytest -q`. The "long" profile generates a few thousand cases:

    KERAS_MARGIN_FUZZ=long python -m pytest -q -m fuzz tests/fuzz --hypothesis-show-statistics
"""

from hypothesis import settings


def budget(share):
    """``share`` of the active profile's per-test case count, at least one case.

    Tests differ in cost by orders of magnitude (an XLA compilation against a NumPy-sized loss),
    so each takes a share of one budget rather than the same count.
    """
    return max(1, round(settings.default.max_examples * share))
