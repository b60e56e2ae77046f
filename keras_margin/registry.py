"""Registration of keras_margin losses: serialization, string names and the builtin-name opt-in.

``export_loss`` is the one decorator every loss class goes through. It

- registers the class and its per-sample function with
  ``keras.saving.register_keras_serializable(package="keras_margin.losses")``, so ``.keras``
  files round-trip once ``keras_margin`` is imported;
- makes ``"keras_margin>ClassName"`` and ``"keras_margin>function_name"`` valid strings for
  ``model.compile(loss=...)``. Keras resolves loss strings only from its own table (keras issue
  20112), so these namespaced keys are added to it; no Keras name changes meaning.

The compile strings and the registered names differ on purpose. A model compiled with a string
saves the string, and reloading passes every saved string through Keras's custom-object
registry, which would turn a registered name into the bare class object (no loss instance, no
``get_config``). Kept out of the registry, the string reloads as the same string and resolves
again, as Keras's own names do.

As with Keras's own names, the class name gives an instance of the class and the function name
gives the function (which ``compile`` wraps in a ``LossFunctionWrapper``).

``use_builtin_names()`` is the explicit, process-wide opt-in that makes Keras's plain names
(``"circle"``, ``"Hinge"``, ...) resolve to keras_margin, and ``restore_builtin_names()`` ends
it. It is not scoped: Keras resolves a compiled loss string only at the first ``fit`` or
``evaluate`` (and again after every reload), so a scope around ``compile`` would have ended
before the string is ever looked up.
"""

import keras

from keras_margin._keras_internals import LOSS_NAME_TABLE

# The prefix of the compile strings, and the package of the registered (serialized) names.
STRING_PREFIX = "keras_margin"
SERIALIZATION_PACKAGE = "keras_margin.losses"

# Plain names -> keras_margin classes and functions; put in Keras's table by the opt-in.
_BUILTIN_NAMES = {}
# What Keras's table held under each plain name before the opt-in replaced it.
_KERAS_ENTRIES = {}
_ABSENT = object()


def export_loss(function):
    """Class decorator: registers a loss class and its function under ``keras_margin>``.

    Args:
        function: The per-sample loss function that goes with the class.
    """

    def register(cls):
        for obj in (cls, function):
            keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)(obj)
            LOSS_NAME_TABLE[f"{STRING_PREFIX}>{obj.__name__}"] = obj
            _BUILTIN_NAMES[obj.__name__] = obj
        return cls

    return register


class _ProcessWideOptIn:
    """What ``use_builtin_names()`` returns: an object that refuses to be a context manager."""

    def __enter__(self):
        raise TypeError(
            "keras_margin.use_builtin_names() is a process-wide opt-in with no scoped (`with`) "
            "form: Keras looks a compiled loss string up at the first `fit` or `evaluate`, "
            "after such a block would have ended. Call keras_margin.use_builtin_names() on its "
            "own, and keras_margin.restore_builtin_names() to end it. This call has turned the "
            "opt-in on; it stays on until restore_builtin_names()."
        )

    # Python looks up both methods before it calls `__enter__`; without this one the
    # with-statement would fail with its own message instead.
    def __exit__(self, *exc_info):
        return False

    def __repr__(self):
        return "<keras_margin.use_builtin_names(): ended by keras_margin.restore_builtin_names()>"


def use_builtin_names():
    """Makes Keras's plain loss names resolve to keras_margin's implementations, until
    ``restore_builtin_names()``.

    While it is on, every string look-up of a plain name (``"circle"``, ``"Circle"``,
    ``"hinge"``, ``"categorical_hinge"``, ...) gives keras_margin's loss, and
    ``"categorical_generalized_cross_entropy"`` resolves too, which Keras alone cannot do:

    >>> keras_margin.use_builtin_names()
    >>> model.compile(optimizer="adam", loss="categorical_hinge")
    >>> model.fit(x, y)  # trains with keras_margin.losses.categorical_hinge

    The opt-in is process-wide and has no scoped form: Keras looks a compiled loss string up at
    the first ``fit`` or ``evaluate``, not in ``compile``, so it must still be on then. A model
    compiled with a plain string stores only that string, so a process that reloads it
    resolves the name with the opt-in of that process. Calling it again changes nothing.

    ``with keras_margin.use_builtin_names():`` raises a ``TypeError`` that says so. The call
    before ``with`` has already turned the opt-in on, and it stays on, as after any other call:
    undoing it could end an opt-in that other code had turned on, and only
    ``restore_builtin_names()`` ends it.

    Returns:
        An object whose only use is to make the ``with`` form raise that ``TypeError``.
    """
    for name, obj in _BUILTIN_NAMES.items():
        _KERAS_ENTRIES.setdefault(name, LOSS_NAME_TABLE.get(name, _ABSENT))
        LOSS_NAME_TABLE[name] = obj
    return _ProcessWideOptIn()


def restore_builtin_names():
    """Gives Keras's plain loss names their Keras meaning again, ending the opt-in.

    Models compiled while the opt-in was on, and not yet trained or evaluated, will resolve
    their loss strings to Keras's losses.
    """
    for name, entry in _KERAS_ENTRIES.items():
        if entry is _ABSENT:
            LOSS_NAME_TABLE.pop(name, None)
        else:
            LOSS_NAME_TABLE[name] = entry
    _KERAS_ENTRIES.clear()
