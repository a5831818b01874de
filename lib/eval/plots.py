"""Figures of a run and of its evaluation, drawn with matplotlib's Agg canvas (no display, no global state).

Each function returns a ``Figure``; ``save`` writes it as PNG. TensorBoard takes the same figures.
"""
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

GOOD, BAD = "#1a9850", "#d73027"  # frames of correct and wrong retrieval results


def save(figure, path):
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=figure.dpi)


def learning_curve(metrics, title=""):
    """Losses and validation kNN accuracy per epoch, from the rows of metrics.jsonl."""
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    losses, accuracy = figure.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    for key in ("loss", "loss_snca", "loss_dcnn", "loss_triplet", "loss_ce"):
        if any(m.get(key) for m in metrics):
            losses.plot(epochs, [m.get(key) for m in metrics], label=key)
    losses.set(xlabel="epoch", ylabel="training loss", title="losses")
    losses.legend()
    for key in ("knn_acc_bank", "knn_acc_extracted"):
        if any(m.get(key) is not None for m in metrics):
            accuracy.plot(epochs, [100 * m[key] if m.get(key) is not None else np.nan for m in metrics],
                          label=key.replace("knn_acc_", "reference: "), marker=".")  # sparse: every N epochs
    accuracy.set(xlabel="epoch", ylabel="validation kNN accuracy (%)", title=title or "validation kNN")
    accuracy.legend()
    for axes in (losses, accuracy):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return figure


def confusion(matrix, classes, title="confusion matrix"):
    """Row-normalised confusion matrix (rows: true class, columns: predicted), class names on the axes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = max(5.0, 0.28 * len(classes) + 2)
    figure = Figure(figsize=(side, side), dpi=100, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    axes.set_xticks(ticks, classes, rotation=90, fontsize=7)
    axes.set_yticks(ticks, classes, fontsize=7)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    if len(classes) <= 20:
        for i, j in zip(*np.nonzero(matrix)):
            axes.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                      color="white" if rates[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, shrink=0.7, label="fraction of the true class")
    return figure


def pr_curve(recall, precision, label):
    figure = Figure(figsize=(5, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.plot(recall, precision, marker=".", label=label)
    axes.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02),
             title="precision-recall (mean over queries)")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def scatter_2d(points, labels, classes, title):
    """2-D points (t-SNE) coloured by class, with a legend."""
    figure = Figure(figsize=(9, 7), dpi=100, layout="constrained")
    axes = figure.subplots()
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    palette = palette if len(classes) <= 20 else palette.resampled(len(classes))
    for label, name in enumerate(classes):
        chosen = labels == label
        if chosen.any():
            axes.scatter(points[chosen, 0], points[chosen, 1], s=6, label=name, color=palette(label))
    axes.set(title=title, xticks=[], yticks=[])
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2,
                ncols=1 if len(classes) <= 25 else 2)
    return figure


def retrieval_grid(queries, results, correct, query_names, result_names):
    """One row per query: the query, then its ranked results framed green (same class) or red.

    ``queries`` (Q, H, W, 3) and ``results`` (Q, K, H, W, 3) are uint8 images; ``correct`` (Q, K) bool.
    """
    rows, k = correct.shape
    figure = Figure(figsize=(1.3 * (k + 1), 1.5 * rows), dpi=100, layout="constrained")
    grid = figure.subplots(rows, k + 1, squeeze=False)
    for r in range(rows):
        _tile(grid[r, 0], queries[r], f"query\n{query_names[r]}", "black")
        for c in range(k):
            _tile(grid[r, c + 1], results[r, c], f"{c + 1}. {result_names[r][c]}", GOOD if correct[r, c] else BAD)
    return figure


def _tile(axes, image, text, colour):
    axes.imshow(image)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    axes.set_xlabel(text, fontsize=6)
