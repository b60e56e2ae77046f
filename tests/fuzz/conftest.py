"""Hypothesis profiles for the fuzz suite, chosen with the KERAS_MARGIN_FUZZ environment variable.

- ``ci`` (the default): derandomized, so that every run checks the same cases and a CI failure
  reproduces locally, with no example database; about 35 cases, a few seconds in all.
- ``long``: random and a hundred times larger (about 3,400 cases), for a periodic or
  pre-release run. Failures are saved in Hypothesis's example database (``.hypothesis/``,
  git-ignored) and replayed first on the next run:

      KERAS_MARGIN_FUZZ=long python -m pytest -q -m fuzz tests/fuzz --hypothesis-show-statistics

``max_examples`` is a per-test unit that each test scales by its cost (``budget`` in
``__init__.py``). The deadline is off: a case's first call traces a tf.function or compiles
with XLA, which takes a second or two, and an identical later call takes milliseconds.
"""

import os

from hypothesis import settings

settings.register_profile(
    "ci", max_examples=8, derandomize=True, database=None, deadline=None, print_blob=False
)
settings.register_profile("long", max_examples=800, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("KERAS_MARGIN_FUZZ", "ci"))
