"""The training-curve figure: colours by loss, labelled axes, and a legend off the data."""

import numpy as np
import pytest

from keras_margin_cli import plots


def history(seed, epochs=12, retrieval=False):
    rng = np.random.default_rng(seed)
    found = {"loss": list(rng.random(epochs)), "val_loss": list(rng.random(epochs))}
    if retrieval:
        found |= {
            "val_recall_at_1": list(rng.random(epochs)),
            "val_map_at_r": list(rng.random(epochs)),
        }
    else:
        found |= {"accuracy": list(rng.random(epochs)), "val_accuracy": list(rng.random(epochs))}
    return found


@pytest.fixture
def noisy_comparison():
    curves = [(label, history(seed)) for label in ("cross_entropy", "gce") for seed in (0, 1, 2)]
    figure = plots.curves_figure(curves, noisy_training_labels=True)
    figure.canvas.draw()
    yield figure
    plots._pyplot().close(figure)


def test_each_loss_has_one_colour_and_each_seed_a_thin_line(noisy_comparison):
    for axis in noisy_comparison.axes:
        colours = {}
        for line in axis.get_lines():
            colours.setdefault(line.get_color(), []).append(line.get_linewidth())
        assert len(colours) == 2  # one per loss
        for widths in colours.values():
            # train and test: three thin seed lines and one bold mean each
            assert sorted(widths) == [0.6] * 6 + [1.8] * 2


def test_every_panel_is_labelled_with_whole_epoch_ticks(noisy_comparison):
    titles = [axis.get_title() for axis in noisy_comparison.axes]
    assert titles == ["loss", "accuracy"]
    for axis in noisy_comparison.axes:
        assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == axis.get_title()
        ticks = [t for t in axis.get_xticks() if 1 <= t <= 12]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_legend_names_the_losses_and_noisy_training_labels_off_the_data(noisy_comparison):
    (legend,) = noisy_comparison.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[:2] == ["cross_entropy", "gce"]
    assert "train (noisy labels)" in labels and "test (held out)" in labels
    renderer = noisy_comparison.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for axis in noisy_comparison.axes:
        assert not box.overlaps(axis.get_window_extent(renderer))
        assert axis.get_legend() is None


def test_retrieval_panels_for_embeddings():
    figure = plots.curves_figure([("Circle", history(0, retrieval=True))])
    assert [axis.get_title() for axis in figure.axes] == ["loss", "Recall@1", "MAP@R"]
    (retrieval_line,) = figure.axes[1].get_lines()  # held-out only: dashed
    assert retrieval_line.get_linestyle() == "--"
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "train" in labels and "one seed (bold: mean)" not in labels
    plots._pyplot().close(figure)
