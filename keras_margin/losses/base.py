"""The base class shared by every keras_margin loss, and its argument checks."""

import inspect
import math

import keras
import numpy as np
from keras import ops

from keras_margin._keras_internals import get_keras_mask
from keras_margin.losses.labels import class_id_tensor
from keras_margin.losses.reduction import reduce_losses, validate_reduction


def validate_finite(name, value):
    """Returns ``value`` as a Python float if it is a finite real number, else raises.

    Raises:
        TypeError: ``value`` is not a real number (bools are rejected too).
        ValueError: ``value`` is NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"Argument `{name}` must be a finite float; received {name}={value!r}.")
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError(
            f"Argument `{name}` must be a finite float; received an integer of "
            f"{len(str(abs(value)))} digits, beyond the float range."
        ) from None
    if not math.isfinite(as_float):
        raise ValueError(f"Argument `{name}` must be a finite float; received {name}={value!r}.")
    return as_float


def validate_bool(name, value):
    """Returns ``value`` as a Python bool if it is one (NumPy's included), else raises."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Argument `{name}` must be a bool; received {name}={value!r}.")
    return bool(value)


# The argument docs every loss class shares, formatted into their docstrings.
REDUCTION_DOC = """reduction: How per-sample losses are reduced. Supported options are `"sum"`,
            `"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"`, `"none"` or
            `None`. `"sum"` sums the loss, `"sum_over_batch_size"` and `"mean"` divide the sum
            by the number of elements, `"mean_with_sample_weight"` divides it by the sum of the
            sample weights, and `"none"`/`None` return per-sample losses. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss instance.
        dtype: Compute dtype of the loss. `None` (the default) uses `keras.backend.floatx()`.
            If a `keras.DTypePolicy` is given, its `compute_dtype` is used. Unlike Keras 3.15,
            it is part of `get_config`."""


class MarginLoss(keras.losses.Loss):
    """A ``keras.losses.Loss`` that wraps a per-sample loss function.

    It differs from Keras's own wrapper in two ways that fix Keras 3.15 defects:

    - labels reach the loss function through ``convert_labels``, so losses that take integer
      class ids never see them rounded through a low-precision float dtype;
    - ``get_config`` keeps ``dtype``, so ``from_config`` restores it.

    Subclasses set ``fn`` (the per-sample function) and pass its hyper-parameters to
    ``__init__`` as ``fn_kwargs``; those also become the config.

    Args:
        reduction: How per-sample losses are reduced: `"sum"`, `"sum_over_batch_size"`,
            `"mean"`, `"mean_with_sample_weight"`, `"none"` or `None`.
        name: Name of the loss instance.
        dtype: Compute dtype of the loss, a string or a `keras.DTypePolicy` (its
            compute dtype is used). `None` follows `keras.backend.floatx()`.
    """

    def __init__(self, fn, *, reduction, name, dtype, **fn_kwargs):
        reduction = validate_reduction(reduction)
        try:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
        except (AttributeError, TypeError, ValueError) as error:
            raise ValueError(
                "Argument `dtype` must be None, a dtype name or a `keras.DTypePolicy` (or its "
                f"config); received dtype={dtype!r} ({error})."
            ) from None
        self.fn = fn
        # The hyper-parameters are attributes, as on Keras's classes (`loss.gamma`, `loss.q`);
        # `call` and `get_config` read them from there.
        self._fn_arg_names = tuple(fn_kwargs)
        for key, value in fn_kwargs.items():
            setattr(self, key, value)
        # `None` is kept as such so that a restored loss follows the floatx of its new process.
        self._dtype_config = None if dtype is None else self._dtype_policy.name

    @property
    def fn_kwargs(self):
        """The keyword arguments ``call`` passes to ``fn``: the hyper-parameter attributes."""
        return {key: getattr(self, key) for key in self._fn_arg_names}

    def convert_labels(self, y_true):
        """Converts labels for ``fn``; by default to the loss dtype, as Keras does."""
        return ops.convert_to_tensor(y_true, dtype=self.dtype)

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.fn_kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        input_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            losses = self.call(self.convert_labels(y_true), y_pred)
            loss_mask = get_keras_mask(losses)
            if input_mask is None or loss_mask is None:
                mask = loss_mask if input_mask is None else input_mask
            else:
                mask = ops.logical_and(input_mask, loss_mask)
            return reduce_losses(
                ops.convert_to_tensor(losses, dtype=self.dtype),
                sample_weight=sample_weight,
                mask=mask,
                reduction=self.reduction,
            )

    def get_config(self):
        return {
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self._dtype_config,
            **self.fn_kwargs,
        }

    @classmethod
    def from_config(cls, config):
        """Restores a loss; a config that does not fit raises ``ValueError`` naming the key.

        ``.keras`` files are untrusted input: Keras reports a ``TypeError`` raised here as a
        generic "could not be deserialized" error, so every problem is a ``ValueError``.
        """
        if not isinstance(config, dict):
            raise ValueError(f"A {cls.__name__} config must be a dict; received {config!r}.")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} config key(s) {unknown}; expected some of "
                f"{sorted(accepted)}."
            )
        try:
            return super().from_config(config)
        except TypeError as error:
            raise ValueError(f"Invalid {cls.__name__} config: {error}") from None


class ClassIdLoss(MarginLoss):
    """A ``MarginLoss`` whose labels are integer class ids, kept out of the float dtype."""

    def convert_labels(self, y_true):
        # The loss function checks and converts them; casting here to the loss dtype could
        # round large ids (bfloat16 holds integers exactly only up to 256).
        return class_id_tensor(y_true, "y_true")
