"""The paper's tables and figures from finished runs: mean ± sample std over seeds, one row per method.

    python3 scripts/make_tables.py runs/paper                       # writes runs/paper/tables/
    python3 scripts/make_tables.py runs/a runs/b --out tables --split test

Every folder holding an ``args.json`` below the given folders is a run. Runs are grouped by the method, memory and
dataset recorded in their ``args.json``, never by folder name; the runs of a group are its seeds. Written to --out:

- ``tables.md``: one Markdown table per metric family (kNN, retrieval mAP, retrieval P@k, clustering, Recall@K and
  MAP@R, rotation robustness when evaluated, validation), cells ``mean ± std`` in percent (ANMRR x 100 too), an ``n``
  column per dataset counting the runs averaged. Runs trained with ``--split unseen`` form their own dataset column,
  "<dataset> (unseen classes)".
  Runs without ``eval/<split>/results.json`` (``scripts/evaluate.py``) count in the validation table only.
- ``tables.csv``: long format ``method, dataset, metric, mean, std, n``, values as recorded (fractions in [0, 1]).
- ``learning_curves.png``: validation kNN@10 per epoch, mean over seeds with a min..max band (the paper's Fig. 4).
- ``pr_curves.png``: interpolated precision against recall, mean over seeds.
"""
import argparse
import csv
import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NAMES = {"snca-ce": "SNCA-CE", "snca": "SNCA", "d-cnn": "D-CNN", "triplet": "Triplet"}  # also the row order
MEMORY_NAMED = {"snca-ce", "snca"}  # the methods trained with either memory; the baselines use the bank only
# The names of lib.robustness.D4, in its order (this script reads JSON only and imports nothing of the repository).
TRANSFORMS = ("identity", "rot90", "rot180", "rot270", "flip", "flip-rot90", "flip-rot180", "flip-rot270")
UNSEEN = " (unseen classes)"  # a --split unseen run's dataset column: its test split holds other classes
KNN = [(f"knn.{k}.{kind}", f"kNN@{k} {short}") for k in (1, 5, 10) for kind, short in (("overall", "OA"),
                                                                                     ("average", "AA"))]
TABLES = [  # (title, [(metric: path into results.json, column label)])
    ("kNN classification of the test split (OA overall, AA average accuracy, %)", KNN),
    ("Retrieval: mean average precision (%; ANMRR x 100, lower is better)",
     [("retrieval.map", "mAP"), ("retrieval.map@20", "mAP@20"), ("retrieval.map@50", "mAP@50"),
      ("retrieval.map@100", "mAP@100"), ("retrieval.r_precision", "R-prec."), ("retrieval.anmrr", "ANMRR")]),
    ("Retrieval: precision of the top k results (%)",
     [(f"retrieval.precision@{k}", f"P@{k}") for k in (1, 5, 10, 20, 50, 100)]),
    ("Clustering of the test embeddings (K-means accuracy, NMI, %)",
     [("clustering.kmeans_accuracy", "K-means acc."), ("clustering.nmi", "NMI")]),
    ("Metric learning: Recall@K, MAP@R and R-precision (Musgrave et al., ECCV 2020; %)",
     [(f"retrieval.recall@{k}", f"R@{k}") for k in (1, 2, 4, 8)]
     + [("retrieval.map@r", "MAP@R"), ("retrieval.r_precision", "R-prec.")]),
    *[(f"Rotation robustness: {label} of the queries under each symmetry of the square against the unrotated "
       "database (evaluate.py --rotations; %)", [(f"rotations.{t}.{metric}", t) for t in TRANSFORMS]
       + [(f"rotations.worst.{metric}", "worst")]) for metric, label in (("map", "mAP"), ("knn_oa", "kNN@10 OA"))],
]
VALIDATION = ("Validation kNN@10 during training, best and last epoch (%)",
              [("val.knn_acc.best", "val best"), ("val.knn_acc.last", "val last")])
BAND_ALPHA = 0.2
DPI = 120


def style(rows, row, n):
    """Line colour and legend label of a method, the colour the same in both figures."""
    return {"color": f"C{rows.index(row) % 10}", "label": f"{display(*row)} (n={n})"}


def display(method, memory):
    if method in NAMES and method not in MEMORY_NAMED:
        return NAMES[method]
    return f"{NAMES.get(method, method)} ({memory.upper()})"


def row_order(row):
    method, memory = row
    return list(NAMES).index(method) if method in NAMES else len(NAMES), method, memory


def find_runs(roots):
    """The run folders below ``roots`` (a run folder holds no other runs), each once."""
    found = set()
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            if "args.json" in files:
                found.add(os.path.realpath(folder))
                subfolders.clear()
    return sorted(found)


def load_run(folder, split):
    """A run's group key (method, memory, dataset), its scalar metrics, validation curve and PR curve."""
    with open(os.path.join(folder, "args.json")) as f:
        args = json.load(f)
    dataset = args["dataset"] + (UNSEEN if args.get("split") == "unseen" else "")
    run = {"key": (args.get("method", "snca-ce"), args["memory"], dataset), "values": {}, "curve": {}, "pr": None}
    metrics_path = os.path.join(folder, "metrics.jsonl")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            run["curve"] = {m["epoch"]: m["knn_acc"] for m in map(json.loads, filter(str.strip, f))}
    if run["curve"]:
        run["values"]["val.knn_acc.best"] = max(run["curve"].values())
        run["values"]["val.knn_acc.last"] = run["curve"][max(run["curve"])]
    results_path = os.path.join(folder, "eval", split, "results.json")
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
        for _, metrics in TABLES:
            for metric, _ in metrics:
                value = results
                for key in metric.split("."):  # older results lack the newer metrics, and --rotations is optional
                    value = value.get(key) if isinstance(value, dict) else None
                if value is not None:
                    run["values"][metric] = value
        run["pr"] = (results["pr_curve"]["recall"], results["pr_curve"]["precision"])
    return run


def summarise(runs):
    """{(method, memory, dataset): {metric: (mean, sample std, n)}} over the runs of each group."""
    values = {}
    for run in runs:
        for metric, value in run["values"].items():
            values.setdefault(run["key"], {}).setdefault(metric, []).append(value)
    return {key: {metric: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))
                  for metric, v in metrics.items()} for key, metrics in values.items()}


def cell(stat):
    mean, std, _ = stat
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(title, metrics, summary, rows, datasets):
    header = ["Method"] + [f"{dataset} {label}" for dataset in datasets for label in ["n"] + [m[1] for m in metrics]]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        stats = [summary.get((*row, dataset), {}) for dataset in datasets]
        if not any(metric in s for s in stats for metric, _ in metrics):
            continue
        cells = [display(*row)]
        for s in stats:
            n = max((s[metric][2] for metric, _ in metrics if metric in s), default=0)
            cells += [str(n)] + [cell(s[metric]) if metric in s else "–" for metric, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def panels(datasets, ylabel, xlabel):
    fig = Figure(figsize=(6 * len(datasets), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        ax.set(title=dataset, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    return fig, axes


def plot_learning_curves(runs, rows, path):
    datasets = sorted({run["key"][2] for run in runs if run["curve"]})
    fig, axes = panels(datasets, "validation kNN@10 accuracy (%)", "epoch")
    for ax, dataset in zip(axes, datasets):
        for row in rows:
            curves = [run["curve"] for run in runs if run["key"] == (*row, dataset) and run["curve"]]
            if curves:
                epochs = sorted(set().union(*curves))
                acc = [[100 * curve[e] for curve in curves if e in curve] for e in epochs]  # runs may differ in length
                line = style(rows, row, len(curves))
                ax.plot(epochs, [np.mean(a) for a in acc], **line)
                ax.fill_between(epochs, [min(a) for a in acc], [max(a) for a in acc], color=line["color"],
                                alpha=BAND_ALPHA, linewidth=0)
        ax.legend()
    fig.savefig(path, dpi=DPI)


def plot_pr_curves(runs, rows, path):
    datasets = sorted({run["key"][2] for run in runs if run["pr"]})
    fig, axes = panels(datasets, "precision", "recall")
    for ax, dataset in zip(axes, datasets):
        for row in rows:
            curves = [run["pr"] for run in runs if run["key"] == (*row, dataset) and run["pr"]]
            if curves:
                recall, precision = np.mean(curves, axis=0)  # (2, levels): the same recall levels in every run
                ax.plot(recall, precision, marker=".", **style(rows, row, len(curves)))
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left")
    fig.savefig(path, dpi=DPI)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="folders searched recursively for run folders (holding args.json)")
    parser.add_argument("--out", default=None, help="output folder (default: <first runs folder>/tables)")
    parser.add_argument("--split", default="test", help="evaluated split to read: eval/<split>/results.json")
    args = parser.parse_args()
    out = args.out or os.path.join(args.runs[0], "tables")

    runs = [load_run(folder, args.split) for folder in find_runs(args.runs)]
    if not runs:
        parser.error(f"no run folder (holding args.json) under {', '.join(args.runs)}")
    summary = summarise(runs)
    rows = sorted({run["key"][:2] for run in runs}, key=row_order)
    datasets = sorted({run["key"][2] for run in runs})
    os.makedirs(out, exist_ok=True)

    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(f"# Results of {len(runs)} runs ({args.split} split): mean ± sample std over the n seeds\n\n")
        f.write("\n".join(markdown_table(*table, summary, rows, datasets) for table in TABLES + [VALIDATION]
                          if any(metric in s for s in summary.values() for metric, _ in table[1])))
    with open(os.path.join(out, "tables.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "dataset", "metric", "mean", "std", "n"])
        for row in rows:
            for dataset in datasets:
                stats = summary.get((*row, dataset), {})
                for _, metrics in TABLES + [VALIDATION]:
                    writer.writerows([display(*row), dataset, m, *stats[m]] for m, _ in metrics if m in stats)
    written = ["tables.md", "tables.csv"]
    if any(run["curve"] for run in runs):
        plot_learning_curves(runs, rows, os.path.join(out, "learning_curves.png"))
        written.append("learning_curves.png")
    if any(run["pr"] for run in runs):
        plot_pr_curves(runs, rows, os.path.join(out, "pr_curves.png"))
        written.append("pr_curves.png")
    print(f"{len(runs)} runs in {len(summary)} groups -> {out}/: {', '.join(written)}")


if __name__ == "__main__":
    main()
