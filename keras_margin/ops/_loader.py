"""Lazy, version-checked loading of the compiled op library."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from types import ModuleType

LIBRARY_PATH = Path(__file__).with_name("_circle_loss_op.so")
_VERSION_MARKER = b"KERAS_MARGIN_TF_VERSION="
REBUILD_COMMAND = "python -m pip install --no-build-isolation --force-reinstall --no-deps -e ."

_lock = threading.Lock()
_module: ModuleType | None = None
_reason: str | None = None
_attempted = False


class CustomOpUnavailableError(RuntimeError):
    """The fused op library is missing, unloadable or built for another TensorFlow."""


def _recorded_tf_version(path: Path) -> str | None:
    """The TensorFlow version the library was built against, read from its bytes.

    Reading the file rather than calling the library's ``keras_margin_tf_version`` through
    ctypes avoids loading it: loading runs its op and kernel registrations, which must not
    happen for a library built against another TensorFlow, and which would also leave
    ``tf.load_op_library`` with no new ops to wrap.
    """
    data = path.read_bytes()
    start = data.find(_VERSION_MARKER)
    if start < 0:
        return None
    start += len(_VERSION_MARKER)
    end = data.find(b"\0", start)
    return data[start:end].decode("ascii", "replace")


def _load() -> ModuleType:
    import tensorflow as tf

    if not LIBRARY_PATH.is_file():
        raise CustomOpUnavailableError(
            f"{LIBRARY_PATH.name} was not built (expected at {LIBRARY_PATH}); build it with "
            f"g++ and TensorFlow {tf.__version__} installed: `{REBUILD_COMMAND}`"
        )
    built_for = _recorded_tf_version(LIBRARY_PATH)
    if built_for is None:
        raise CustomOpUnavailableError(
            f"{LIBRARY_PATH} records no TensorFlow version; rebuild it with `{REBUILD_COMMAND}`"
        )
    if built_for != tf.__version__:
        raise CustomOpUnavailableError(
            f"{LIBRARY_PATH.name} was built for TensorFlow {built_for} but TensorFlow "
            f"{tf.__version__} is installed; rebuild it with `{REBUILD_COMMAND}`"
        )
    try:
        module = tf.load_op_library(str(LIBRARY_PATH))
    except (tf.errors.OpError, OSError) as e:
        raise CustomOpUnavailableError(
            f"could not load {LIBRARY_PATH}: {e}; rebuild it with `{REBUILD_COMMAND}`"
        ) from e
    # Now that TF holds the library, ctypes gets the same handle without reloading it.
    exported = ctypes.CDLL(str(LIBRARY_PATH)).keras_margin_tf_version
    exported.restype = ctypes.c_char_p
    if exported().decode() != built_for:
        raise CustomOpUnavailableError(f"{LIBRARY_PATH} has inconsistent version records")
    return module


def load_library() -> ModuleType:
    """The op module from ``tf.load_op_library``; raises CustomOpUnavailableError if unusable.

    The first call does the loading; later calls return the cached module or re-raise the
    remembered reason.
    """
    global _module, _reason, _attempted
    with _lock:
        if not _attempted:
            _attempted = True
            try:
                _module = _load()
                from keras_margin.ops import circle

                circle.register_gradient()
            except CustomOpUnavailableError as e:
                _reason = str(e)
        if _module is None:
            raise CustomOpUnavailableError(_reason)
        return _module


def custom_op_available() -> bool:
    """Whether the fused op library can be used (loads it on first call)."""
    try:
        load_library()
    except CustomOpUnavailableError:
        return False
    return True


def custom_op_unavailable_reason() -> str | None:
    """Why the fused op cannot be used, or None if it can (loads it on first call)."""
    return None if custom_op_available() else _reason


def engine_isa() -> str:
    """The instruction set of the CPU engine the op runs: ``"avx512"``, ``"avx2"`` or
    ``"portable"``.

    The engine is built for AVX-512 as well, in its own library, which the op uses on CPUs
    that have AVX-512; ``KERAS_MARGIN_ENGINE_ISA=baseline``, set before the first Circle call,
    keeps the op library's own build. Raises CustomOpUnavailableError if the op is unusable.
    """
    load_library()
    isa = ctypes.CDLL(str(LIBRARY_PATH)).keras_margin_engine_isa
    isa.restype = ctypes.c_char_p
    return isa().decode()
