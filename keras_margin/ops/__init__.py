"""Fused TensorFlow ops backing keras_margin's losses.

Importing this package has no side effect on TensorFlow: the compiled library
``_circle_loss_op.so`` is loaded, and its gradient registered, on the first call that
needs it (``custom_op_available()``, ``custom_op_unavailable_reason()`` or ``circle_loss``).
"""

from keras_margin.ops._loader import (
    CustomOpUnavailableError,
    custom_op_available,
    custom_op_unavailable_reason,
    engine_isa,
)
from keras_margin.ops.circle import circle_loss

__all__ = [
    "CustomOpUnavailableError",
    "circle_loss",
    "custom_op_available",
    "custom_op_unavailable_reason",
    "engine_isa",
]
