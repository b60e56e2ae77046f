"""Keeping TensorFlow's log lines out of the command's output unless the user asks for them.

TensorFlow writes C++ log lines to the process's stderr: some through absl before its
logging is set up, which ``TF_CPP_MIN_LOG_LEVEL`` cannot silence (CUDA probing, CPU
features), the rest after it, which that variable controls. Its Python logger adds the
retracing warnings of configs that train several models. All of them are noise to someone
training a config, so by default the first are filtered out of stderr while TensorFlow is
imported and its devices found, the second are capped at errors and the third hidden.
``--verbose``, or the user's own ``TF_CPP_MIN_LOG_LEVEL``, leaves TensorFlow's logging alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
ERRORS_ONLY = "2"
# absl's C++ format: severity, date, time, thread, file:line] message. Fatal lines (F) are
# kept: they explain the abort that follows them.
LOG_RECORD = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.-]+:\d+\] ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def shown(verbose):
    """Whether TensorFlow's logging is left alone: ``--verbose`` or the user's own level."""
    return verbose or LEVEL_VARIABLE in os.environ


def drop_log_records(lines):
    """The lines that are not part of a TensorFlow log record (a record's own lines go too)."""
    in_record = False
    for line in lines:
        if LOG_RECORD.match(line) or line.startswith(ABSL_PREAMBLE):
            in_record = True
        elif not in_record or line.startswith("Traceback") or not line.strip():
            in_record = False
            yield line
        # else: a continuation of a multi-line record, such as the CPU feature list


@contextlib.contextmanager
def _stderr_filtered():
    """Sends fd 2 to a file for the block, then replays what was not a log record.

    If the block raises, everything is replayed: the user needs the whole story.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.writelines(lines if failed else drop_log_records(lines))
            sys.stderr.flush()


def import_tensorflow(verbose):
    """Imports TensorFlow and Keras for a command, quietly unless asked otherwise."""
    if shown(verbose):
        import keras  # noqa: F401

        return
    os.environ[LEVEL_VARIABLE] = ERRORS_ONLY
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with _stderr_filtered():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs its CUDA probing here
