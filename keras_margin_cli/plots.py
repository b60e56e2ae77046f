"""PNG figures for a training run, drawn off-screen with matplotlib."""

from __future__ import annotations

import numpy as np

from keras_margin_cli.data import import_examples_dependency

PANEL_TITLES = {"recall_at_1": "Recall@1", "map_at_r": "MAP@R"}


def _pyplot():
    import_examples_dependency("matplotlib").use("Agg")  # no display on servers and CI
    return import_examples_dependency("matplotlib.pyplot")


def _metric_names(curves):
    """Each metric once, in history order; ``val_x`` and ``x`` share the panel ``x``."""
    names = {"loss": None}
    for _, history in curves:
        for key in history:
            names.setdefault(key.removeprefix("val_"), None)
    return list(names)


def training_curves(curves, path, noisy_training_labels=False):
    """Saves ``curves_figure`` as a PNG."""
    figure = curves_figure(curves, noisy_training_labels)
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)


def curves_figure(curves, noisy_training_labels=False):
    """One panel per metric: a colour per loss, solid for training and dashed for test data.

    ``curves`` is a list of ``(loss label, Keras history dict)``; a label that appears several
    times (one per seed) is drawn as a thin line per seed and their mean in bold. The legend
    sits outside the panels so that it hides no data.
    """
    plt = _pyplot()
    lines = import_examples_dependency("matplotlib.lines")
    ticker = import_examples_dependency("matplotlib.ticker")
    seeds_of = {}
    for label, history in curves:
        seeds_of.setdefault(label, []).append(history)
    names = _metric_names(curves)
    figure, axes = plt.subplots(
        1, len(names), figsize=(4.5 * len(names) + 2, 4), squeeze=False, layout="constrained"
    )
    for axis, name in zip(axes[0], names, strict=True):
        for number, histories in enumerate(seeds_of.values()):
            for key, style in ((name, "-"), (f"val_{name}", "--")):
                series = np.array([history[key] for history in histories if key in history])
                if not len(series):
                    continue
                epochs = np.arange(1, series.shape[1] + 1)
                if len(series) > 1:
                    axis.plot(epochs, series.T, style, color=f"C{number}", lw=0.6, alpha=0.5)
                axis.plot(epochs, series.mean(axis=0), style, color=f"C{number}", lw=1.8)
        title = PANEL_TITLES.get(name, name)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(title)
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    train = "train (noisy labels)" if noisy_training_labels else "train"
    handles = [
        lines.Line2D([], [], color=f"C{number}", lw=1.8, label=label)
        for number, label in enumerate(seeds_of)
    ]
    handles += [
        lines.Line2D([], [], color="gray", ls="-", label=train),
        lines.Line2D([], [], color="gray", ls="--", label="test (held out)"),
    ]
    if any(len(histories) > 1 for histories in seeds_of.values()):
        handles.append(lines.Line2D([], [], color="gray", lw=0.6, label="one seed (bold: mean)"))
    figure.legend(handles=handles, loc="outside right upper", fontsize="small")
    return figure


def embedding_projection(embeddings, labels, path, title, seed, max_points=2000):
    """A t-SNE map of test embeddings, coloured by class (a random subset past ``max_points``)."""
    plt = _pyplot()
    manifold = import_examples_dependency("sklearn.manifold")
    rng = np.random.default_rng(seed)
    if len(labels) > max_points:
        keep = rng.choice(len(labels), size=max_points, replace=False)
        embeddings, labels = embeddings[keep], labels[keep]
    points = manifold.TSNE(n_components=2, init="pca", random_state=seed).fit_transform(embeddings)
    figure, axis = plt.subplots(figsize=(7, 6), layout="constrained")
    scatter = axis.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=8)
    figure.legend(
        *scatter.legend_elements(), title="class", fontsize="small", loc="outside right upper"
    )
    axis.set_title(title)
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    axis.set_xticks([])
    axis.set_yticks([])
    figure.savefig(path, dpi=100)
    plt.close(figure)
