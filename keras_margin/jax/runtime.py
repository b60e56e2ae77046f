"""What the losses need beyond ``keras.ops`` on the JAX backend.

Eagerly a bad value raises, as on PyTorch. Under ``jax.jit`` values are tracers and nothing can
raise at run time, so the check is left to the NaN the losses give the affected rows, exactly
as under TensorFlow's XLA. Without ``jax_enable_x64`` JAX has no 64-bit integers, so class ids
are int32 there.
"""

import jax

from keras_margin import eager_runtime
from keras_margin.eager_runtime import assert_same_size, reshape_to_rows, to_tensor

__all__ = ["assert_all", "assert_same_size", "index_dtype", "reshape_to_rows", "to_tensor"]


def index_dtype():
    # Read on each call: jax_enable_x64 can be switched after import.
    return "int64" if jax.config.jax_enable_x64 else "int32"


def assert_all(valid, message, tensor):
    if isinstance(valid, jax.core.Tracer):
        return tensor
    return eager_runtime.assert_all(valid, message, tensor)
