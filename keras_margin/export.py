"""SavedModel export helpers.

A plain ``model.export(path)`` never contains a loss, so it serves from stock TensorFlow (and
TF Serving) with no keras_margin installed. ``add_loss_endpoint`` is for the rarer case of an
evaluation endpoint that computes a keras_margin loss on the server.
"""

import tensorflow as tf

DEFAULT_ENDPOINT = "compute_loss"


def servable_loss(loss):
    """Returns ``loss`` made of stock TensorFlow ops where that is a choice.

    A Circle loss with ``implementation="auto"`` would embed the fused op whenever it is loaded
    at export time, and a SavedModel holding an op that the server has not registered fails to
    load for every signature. So ``"auto"`` becomes ``"composite"``; an explicit ``"fused"`` is
    kept, for servers built with the op.
    """
    config = loss.get_config()
    if config.get("implementation") != "auto":
        return loss
    return type(loss).from_config({**config, "implementation": "composite"})


def add_loss_endpoint(archive, model, loss, label_spec, name=DEFAULT_ENDPOINT):
    """Adds an endpoint ``name(inputs, labels) -> {"loss": ...}`` to a Keras export archive.

    Example:

    ```python
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [tf.TensorSpec([None, 64], tf.float32)])
    keras_margin.export.add_loss_endpoint(
        archive, model, keras_margin.losses.Circle(), tf.TensorSpec([None], tf.int64)
    )
    archive.write_out("exported/1")
    ```

    The endpoint runs ``model(inputs, training=False)`` and reduces ``loss`` over the request
    as the loss is configured to. Circle's ``"auto"`` implementation is exported as
    ``"composite"`` (see ``servable_loss``), so the SavedModel holds only stock ops; with
    ``implementation="fused"`` the server must load keras_margin's op library (TF Serving:
    a server built with the op).

    Args:
        archive: A ``keras.export.ExportArchive`` that tracks ``model``.
        model: A Keras model with a single input.
        loss: A keras_margin loss instance.
        label_spec: A ``tf.TensorSpec`` for the labels.
        name: Name of the endpoint (and serving signature).
    """
    if len(model.inputs) != 1:
        raise ValueError(
            f"Argument `model` must have exactly one input; it has {len(model.inputs)}."
        )
    if not isinstance(label_spec, tf.TensorSpec):
        raise TypeError(f"Argument `label_spec` must be a tf.TensorSpec; received {label_spec!r}.")
    loss = servable_loss(loss)
    inputs = model.inputs[0]
    input_spec = tf.TensorSpec(inputs.shape, inputs.dtype, name="inputs")
    label_spec = tf.TensorSpec(label_spec.shape, label_spec.dtype, name="labels")

    def compute_loss(inputs, labels):
        return {"loss": loss(labels, model(inputs, training=False))}

    archive.add_endpoint(name, compute_loss, input_signature=[input_spec, label_spec])
