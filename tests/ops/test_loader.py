"""The loader's version record, and what users get from a library built for another TensorFlow
or one that cannot be loaded: real compiled libraries, in fresh processes."""

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from keras_margin.ops import _loader

VERSION_SOURCE = Path(__file__).parents[2] / "tf_ops" / "version.cc"
PROBE = Path(__file__).with_name("version_skew_probe.py")


def test_library_records_the_running_tf_version(op_lib):
    assert _loader._recorded_tf_version(_loader.LIBRARY_PATH) == tf.__version__
    exported = ctypes.CDLL(str(_loader.LIBRARY_PATH)).keras_margin_tf_version
    exported.restype = ctypes.c_char_p
    assert exported().decode() == tf.__version__


def _build(directory, recorded_version, *extra_sources):
    """Compiles the op's version record (plus ``extra_sources``) into a real shared library."""
    library = directory / "_circle_loss_op.so"
    command = ["g++", "-shared", "-fPIC", f"-DKERAS_MARGIN_TF_VERSION={recorded_version}"]
    subprocess.run(
        [*command, str(VERSION_SOURCE), *map(str, extra_sources), "-o", str(library)],
        check=True,
    )
    return library


def _probe(library):
    result = subprocess.run(
        [sys.executable, str(PROBE), str(library)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_falls_back_once_and_fused_raises(report, reason_words):
    assert report["available"] is False
    for words in reason_words:
        assert words in report["reason"]
    assert _loader.REBUILD_COMMAND in report["reason"]
    (warning,) = report["warnings"]  # the second call does not warn again
    assert report["reason"] in warning and "composite path" in warning
    assert report["auto_equals_composite"]
    assert report["reason"] in report["fused_error"]


def test_library_built_for_another_tensorflow_falls_back(tmp_path):
    library = _build(tmp_path, "2.20.0")
    report = _probe(library)
    _assert_falls_back_once_and_fused_raises(
        report, ["built for TensorFlow 2.20.0", f"TensorFlow {tf.__version__} is installed"]
    )


def test_unloadable_library_falls_back(tmp_path):
    # A data symbol must resolve when the library is opened, so this one cannot be loaded.
    source = tmp_path / "unresolved.cc"
    source.write_text(
        "extern int keras_margin_missing_symbol;\n"
        'extern "C" int keras_margin_read() { return keras_margin_missing_symbol; }\n'
    )
    library = _build(tmp_path, tf.__version__, source)
    report = _probe(library)
    _assert_falls_back_once_and_fused_raises(
        report, ["could not load", "keras_margin_missing_symbol"]
    )


def test_missing_library_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_loader, "LIBRARY_PATH", tmp_path / "_circle_loss_op.so")
    with pytest.raises(_loader.CustomOpUnavailableError, match="was not built"):
        _loader._load()


def test_ops_is_reachable_after_a_plain_package_import():
    # docs/export.md's recipe calls keras_margin.ops.custom_op_available() after
    # `import keras_margin` alone; importing the package must not load the library.
    script = (
        "import json, sys, keras_margin\n"
        "imported_ops = 'keras_margin.ops' in sys.modules\n"
        "print(json.dumps([imported_ops, keras_margin.ops.custom_op_available()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, True]
