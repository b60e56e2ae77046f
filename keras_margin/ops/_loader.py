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
_engine_error: str | None = None
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
    if _exported_text("keras_margin_tf_version") != built_for:
        raise CustomOpUnavailableError(f"{LIBRARY_PATH} has inconsistent version records")
    return module


def _exported_text(name: str) -> str | None:
    """What the loaded library's C function ``name`` returns: a string, or None."""
    try:
        function = getattr(ctypes.CDLL(str(LIBRARY_PATH)), name)
    except AttributeError:
        raise CustomOpUnavailableError(
            f"{LIBRARY_PATH} has no function {name}: it was built from other keras_margin "
            f"sources; rebuild it with `{REBUILD_COMMAND}`"
        ) from None
    function.restype = ctypes.c_char_p
    text = function()
    return None if text is None else text.decode()


def load_library() -> ModuleType:
    """The op module from ``tf.load_op_library``; raises CustomOpUnavailableError if unusable.

    The first call does the loading, which also selects the CPU engine: a
    ``KERAS_MARGIN_ENGINE_ISA`` that names no build, or one that cannot run here, raises
    ``ValueError`` (the library's own message, which lists the accepted values), since running
    another build than the one asked for would silently change every result. Later calls return
    the cached module or re-raise the remembered error.
    """
    global _module, _reason, _engine_error, _attempted
    with _lock:
        if not _attempted:
            _attempted = True
            try:
                module = _load()
                # The kernels check the variable too, for clients that never import
                # keras_margin (TF Serving); checked here, the error is a Python exception
                # before any graph is built.
                _engine_error = _exported_text("keras_margin_engine_selection_error")
                from keras_margin.ops import circle

                circle.register_gradient()
                _module = module
            except CustomOpUnavailableError as e:
                _reason = str(e)
        if _module is None:
            raise CustomOpUnavailableError(_reason)
        if _engine_error is not None:
            raise ValueError(_engine_error)
        return _module


def custom_op_available() -> bool:
    """Whether the fused op library can be used (loads it on first call).

    Raises:
        ValueError: ``KERAS_MARGIN_ENGINE_ISA`` names an engine that cannot run (see
            ``engine_isa``).
    """
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

    The op library's own build is AVX2 (``"portable"`` when built without AVX2); on x86-64 the
    engine is built for AVX-512 as well, in its own library, which the op uses on CPUs that
    have AVX-512. ``KERAS_MARGIN_ENGINE_ISA``, set before the op library loads (the first
    Circle call), picks one instead: one of these three names, or ``"baseline"`` for the op
    library's own build.

    Raises:
        CustomOpUnavailableError: The op is unusable.
        ValueError: ``KERAS_MARGIN_ENGINE_ISA`` is not one of those values, or names a build
            that cannot run here (``"avx512"`` on a CPU without AVX-512, or a build the op
            library does not hold).
    """
    load_library()
    return _exported_text("keras_margin_engine_isa")
