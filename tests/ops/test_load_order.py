"""The XLA lowering must work whichever comes first: the library or the first jit compile.

TF turns REGISTER_XLA_OP entries into JIT kernels once, at the first XLA compilation of the
process; the library registers its JIT kernels itself when it is loaded after that. Each
order needs a fresh process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    if {jit_first}:
        assert float(tf.function(lambda v: v * 2.0, jit_compile=True)(tf.constant(1.5))) == 3.0

    from keras_margin.ops import circle_loss, custom_op_available
    assert custom_op_available()

    x = tf.math.l2_normalize(tf.random.stateless_normal([24, 6], seed=[1, 2]), axis=1)
    labels = tf.constant(np.arange(24) % 5, tf.int32)

    def loss_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(circle_loss(x, labels, gamma=80.0, margin=0.4,
                                             remove_diagonal=True))
        return loss, tape.gradient(loss, x)

    jit_fn = tf.function(loss_and_grad, jit_compile=True)
    # On CPU the FFI custom call, whose handlers register at load in either order.
    hlo = jit_fn.experimental_get_compiler_ir(x)(stage="hlo")
    assert 'custom_call_target="keras_margin_circle_loss_grad"' in hlo
    jit_loss, jit_grad = jit_fn(x)
    loss, grad = loss_and_grad(x)
    np.testing.assert_allclose(jit_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(jit_grad, grad, rtol=1e-4, atol=1e-4)
    print("OK")
    """
)


@pytest.mark.parametrize("jit_first", [True, False], ids=["jit-before-load", "load-before-jit"])
def test_jit_after_any_load_order(jit_first):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(jit_first=jit_first)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
