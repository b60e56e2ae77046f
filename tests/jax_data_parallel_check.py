"""Trains one model on one JAX device and under ``keras.distribution.DataParallel`` over two
(forced host CPU devices), and prints both loss histories and final weights as JSON.

Run by ``tests/test_jax_data_parallel.py`` in its own process: the device count must be set
before JAX starts.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import losses  # noqa: E402

LOSSES = {
    "circle-composite": lambda: losses.Circle(gamma=16.0, implementation="composite"),
    "circle-fused": lambda: losses.Circle(gamma=16.0, implementation="fused"),
    "gce": lambda: losses.CategoricalGeneralizedCrossEntropy(q=0.7),
}


def train(name, distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(3)
    head = [keras.layers.Dense(4, activation="softmax")]
    if name.startswith("circle"):
        head = [keras.layers.Dense(6), keras.layers.UnitNormalization()]
    model = keras.Sequential([keras.Input((8,)), *head])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSSES[name]())
    rng = np.random.default_rng(7)
    x = rng.normal(size=(48, 8)).astype("float32")
    y = rng.integers(0, 4, 48)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return {
        "loss": history.history["loss"],
        "weights": [w.tolist() for w in model.get_weights()],
    }


if __name__ == "__main__":
    name = sys.argv[1]
    assert len(jax.devices()) == 2, jax.devices()
    single = train(name, None)
    parallel = train(name, keras.distribution.DataParallel(devices=jax.devices()))
    print(json.dumps({"single": single, "data_parallel": parallel}))
