"""What the losses need beyond ``keras.ops`` on the PyTorch backend.

Eagerly a bad value raises, as on NumPy. Under ``torch.compile`` (Keras's
``jit_compile=True`` on this backend) nothing can raise at run time without breaking the
graph, so the check is left to the NaN the losses give the affected rows, exactly as under
TensorFlow's XLA and ``jax.jit``.
"""

import torch

from keras_margin import eager_runtime
from keras_margin.eager_runtime import assert_same_size, index_dtype, reshape_to_rows, to_tensor

__all__ = ["assert_all", "assert_same_size", "index_dtype", "reshape_to_rows", "to_tensor"]


def assert_all(valid, message, tensor):
    if torch.compiler.is_compiling():
        return tensor
    return eager_runtime.assert_all(valid, message, tensor)
