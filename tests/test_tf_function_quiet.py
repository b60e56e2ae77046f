"""Every loss, in each call form, prints nothing inside a user's own ``tf.function``.

A custom training loop is where many TensorFlow users call a loss. AutoGraph converts the
Python functions such a call reaches and logs a warning for each one it cannot convert, once
per process, so the check runs in a fresh process and reads all of its stderr after the
imports: Python warnings (every one shown) and the ``tensorflow`` logger both write there.
"""

import os
import subprocess
import sys
import textwrap

MARKER = "--- imports done ---"

SCRIPT = textwrap.dedent(
    f"""
    import sys
    import warnings

    import numpy as np
    import tensorflow as tf

    from keras_margin import losses

    tf.config.list_physical_devices()  # device discovery logs its CUDA probing here
    warnings.simplefilter("always")
    print({MARKER!r}, file=sys.stderr, flush=True)

    rng = np.random.default_rng(0)
    x = tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 6)), tf.float32), axis=1)
    refs = tf.math.l2_normalize(tf.constant(rng.normal(size=(5, 6)), tf.float32), axis=1)
    ids = tf.constant([0, 0, 1, 1, 2, 2, 3, 3])
    ref_ids = tf.constant([0, 1, 2, 3, 3])
    logits = tf.constant(rng.normal(size=(8, 4)), tf.float32)
    one_hot = tf.one_hot(ids, 4)


    @tf.function
    def training_step():
        with tf.GradientTape() as tape:
            tape.watch([x, logits])
            probabilities = tf.nn.softmax(logits)
            values = {{
                "Circle()": losses.Circle()(ids, x),
                "Circle(composite)": losses.Circle(implementation="composite")(ids, x),
                "circle": losses.circle(ids, x),
                "circle(refs)": losses.circle(ids, x, ref_labels=ref_ids, ref_embeddings=refs),
                "circle(ref labels)": losses.circle(ids, x, ref_labels=ids),
                "CategoricalGeneralizedCrossEntropy()": (
                    losses.CategoricalGeneralizedCrossEntropy()(ids, probabilities)
                ),
                "categorical_generalized_cross_entropy": (
                    losses.categorical_generalized_cross_entropy(ids, probabilities)
                ),
                "Hinge()": losses.Hinge()(one_hot, logits),
                "SquaredHinge()": losses.SquaredHinge()(one_hot, logits),
                "CategoricalHinge()": losses.CategoricalHinge()(one_hot, logits),
                "hinge": losses.hinge(one_hot, logits),
            }}
            total = tf.add_n([tf.reduce_sum(value) for value in values.values()])
        return values, tape.gradient(total, [x, logits])


    values, gradients = training_step()
    for name, value in values.items():
        print(name, bool(np.all(np.isfinite(value.numpy()))))
    print("gradients", all(bool(np.all(np.isfinite(g.numpy()))) for g in gradients))
    """
)


def test_no_warning_or_log_line_in_a_users_tf_function(tmp_path):
    # From a file: AutoGraph converts only functions whose source it can read, and a
    # `python -c` script's cannot be, so its calls would all run unconverted.
    script = tmp_path / "training_step.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 12 and all(line.endswith(" True") for line in lines), result.stdout
    after_imports = result.stderr.split(MARKER + "\n", 1)[1]
    assert after_imports == "", after_imports
