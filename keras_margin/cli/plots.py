"""PNG figures for a training run, drawn off-screen with matplotlib."""

from __future__ import annotations

import numpy as np

from keras_margin.cli.data import import_examples_dependency


def _pyplot():
    import_examples_dependency("matplotlib").use("Agg")  # no display on servers and CI
    return import_examples_dependency("matplotlib.pyplot")


def training_curves(histories, path):
    """One panel per metric; a colour per run, solid for training and dashed for test data."""
    plt = _pyplot()
    names = [name for name in next(iter(histories.values())) if not name.startswith("val_")]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for i, (run, history) in enumerate(histories.items()):
            epochs = range(1, len(history[name]) + 1)
            color = f"C{i}"
            axis.plot(epochs, history[name], color=color, label=f"{run} (train)")
            if f"val_{name}" in history:
                axis.plot(epochs, history[f"val_{name}"], "--", color=color, label=f"{run} (test)")
        axis.set_xlabel("epoch")
        axis.set_title(name)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def embedding_projection(embeddings, labels, path, title, seed, max_points=2000):
    """A t-SNE map of test embeddings, coloured by class (a random subset past ``max_points``)."""
    plt = _pyplot()
    manifold = import_examples_dependency("sklearn.manifold")
    rng = np.random.default_rng(seed)
    if len(labels) > max_points:
        keep = rng.choice(len(labels), size=max_points, replace=False)
        embeddings, labels = embeddings[keep], labels[keep]
    points = manifold.TSNE(n_components=2, init="pca", random_state=seed).fit_transform(embeddings)
    figure, axis = plt.subplots(figsize=(6, 6))
    scatter = axis.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=8)
    axis.legend(*scatter.legend_elements(), title="class", fontsize="small", loc="best")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
