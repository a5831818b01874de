"""scripts/make_tables.py against numpy on generated run folders; the paper_*.sh scripts in dry-run mode."""
import csv
import json
import os
import shlex
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_script

MAKE_TABLES = os.path.join(REPO, "scripts", "make_tables.py")
DATASETS = ("AID", "NWPU-RESISC45")
METHODS = {("snca-ce", "mb"): "SNCA-CE (MB)", ("snca-ce", "mu"): "SNCA-CE (MU)", ("triplet", "mb"): "Triplet"}
SEEDS = (0, 1, 2)
RETRIEVAL = ["map", "map@20", "map@50", "map@100", "r_precision", "anmrr"] + [
    f"precision@{k}" for k in (1, 5, 10, 20, 50, 100)]


def write_run(folder, method, memory, dataset, seed, rng, epochs=5, evaluated=True, trained=None, **settings):
    """A run folder as the entry points and scripts/evaluate.py leave it (``trained`` of ``epochs`` epochs done);
    returns its metrics flattened."""
    os.makedirs(folder)
    args = {"memory": memory, "method": method, "dataset": dataset, "seed": seed, "model": "resnet18", "dim": 128,
            "epochs": epochs, "image_size": 224, "lr": 0.1, "git_commit": str(rng.uniform()), "num_workers": 4,
            **settings}
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump(args, f)
    curve = rng.uniform(0.5, 1, epochs if trained is None else trained)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"epoch": e + 1, "loss": 1.0, "knn_acc": float(a)}) + "\n" for e, a in enumerate(curve))
    values = {"val.knn_acc.best": curve.max(), "val.knn_acc.last": curve[-1]}
    if not evaluated:
        return values
    results = {
        "split": "test",
        "knn": {str(k): {"overall": rng.uniform(), "average": rng.uniform()} for k in (1, 5, 10)},
        "clustering": {"kmeans_accuracy": rng.uniform(), "nmi": rng.uniform()},
        "retrieval": {name: rng.uniform() for name in RETRIEVAL},
        "pr_curve": {"recall": np.linspace(0, 1, 21).tolist(),
                     "precision": np.sort(rng.uniform(size=21))[::-1].tolist()},
    }
    os.makedirs(os.path.join(folder, "eval", "test"))
    with open(os.path.join(folder, "eval", "test", "results.json"), "w") as f:
        json.dump(results, f)
    values.update({f"knn.{k}.{kind}": v for k, d in results["knn"].items() for kind, v in d.items()})
    values.update({f"clustering.{name}": v for name, v in results["clustering"].items()})
    values.update({f"retrieval.{name}": v for name, v in results["retrieval"].items()})
    return values


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Two folders of runs at different depths; returns (output folder, generated values per group, stdout)."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    generated = {}
    for (method, memory), dataset, seed in [(m, d, s) for m in METHODS for d in DATASETS for s in SEEDS]:
        parent = root / ("a" if dataset == "AID" else os.path.join("b", "deeper"))
        values = write_run(parent / f"{dataset}-{method}-{memory}-seed{seed}", method, memory, dataset, seed, rng)
        generated.setdefault((method, memory, dataset), []).append(values)
    # a folder whose name lies: its args say NWPU-RESISC45, so it is a fourth NWPU SNCA-CE (MB) run
    values = write_run(root / "a" / "AID-snca-ce-mb-seed9", "snca-ce", "mb", "NWPU-RESISC45", 9, rng)
    generated[("snca-ce", "mb", "NWPU-RESISC45")].append(values)
    # a run not evaluated yet: skipped, not counted
    write_run(root / "b" / "NWPU-RESISC45-snca-mu-seed0", "snca", "mu", "NWPU-RESISC45", 0, rng, 3, False)
    out = root / "tables"
    done = run_script(MAKE_TABLES, root / "a", root / "b", "--out", out)
    assert done.returncode == 0, done.stderr
    return out, generated, done.stdout


def read_markdown(path):
    """{family title: {method: {"<dataset> <column>": cell}}} of the Markdown tables in ``path``: one table per
    dataset (``### <dataset>``) under each family's ``## <title>``, whose headers do not repeat the dataset."""
    found, title, dataset, header = {}, None, None, None
    with open(path) as f:
        text = f.read()
    for line in text.splitlines():
        if line.startswith("## "):
            title, dataset, header = line[3:], None, None
            found[title] = {}
        elif line.startswith("### "):
            dataset, header = line[4:], None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                assert not any(dataset in column for column in header), header
            else:
                columns = [f"{dataset} {column}" for column in header[1:]]
                found[title].setdefault(cells[0], {"Method": cells[0]}).update(zip(columns, cells[1:]))
    return found


def test_each_table_is_one_dataset_and_protocol_without_empty_columns(tables):
    out, _, _ = tables
    text = (out / "tables.md").read_text()
    tables_of = [block for block in text.split("### ")[1:]]
    assert len(tables_of) >= 2 * len(read_markdown(out / "tables.md")) - 2  # AID and NWPU-RESISC45 in most families
    for block in tables_of:
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()
                if line.startswith("|") and not line.startswith("|---")]
        header, body = rows[0], rows[1:]
        assert header[:3] == ["Method", "n", "seeds"] and len(header) <= 12 and body, block
        for column in range(3, len(header)):
            assert any(row[column] != "–" for row in body), (header[column], block)


def test_csv_holds_mean_sample_std_and_count_per_group_as_numpy(tables):
    out, generated, stdout = tables
    assert str(out) in stdout
    with open(out / "tables.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "dataset", "metric", "mean", "std", "n", "seeds"]
    expected = {}
    for (method, memory, dataset), runs in generated.items():
        for metric in runs[0]:
            values = np.array([run[metric] for run in runs])
            std = values.std(ddof=1) if len(values) > 1 else np.nan
            expected[(METHODS[method, memory], dataset, metric)] = (values.mean(), std, len(values))
    got = {(r["method"], r["dataset"], r["metric"]): (float(r["mean"]), float(r["std"]), int(r["n"])) for r in rows}
    assert {r["seeds"] for r in rows if (r["method"], r["dataset"]) == ("SNCA-CE (MB)", "NWPU-RESISC45")} == {"0 1 2 9"}
    assert got.keys() == expected.keys()
    for key, (mean, std, n) in expected.items():
        # float64 means and sample stds of a few values against numpy's, through the CSV's text (repr: exact)
        assert got[key][0] == pytest.approx(mean, rel=1e-12) and got[key][2] == n, key
        assert got[key][1] == pytest.approx(std, rel=1e-12, nan_ok=True), key
    assert expected[("SNCA-CE (MB)", "NWPU-RESISC45", "knn.10.overall")][2] == 4  # the lying folder joined NWPU
    assert expected[("SNCA-CE (MB)", "AID", "knn.10.overall")][2] == 3


def test_markdown_tables_show_percent_cells_rows_in_paper_order_and_seed_counts(tables):
    out, generated, _ = tables
    found = read_markdown(out / "tables.md")
    knn, validation = (next(found[t] for t in found if t.startswith(p)) for p in ("kNN", "Validation"))
    assert list(knn) == ["SNCA-CE (MB)", "SNCA-CE (MU)", "Triplet"]  # the unevaluated SNCA (MU) run is not here
    assert list(validation) == ["SNCA-CE (MB)", "SNCA-CE (MU)", "Triplet"]
    for (method, memory, dataset), metric, column, table in [
        (("snca-ce", "mb", "NWPU-RESISC45"), "knn.10.overall", "NWPU-RESISC45 kNN@10 OA", knn),
        (("triplet", "mb", "AID"), "knn.1.average", "AID kNN@1 AA", knn),
        (("snca-ce", "mu", "AID"), "val.knn_acc.best", "AID val best", validation),
    ]:
        values = 100 * np.array([run[metric] for run in generated[method, memory, dataset]])
        row = table[METHODS[method, memory]]
        assert row[column] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
        assert row[f"{dataset} n"] == str(len(values))
        assert row[f"{dataset} seeds"] == " ".join(map(str, sorted(SEEDS + ((9,) if "NWPU" in column else ()))))
    mean_ap = next(found[t] for t in found if "mean average precision" in t)
    assert {"AID mAP@20", "AID ANMRR", "NWPU-RESISC45 R-prec."} <= set(mean_ap["Triplet"])


def test_the_unevaluated_run_is_listed_as_skipped(tables):
    out, _, stdout = tables
    folder = "NWPU-RESISC45-snca-mu-seed0"
    assert any(line.startswith("skipped ") and folder in line and "results.json" in line
               for line in stdout.splitlines())
    assert folder in (out / "tables.md").read_text().split("## Skipped runs")[1]


def make_tables(*folders, out):
    done = run_script(MAKE_TABLES, *folders, "--out", out)
    assert done.returncode == 0, done.stderr
    with open(out / "tables.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "knn.10.overall"]
    return done, {r["method"]: r for r in rows}


def test_runs_differing_in_a_setting_are_separate_rows_named_by_the_difference(tmp_path):
    """The issue's case: two seed-0 runs, one at 8 px, lr 0.1, 1 epoch, one at 64 px, lr 0.01, 3 epochs."""
    rng = np.random.default_rng(1)
    a = write_run(tmp_path / "runs" / "a", "snca-ce", "mb", "RSSCN7", 0, rng, 1, image_size=8, lr=0.1)
    b = write_run(tmp_path / "runs" / "b", "snca-ce", "mb", "RSSCN7", 0, rng, 3, image_size=64, lr=0.01)
    done, rows = make_tables(tmp_path / "runs", out=tmp_path / "tables")
    labels = {"SNCA-CE (MB), epochs=1, image_size=8, lr=0.1": a, "SNCA-CE (MB), epochs=3, image_size=64, lr=0.01": b}
    assert set(rows) == set(labels)
    for label, values in labels.items():
        assert rows[label]["n"] == "1" and rows[label]["seeds"] == "0"
        assert float(rows[label]["mean"]) == pytest.approx(values["knn.10.overall"], rel=1e-12)
        assert label in done.stdout
    assert "2 runs in 2 groups" in done.stdout


def test_a_seed_twice_in_a_group_counts_once_with_a_warning(tmp_path):
    rng = np.random.default_rng(2)
    # the two names the paper scripts once gave one run; "NWPU-RESISC45-..." sorts first and is the one kept
    write_run(tmp_path / "runs" / "NWPU-snca-ce-mb-seed0", "snca-ce", "mb", "NWPU-RESISC45", 0, rng)
    first = write_run(tmp_path / "runs" / "NWPU-RESISC45-snca-ce-mb-seed0", "snca-ce", "mb", "NWPU-RESISC45", 0, rng)
    other = write_run(tmp_path / "runs" / "seed1", "snca-ce", "mb", "NWPU-RESISC45", 1, rng)
    done, rows = make_tables(tmp_path / "runs", out=tmp_path / "tables")
    row = rows["SNCA-CE (MB)"]
    assert row["n"] == "2" and row["seeds"] == "0 1"
    values = [first["knn.10.overall"], other["knn.10.overall"]]
    assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-12)
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning: seed 0")]
    assert len(warning) == 1
    assert "NWPU-snca-ce-mb-seed0" in warning[0] and "NWPU-RESISC45-snca-ce-mb-seed0" in warning[0]


def test_crashed_unfinished_and_unevaluated_runs_are_skipped_and_a_resumed_run_counts(tmp_path):
    rng = np.random.default_rng(3)
    runs = tmp_path / "runs"
    kept = [write_run(runs / "done", "snca", "mu", "AID", 0, rng, 5)]
    os.makedirs(runs / "crashed")
    (runs / "crashed" / "args.json").write_text(json.dumps({"memory": "mu", "method": "snca", "dataset": "AID",
                                                            "seed": 1, "epochs": 5}))
    write_run(runs / "unfinished", "snca", "mu", "AID", 2, rng, 5, trained=2)
    write_run(runs / "unevaluated", "snca", "mu", "AID", 3, rng, 5, evaluated=False)
    # started for 3 epochs, resumed with --epochs 5: history.jsonl says so, and it joins the 5-epoch group
    kept.append(write_run(runs / "extended", "snca", "mu", "AID", 4, rng, 3, trained=5))
    (runs / "extended" / "history.jsonl").write_text(
        json.dumps({"event": "start"}) + "\n" + json.dumps({"event": "resume", "changed": {"epochs": [3, 5]}}) + "\n")
    done, rows = make_tables(runs, out=tmp_path / "tables")
    row = rows["SNCA (MU)"]
    assert row["n"] == "2" and row["seeds"] == "0 4"
    assert float(row["mean"]) == pytest.approx(np.mean([v["knn.10.overall"] for v in kept]), rel=1e-12)
    skipped = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines() if line.startswith("skipped ")}
    assert {os.path.basename(k) for k in skipped} == {"crashed", "unfinished", "unevaluated"}
    reasons = {os.path.basename(k): line for k, line in skipped.items()}
    assert "0 of 5 epochs" in reasons["crashed"] and "2 of 5 epochs" in reasons["unfinished"]
    assert "results.json" in reasons["unevaluated"]
    relative = run_script(MAKE_TABLES, "runs", "--out", "tables", cwd=tmp_path)  # paths shown as given
    assert relative.returncode == 0, relative.stderr
    assert {line.split()[1] for line in relative.stdout.splitlines() if line.startswith("skipped ")} == \
        {os.path.join("runs", name) + ":" for name in ("crashed", "unfinished", "unevaluated")}


@pytest.mark.parametrize("name", ["learning_curves.png", "pr_curves.png"])
def test_figures_are_png_images(tables, name):
    out, _, _ = tables
    with Image.open(out / name) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 300
        image.verify()


SCRIPTS = {  # script: its datasets; each trains every one of RUNS per dataset and seed
    "paper_table_knn.sh": DATASETS, "paper_table_retrieval.sh": DATASETS, "paper_table_clustering.sh": DATASETS,
    "paper_fig_pr_curves.sh": DATASETS, "paper_fig4_learning_curves.sh": ("NWPU-RESISC45",),
}
RUNS = {("train_SNCA_CE", m) for m in ("snca-ce", "snca", "d-cnn", "triplet")} | {
    ("train_SNCA_CE_MC", m) for m in ("snca-ce", "snca")}


def dry_run(script, tmp_path):
    for dataset in DATASETS:  # all that a dry run's checks look at
        os.makedirs(tmp_path / "datasets" / dataset, exist_ok=True)
    env = dict(os.environ, DRY_RUN="1", DATA=str(tmp_path / "datasets"), SEEDS="2", EPOCHS="1",
               OUT=str(tmp_path / "out"))
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_paper_script_dry_run_prints_one_train_and_eval_per_method_dataset_seed(script, tmp_path):
    done = dry_run(script, tmp_path)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    train = [c for c in commands if c[1].startswith("train_SNCA_CE")]
    evaluate = [c for c in commands if c[1] == "scripts/evaluate.py"]
    groups = 2 * len(SCRIPTS[script])  # SEEDS=2 x datasets
    assert sum(c[1] == "train_SNCA_CE/main.py" for c in train) == 4 * groups  # SNCA-CE, SNCA, D-CNN, Triplet
    assert sum(c[1] == "train_SNCA_CE_MC/main.py" for c in train) == 2 * groups  # SNCA-CE, SNCA
    assert len(evaluate) == 6 * groups and len(train) + len(evaluate) + 1 == len(commands)
    assert commands[-1] == ["python3", "scripts/make_tables.py", str(tmp_path / "out")]
    seen = set()
    for command, evaluated in zip(train, evaluate):
        flags = dict(zip(command[2::2], command[3::2]))
        entry, memory = command[1].split("/")[0], "mu" if command[1].startswith("train_SNCA_CE_MC") else "mb"
        name = f"{flags['--dataset']}-{flags['--method']}-{memory}-seed{flags['--seed']}"
        assert flags["--data"] == str(tmp_path / "datasets") and flags["--epochs"] == "1"
        assert flags["--run-name"] == name
        assert flags["--out"] == str(tmp_path / "out") and evaluated[2] == str(tmp_path / "out" / name)
        seen.add((entry, flags["--method"], flags["--dataset"], flags["--seed"]))
    assert seen == {(*run, dataset, seed) for run in RUNS for dataset in SCRIPTS[script] for seed in ("0", "1")}
    assert not (tmp_path / "out").exists()


def test_paper_scripts_skip_evaluated_runs_and_resume_unfinished_ones(tmp_path):
    done_run = tmp_path / "out" / "NWPU-RESISC45-snca-ce-mu-seed0"
    os.makedirs(done_run / "eval" / "test")
    (done_run / "eval" / "test" / "results.json").write_text("{}")
    os.makedirs(tmp_path / "out" / "NWPU-RESISC45-triplet-mb-seed1" / "checkpoints")
    # the record a resume reads first (lib/training/resume.py): the check of the resuming command loads it
    torch.save({"args": {"memory": "mb", "method": "triplet", "dataset": "NWPU-RESISC45", "seed": 1, "amp": "none"}},
               tmp_path / "out" / "NWPU-RESISC45-triplet-mb-seed1" / "checkpoints" / "last.pt")
    os.makedirs(tmp_path / "out" / "NWPU-RESISC45-d-cnn-mb-seed1")  # no checkpoint yet: not resumable
    done = dry_run("paper_fig4_learning_curves.sh", tmp_path)  # its training would stop: the check says so first
    assert done.returncode == 1 and "NWPU-RESISC45-d-cnn-mb-seed1 already exists" in done.stderr
    assert "+ " not in done.stdout
    os.rmdir(tmp_path / "out" / "NWPU-RESISC45-d-cnn-mb-seed1")
    done = dry_run("paper_fig4_learning_curves.sh", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("+ python3 train_SNCA_CE")]
    assert len(lines) == 11 and not any("--run-name NWPU-RESISC45-snca-ce-mu-seed0" in line for line in lines)
    resumed = [line for line in lines if "--resume" in line]
    assert resumed == [next(line for line in lines if "triplet" in line and "seed 1" in line)]
    assert resumed[0].endswith(f"--resume {tmp_path / 'out' / 'NWPU-RESISC45-triplet-mb-seed1'}")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_paper_script_without_data_fails_naming_it(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=dict(env, DRY_RUN="1"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DATA" in done.stderr and "+ " not in done.stdout


def test_the_learning_curves_have_whole_epoch_ticks(tmp_path):
    from scripts.make_tables import Rows, plot_learning_curves

    row = ("snca-ce", "mb", ())
    runs = [{"row": row, "dataset": "AID", "curve": {1: 0.5, 2: 0.625}}]
    fig = plot_learning_curves(runs, Rows(runs), tmp_path / "curves.png")
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
