"""The Keras 3.15 defects keras_margin fixes: each test shows Keras's result and ours.

If a Keras release fixes one of these, its "keras is wrong" assertion fails, which is the
signal to drop the deviation from docs/deviations.md.
"""

import keras
import numpy as np
import reference
import tensorflow as tf

from keras_margin import losses

GCE_Y_TRUE = np.array([0, 1, 0, 1])
GCE_Y_PRED = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])


def test_1_gce_labels_of_shape_n_by_1():
    labels = GCE_Y_TRUE[:, None]
    keras_value = keras.losses.CategoricalGeneralizedCrossEntropy()(labels, GCE_Y_PRED)
    np.testing.assert_allclose(keras_value, 0.61497, atol=1e-5)  # broadcast to N x N
    ours = losses.CategoricalGeneralizedCrossEntropy()(labels, GCE_Y_PRED)
    np.testing.assert_allclose(ours, 0.35986, atol=1e-5)
    np.testing.assert_allclose(
        ours, losses.CategoricalGeneralizedCrossEntropy()(GCE_Y_TRUE, GCE_Y_PRED)
    )


def _gce_gradient(loss, labels, logits):
    logits = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(labels, tf.nn.softmax(logits))
    return value.numpy(), tape.gradient(value, logits).numpy()


def test_2_gce_gradient_is_finite_when_true_class_probability_is_zero():
    # softmax underflows: the true class (0) gets probability exactly 0.
    labels, logits = np.array([0, 1]), np.array([[-200.0, 200.0], [0.0, 1.0]])
    keras_value, keras_grad = _gce_gradient(
        keras.losses.CategoricalGeneralizedCrossEntropy(q=0.5), labels, logits
    )
    assert not np.all(np.isfinite(keras_grad))
    value, grad = _gce_gradient(losses.CategoricalGeneralizedCrossEntropy(q=0.5), labels, logits)
    assert np.all(np.isfinite(grad)) and np.isfinite(value)
    # Only the gradient changes: the value, 1/q = 2 for the p = 0 row, is Keras's exactly.
    rows = losses.categorical_generalized_cross_entropy(labels, tf.nn.softmax(logits), 0.5)
    assert float(rows[0]) == 2.0
    assert value == keras_value


def test_2_gce_training_step_never_produces_nan():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.layers[0].set_weights([np.array([[300.0, -300.0], [0.0, 0.0]]), np.zeros(2)])
    model.compile(optimizer="sgd", loss=losses.CategoricalGeneralizedCrossEntropy())
    model.fit(np.array([[1.0, 0.0]]), np.array([1]), epochs=1, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_3_gce_label_257_is_not_rounded_under_bfloat16():
    probs = np.full((1, 300), 0.5 / 298)
    probs[0, 256], probs[0, 257] = 0.4, 0.1
    labels = np.array([257])
    keras_value = keras.losses.CategoricalGeneralizedCrossEntropy(dtype="bfloat16")(labels, probs)
    ours = losses.CategoricalGeneralizedCrossEntropy(dtype="bfloat16")(labels, probs)
    want = reference.gce(labels, probs, 0.5)[0]  # p = 0.1 -> 1.3675
    assert abs(float(keras_value) - want) > 0.3  # Keras read class 256 (p = 0.4)
    np.testing.assert_allclose(float(ours), want, rtol=1e-2)


def test_3_circle_label_257_is_not_rounded_under_bfloat16(rng):
    labels = np.array([256, 256, 257, 257, 1, 1])
    x = rng.normal(size=(6, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = reference.circle(labels, x, gamma=16.0)
    ours = losses.Circle(gamma=16.0, reduction=None, dtype="bfloat16")(labels, x)
    np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=5e-2)
    keras_rows = keras.losses.Circle(gamma=16.0, reduction=None, dtype="bfloat16")(labels, x)
    merged = reference.circle(np.array([256, 256, 256, 256, 1, 1]), x, gamma=16.0)
    np.testing.assert_allclose(np.asarray(keras_rows, np.float32), merged, rtol=5e-2)
    assert np.max(np.abs(merged - want)) > 1.0


def test_4_get_config_keeps_dtype():
    keras_config = keras.losses.Hinge(dtype="float64").get_config()
    assert "dtype" not in keras_config
    assert keras.losses.Hinge.from_config(keras_config).dtype == "float32"
    for cls in (losses.Hinge, losses.SquaredHinge, losses.CategoricalHinge,
                losses.CategoricalGeneralizedCrossEntropy, losses.Circle):  # fmt: skip
        assert cls.from_config(cls(dtype="float64").get_config()).dtype == "float64"
