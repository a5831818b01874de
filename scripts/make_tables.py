"""The paper's tables and figures from finished runs: mean ± sample std over seeds, one row per experiment.

    python3 scripts/make_tables.py runs/paper                       # writes runs/paper/tables/
    python3 scripts/make_tables.py runs/a runs/b --out tables --split test

Every folder holding an ``args.json`` below the given folders is a run; its settings are those of ``args.json``
with the changes its ``history.jsonl`` records (a resume extending ``--epochs``), never its folder name. Only like
is averaged with like: runs are grouped by method, memory, dataset and every setting that defines the experiment
(all flags but the seed and those a resume may change, with the epochs actually trained); the runs of a group are
its seeds. Groups of one method that differ in a setting are separate rows whose label names the difference.
A seed present twice in a group is counted once, with a warning naming both folders. A run whose training did not
finish or that has no ``eval/<split>/results.json`` (``scripts/evaluate.py``) is listed as skipped, not counted.
Written to --out:

- ``tables.md``: per metric family (kNN, retrieval mAP, retrieval P@k, clustering, Recall@K and MAP@R, rotation
  robustness when evaluated, validation) one Markdown table per dataset, with ``n``, ``seeds`` and a column per
  metric that some run of that dataset has, cells ``mean ± std`` in percent (ANMRR x 100 too); the skipped runs.
  Runs trained with ``--split unseen`` form their own dataset, "<dataset> (unseen classes)".
- ``tables.csv``: long format ``method, dataset, metric, mean, std, n, seeds``, values as recorded (fractions).
- ``learning_curves.png``: validation kNN@10 per epoch, mean over seeds with a min..max band (the paper's Fig. 4).
- ``pr_curves.png``: interpolated precision against recall, mean over seeds.
"""
import csv
import json
import math
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli.flags import ArgumentParser  # noqa: E402
from lib.training.resume import MAY_CHANGE  # noqa: E402

NAMES = {"snca-ce": "SNCA-CE", "snca": "SNCA", "d-cnn": "D-CNN", "triplet": "Triplet"}  # also the row order
MEMORY_NAMED = {"snca-ce", "snca"}  # the methods trained with either memory; the baselines use the bank only
# Recorded values that are not settings: the row and column of a run (--split: the column), its seed, and facts of
# where it ran.
NOT_SETTINGS = {*MAY_CHANGE, "method", "memory", "dataset", "split", "seed", "git_commit", "command", "device_used",
                "world_size", "torch_version", "num_train", "num_classes", "augmentation"}
# The names of lib.eval.robustness.D4, in its order (this script reads JSON only and imports nothing of the repository).
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
    """Line colour and legend label of a row, the colour the same in both figures."""
    return {"color": f"C{rows.index(row) % 10}", "label": f"{rows.label(row)} (n={n})"}


def display(method, memory):
    if method in NAMES and method not in MEMORY_NAMED:
        return NAMES[method]
    return f"{NAMES.get(method, method)} ({memory.upper()})"


class Rows(list):
    """The table rows, (method, memory, settings) in the paper's order; ``label`` names a row by its method and,
    where rows of that method differ, by the settings in which they differ."""

    def __init__(self, runs):
        keys = {run["row"] for run in runs}
        super().__init__(sorted(keys, key=lambda r: (list(NAMES).index(r[0]) if r[0] in NAMES else len(NAMES),
                                                     r[0], r[1], repr(r[2]))))
        self.labels = {}
        for row in self:
            siblings = [dict(r[2]) for r in self if r[:2] == row[:2]]
            differ = sorted({k for s in siblings for k in s if len({repr(t.get(k)) for t in siblings}) > 1})
            settings = dict(row[2])
            self.labels[row] = display(*row[:2]) + "".join(f", {k}={settings.get(k)}" for k in differ)

    def label(self, row):
        return self.labels[row]


def find_runs(roots):
    """The run folders below ``roots`` (a run folder holds no other runs), each once, named as the command line
    names their root (relative stays relative, in warnings and the skipped list alike)."""
    found = {}
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            if "args.json" in files:
                found.setdefault(os.path.realpath(folder), folder)
                subfolders.clear()
    return sorted(found.values())


def read_json_lines(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_run(folder, split):
    """A run: its row (method, memory, settings), dataset, seed, scalar metrics, validation curve and PR curve,
    and ``skipped``, why it is not counted (None when it is)."""
    run = {"folder": folder, "values": {}, "curve": {}, "pr": None, "skipped": None}
    try:
        with open(os.path.join(folder, "args.json")) as f:
            args = json.load(f)
        for event in read_json_lines(os.path.join(folder, "history.jsonl")):
            args.update({k: now for k, (_, now) in event.get("changed", {}).items()})
        run["curve"] = {m["epoch"]: m["knn_acc"] for m in read_json_lines(os.path.join(folder, "metrics.jsonl"))}
    except (OSError, ValueError, KeyError, TypeError) as error:
        run["skipped"] = f"unreadable record ({error})"
        return run
    trained = max(run["curve"], default=0)
    settings = {k: json.dumps(v) if isinstance(v, (list, dict)) else v  # hashable
                for k, v in args.items() if k not in NOT_SETTINGS}
    settings = tuple(sorted({**settings, "epochs": trained}.items()))
    dataset = args.get("dataset")
    if args.get("split") == "unseen":
        dataset = f"{dataset}{UNSEEN}"
    run.update(row=(args.get("method", "snca-ce"), args.get("memory"), settings), dataset=dataset,
               seed=args.get("seed"))
    if trained < args.get("epochs", trained) or not trained:
        run["skipped"] = f"training unfinished ({trained} of {args.get('epochs')} epochs)"
        return run
    results_path = os.path.join(folder, "eval", split, "results.json")
    if not os.path.isfile(results_path):
        run["skipped"] = f"no eval/{split}/results.json (scripts/evaluate.py)"
        return run
    run["values"]["val.knn_acc.best"] = max(run["curve"].values())
    run["values"]["val.knn_acc.last"] = run["curve"][trained]
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


def counted(runs):
    """The runs that count: finished and evaluated, each seed of a group once (a second one is warned about)."""
    kept = {}
    for run in runs:
        if run["skipped"]:
            continue
        key = (run["row"], run["dataset"], run["seed"])
        if key in kept:
            print(f"warning: seed {run['seed']} of {display(*run['row'][:2])} on {run['dataset']} is in both "
                  f"{kept[key]['folder']} and {run['folder']}: counted once, from the first", file=sys.stderr)
            continue
        kept[key] = run
    return list(kept.values())


def summarise(runs):
    """{(row, dataset): {metric: (mean, sample std, n, seeds)}} over the runs of each group."""
    values = {}
    for run in runs:
        for metric, value in run["values"].items():
            values.setdefault((run["row"], run["dataset"]), {}).setdefault(metric, []).append((value, run["seed"]))
    return {key: {metric: (float(np.mean([v for v, _ in vs])),
                           float(np.std([v for v, _ in vs], ddof=1)) if len(vs) > 1 else math.nan, len(vs),
                           " ".join(str(seed) for seed in sorted(seed for _, seed in vs)))
                  for metric, vs in metrics.items()} for key, metrics in values.items()}


def cell(stat):
    mean, std = stat[:2]
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(title, metrics, summary, rows, datasets):
    """The family's tables, one per dataset (``### <dataset>``): a column per metric some row of that dataset has,
    a line per row with results there."""
    lines = [f"## {title}", ""]
    for dataset in datasets:
        stats = {row: summary.get((row, dataset), {}) for row in rows}
        present = [(metric, label) for metric, label in metrics if any(metric in s for s in stats.values())]
        if not present:
            continue
        header = ["Method", "n", "seeds"] + [label for _, label in present]
        lines += [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            s = stats[row]
            if not any(metric in s for metric, _ in present):
                continue
            n, seeds = max((s[metric][2], s[metric][3]) for metric, _ in present if metric in s)
            cells = [rows.label(row), str(n), seeds] + [cell(s[m]) if m in s else "–" for m, _ in present]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def panels(datasets, ylabel, xlabel):
    fig = Figure(figsize=(6 * len(datasets), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        ax.set(title=dataset, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    return fig, axes


def plot_learning_curves(runs, rows, path):
    datasets = sorted({run["dataset"] for run in runs})
    fig, axes = panels(datasets, "validation kNN@10 accuracy (%)", "epoch")
    for ax, dataset in zip(axes, datasets):
        for row in rows:
            curves = [run["curve"] for run in runs if (run["row"], run["dataset"]) == (row, dataset)]
            if curves:
                epochs = sorted(set().union(*curves))
                acc = [[100 * curve[e] for curve in curves if e in curve] for e in epochs]
                line = style(rows, row, len(curves))
                ax.plot(epochs, [np.mean(a) for a in acc], **line)
                ax.fill_between(epochs, [min(a) for a in acc], [max(a) for a in acc], color=line["color"],
                                alpha=BAND_ALPHA, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, also over 2 of them
        ax.legend()
    fig.savefig(path, dpi=DPI)
    return fig


def plot_pr_curves(runs, rows, path):
    datasets = sorted({run["dataset"] for run in runs})
    fig, axes = panels(datasets, "precision", "recall")
    for ax, dataset in zip(axes, datasets):
        for row in rows:
            curves = [run["pr"] for run in runs if (run["row"], run["dataset"]) == (row, dataset)]
            if curves:
                recall, precision = np.mean(curves, axis=0)  # (2, levels): the same recall levels in every run
                ax.plot(recall, precision, marker=".", **style(rows, row, len(curves)))
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left")
    fig.savefig(path, dpi=DPI)


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="folders searched recursively for run folders (holding args.json)")
    parser.add_argument("--out", default=None, help="output folder (default: <first runs folder>/tables)")
    parser.add_argument("--split", default="test", help="evaluated split to read: eval/<split>/results.json")
    return parser


def main():
    parser = get_args_parser()
    args = parser.parse_args()
    out = args.out or os.path.join(args.runs[0], "tables")
    missing = [folder for folder in args.runs if not os.path.isdir(folder)]
    if missing:
        parser.error(f"{missing[0]}: no such folder")
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--out {out} is a file: give a folder")

    found = [load_run(folder, args.split) for folder in find_runs(args.runs)]
    if not found:
        parser.error(f"no run folder (holding args.json) under {', '.join(args.runs)}")
    runs = counted(found)
    skipped = [run for run in found if run["skipped"]]
    if not runs:
        parser.error(f"none of the {len(found)} run folders has finished results for the {args.split} split: "
                     + "; ".join(f"{run['folder']}: {run['skipped']}" for run in skipped[:3]))
    summary = summarise(runs)
    rows = Rows(runs)
    datasets = sorted({run["dataset"] for run in runs})
    os.makedirs(out, exist_ok=True)

    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(f"# Results of {len(runs)} runs ({args.split} split): mean ± sample std over the n seeds\n\n")
        f.write("\n".join(markdown_table(*table, summary, rows, datasets) for table in TABLES + [VALIDATION]
                          if any(metric in s for s in summary.values() for metric, _ in table[1])))
        if skipped:
            f.write(f"\n## Skipped runs ({len(skipped)}), not counted\n\n"
                    + "".join(f"- `{run['folder']}`: {run['skipped']}\n" for run in skipped))
    with open(os.path.join(out, "tables.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "dataset", "metric", "mean", "std", "n", "seeds"])
        for row in rows:
            for dataset in datasets:
                stats = summary.get((row, dataset), {})
                for _, metrics in TABLES + [VALIDATION]:
                    writer.writerows([rows.label(row), dataset, m, *stats[m]] for m, _ in metrics if m in stats)
    plot_learning_curves(runs, rows, os.path.join(out, "learning_curves.png"))
    plot_pr_curves(runs, rows, os.path.join(out, "pr_curves.png"))
    for row in rows:
        counts = ", ".join(f"{dataset} n={stats['val.knn_acc.best'][2]} (seeds {stats['val.knn_acc.best'][3]})"
                           for dataset in datasets if (stats := summary.get((row, dataset))))
        print(f"{rows.label(row)}: {counts}")
    for run in skipped:
        print(f"skipped {run['folder']}: {run['skipped']}")
    print(f"{len(runs)} runs in {len(summary)} groups, {len(skipped)} skipped -> {out}/: tables.md, tables.csv, "
          "learning_curves.png, pr_curves.png")


if __name__ == "__main__":
    main()
