"""Figures: what a reader needs to read them (a title, whole epochs on the axis)."""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lib.eval import plots


def test_learning_curve_ticks_whole_epochs():
    metrics = [{"epoch": e, "loss": 3.0 / e, "loss_ce": 1.0 / e, "knn_acc_bank": 0.2 * e, "knn_acc_extracted": None}
               for e in (1, 2, 3)]
    figure = plots.learning_curve(metrics, "run")
    FigureCanvasAgg(figure).draw()
    for axes in figure.axes:
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_confusion_matrix_has_a_title():
    figure = plots.confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], "kNN (K = 10) on the test split")
    assert figure.axes[0].get_title() == "kNN (K = 10) on the test split"
