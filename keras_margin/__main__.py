"""`python -m keras_margin`: a one-minute demonstration of the losses on synthetic data.

It trains a small embedding network with Circle on Gaussian clusters and reports Recall@1 of
held-out points against the training set, then a linear classifier with CategoricalHinge and
reports its held-out accuracy. The configurable command line replaces it in a later release.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import losses  # noqa: E402


def clustered_data(rng, classes, per_class, dim):
    centers = rng.normal(size=(classes, dim)) * 2.0
    labels = np.repeat(np.arange(classes), per_class)
    points = centers[labels] + rng.normal(size=(labels.size, dim))
    order = rng.permutation(labels.size)
    return points[order].astype("float32"), labels[order]


def recall_at_1(query, query_labels, index, index_labels):
    nearest = np.argmax(query @ index.T, axis=1)
    return float(np.mean(index_labels[nearest] == query_labels))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)
    x, y = clustered_data(rng, classes=8, per_class=200, dim=16)
    split = int(0.8 * len(y))

    embedder = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(16),
            keras.layers.UnitNormalization(),
        ]
    )
    embedder.compile(optimizer="adam", loss=losses.Circle(gamma=32.0, margin=0.25))
    embedder.fit(x[:split], y[:split], batch_size=128, epochs=args.epochs, verbose=2)
    train_emb = embedder.predict(x[:split], verbose=0)
    test_emb = embedder.predict(x[split:], verbose=0)
    recall = recall_at_1(test_emb, y[split:], train_emb, y[:split])
    print(f"Circle embedding: held-out Recall@1 = {recall:.3f}")

    classifier = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    classifier.compile(
        optimizer=keras.optimizers.Adam(0.02), loss=losses.CategoricalHinge(), metrics=["accuracy"]
    )
    one_hot = np.eye(8, dtype="float32")[y]
    classifier.fit(x[:split], one_hot[:split], batch_size=128, epochs=args.epochs, verbose=2)
    _, accuracy = classifier.evaluate(x[split:], one_hot[split:], verbose=0)
    print(f"CategoricalHinge classifier: held-out accuracy = {accuracy:.3f}")


if __name__ == "__main__":
    main()
