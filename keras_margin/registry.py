"""Registration of keras_margin losses: serialization, string names and the builtin-name opt-in.

``export_loss`` is the one decorator every loss class goes through. It

- registers the class and its per-sample function with
  ``keras.saving.register_keras_serializable(package="keras_margin")``, so ``.keras`` files
  round-trip once ``keras_margin`` is imported;
- makes ``"keras_margin>ClassName"`` and ``"keras_margin>function_name"`` valid strings for
  ``model.compile(loss=...)``. Keras resolves loss strings only from its own table (keras issue
  20112), so these namespaced keys are added to it; no Keras name changes meaning.

As with Keras's own names, the class name gives an instance of the class and the function name
gives the function (which ``compile`` wraps in a ``LossFunctionWrapper``). That is also what a
``.keras`` file restores them to, through the serialization registry.

``use_builtin_names()`` is the explicit opt-in that makes Keras's plain names (``"circle"``,
``"Hinge"``, ...) resolve to keras_margin, and ``restore_builtin_names()`` undoes it.
"""

import keras

from keras_margin._keras_internals import LOSS_NAME_TABLE

PACKAGE = "keras_margin"

# Plain names -> keras_margin classes; used only inside `use_builtin_names()`.
_BUILTIN_NAMES = {}
# What Keras's table held under each plain name before keras_margin first overrode it.
_KERAS_ENTRIES = {}
_ABSENT = object()


def export_loss(function):
    """Class decorator: registers a loss class and its function under ``keras_margin>``.

    Args:
        function: The per-sample loss function that goes with the class.
    """

    def register(cls):
        keras.saving.register_keras_serializable(package=PACKAGE)(cls)
        keras.saving.register_keras_serializable(package=PACKAGE)(function)
        for obj in (cls, function):
            LOSS_NAME_TABLE[f"{PACKAGE}>{obj.__name__}"] = obj
            _BUILTIN_NAMES[obj.__name__] = obj
        return cls

    return register


def _set_table(entries):
    for name, value in entries.items():
        if value is _ABSENT:
            LOSS_NAME_TABLE.pop(name, None)
        else:
            LOSS_NAME_TABLE[name] = value


class _BuiltinNamesScope:
    """Returned by ``use_builtin_names``; leaving it as a ``with`` block undoes the opt-in."""

    def __init__(self, previous_entries):
        self._previous_entries = previous_entries

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _set_table(self._previous_entries)


def use_builtin_names():
    """Makes Keras's plain loss names resolve to keras_margin's implementations.

    After this call, ``model.compile(loss="circle")`` (or ``"Circle"``, ``"hinge"``,
    ``"categorical_hinge"``, ...) uses keras_margin, and ``"categorical_generalized_cross_entropy"``
    resolves too, which Keras alone cannot do. It affects only string look-ups made while it is
    active; a model compiled inside it stores the plain string, so a fresh process resolves it
    again with whatever names are active there.

    It takes effect at once and can also be used as a context manager, which restores the
    previous names on exit:

    >>> with keras_margin.use_builtin_names():
    ...     model.compile(optimizer="adam", loss="circle")

    Returns:
        A context manager that undoes this call when its block ends.
    """
    previous = {name: LOSS_NAME_TABLE.get(name, _ABSENT) for name in _BUILTIN_NAMES}
    for name, entry in previous.items():
        _KERAS_ENTRIES.setdefault(name, entry)
    LOSS_NAME_TABLE.update(_BUILTIN_NAMES)
    return _BuiltinNamesScope(previous)


def restore_builtin_names():
    """Gives Keras's plain loss names their Keras meaning again, ending every opt-in."""
    _set_table(_KERAS_ENTRIES)
