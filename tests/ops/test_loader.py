"""The loader's version record and its refusal of a library built for another TensorFlow."""

import ctypes

import pytest
import tensorflow as tf

from keras_margin.ops import _loader


def test_library_records_the_running_tf_version(op_lib):
    assert _loader._recorded_tf_version(_loader.LIBRARY_PATH) == tf.__version__
    exported = ctypes.CDLL(str(_loader.LIBRARY_PATH)).keras_margin_tf_version
    exported.restype = ctypes.c_char_p
    assert exported().decode() == tf.__version__


def test_mismatched_library_is_refused_without_loading(tmp_path, monkeypatch):
    fake = tmp_path / "_circle_loss_op.so"
    fake.write_bytes(b"\x7fELF junk KERAS_MARGIN_TF_VERSION=1.0.0\x00 more junk")
    monkeypatch.setattr(_loader, "LIBRARY_PATH", fake)
    with pytest.raises(_loader.CustomOpUnavailableError, match="built for TensorFlow 1.0.0"):
        _loader._load()


def test_missing_library_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_loader, "LIBRARY_PATH", tmp_path / "_circle_loss_op.so")
    with pytest.raises(_loader.CustomOpUnavailableError, match="was not built"):
        _loader._load()
