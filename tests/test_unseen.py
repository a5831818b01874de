"""The unseen-class protocol end to end on generated data: training on the seen classes of the authors' split,
then scripts/evaluate.py retrieving the unseen test images among themselves, with the per-class report, the
rotation table and D4 test-time augmentation; every number checked against scikit-learn or a loop."""
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report as sklearn_classification_report
from sklearn.neighbors import KNeighborsClassifier
from test_entry_points import SCRIPTS, small_run
from test_make_tables import MAKE_TABLES, read_markdown, write_run

from datasets import decoded_images
from datasets.folder import build_unseen_split
from lib.cli.args import get_args_parser
from lib.eval.robustness import D4
from scripts.make_tables import TRANSFORMS

from conftest import REPO, d4_mean_embeddings, make_image_tree, run_script, trained_network

EVALUATE = os.path.join(REPO, "scripts", "evaluate.py")
CLASSES, PER_CLASS = 6, 6  # int(0.8 x 6) = 4 seen classes (4 train, 2 val images each), 2 unseen (12 test images)


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    make_image_tree(os.path.join(data, "tiny"), classes=CLASSES, per_class=PER_CLASS)
    out = str(tmp_path_factory.mktemp("runs"))
    done = run_script(SCRIPTS["mb"], *small_run("mb", str(data), out, "--split", "unseen", epochs=1), cwd=out)
    assert done.returncode == 0, done.stderr
    return os.path.join(out, "run"), os.path.join(data, "tiny")


def evaluate(run, *flags):
    done = run_script(EVALUATE, run, "--device", "cpu", "--num_workers", "0", "--tsne-points", "12", *flags, cwd=run)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_training_records_the_split_and_classifies_the_seen_classes_only(unseen_run):
    run, root = unseen_run
    want = build_unseen_split(root, "png")
    assert Path(run, "splits", "classes.txt").read_text().splitlines() == want["classes"]
    for split in ("train", "val", "test"):
        rows = [line.rsplit(" ", 1) for line in Path(run, "splits", f"{split}.txt").read_text().splitlines()]
        assert [(os.path.join(root, p), int(y)) for p, y in rows] == want[split]
    assert (len(want["train"]), len(want["val"]), len(want["test"])) == (16, 8, 12)
    state = torch.load(os.path.join(run, "checkpoints", "best.pt"), weights_only=True)
    assert state["num_classes"] == 4 and state["model"]["fc2.weight"].shape[0] == 4
    assert json.loads(Path(run, "args.json").read_text())["split"] == "unseen"


@pytest.fixture(scope="module")
def evaluated(unseen_run):
    run, _ = unseen_run
    stdout = evaluate(run, "--rotations")
    return os.path.join(run, "eval", "test"), stdout


def leave_one_out_loop(similarity, labels):
    """Recall@K, MAP@R and R-precision from their definitions, each point against the others, ranked by
    ``similarity`` (ties by index)."""
    scores = {"recall@1": [], "recall@2": [], "recall@4": [], "recall@8": [], "map@r": [], "r_precision": []}
    for i, label in enumerate(labels):
        order = [j for j in np.argsort(-similarity[i], kind="stable") if j != i]
        relevant = labels[order] == label
        r = int(relevant.sum())
        hits = np.cumsum(relevant)
        for k in (1, 2, 4, 8):
            scores[f"recall@{k}"].append(float(relevant[:k].any()))
        scores["map@r"].append(sum(hits[j] / (j + 1) for j in range(r) if relevant[j]) / r)
        scores["r_precision"].append(hits[r - 1] / r)
    return {name: np.mean(v) for name, v in scores.items()}


def test_unseen_classes_are_retrieved_among_themselves(evaluated):
    folder, stdout = evaluated
    results = json.loads(Path(folder, "results.json").read_text())
    saved = dict(np.load(os.path.join(folder, "embeddings.npz")))
    q, ql = saved["queries"].astype(np.float64), saved["query_labels"]
    assert results["database"] == "queries" and results["num_queries"] == results["num_database"] == 12
    assert set(ql) == {4, 5}
    # One epoch leaves the embeddings nearly collapsed: similarities of a query come within 1e-5 of each other,
    # close to float32 rounding, so the ranking is the evaluation's own float32 cosine (what this checks is the
    # metrics' definitions on it; the cosine ranking itself is tests/test_metrics.py's).
    unit = F.normalize(torch.from_numpy(saved["queries"]), dim=1)                      # (12, D) float32
    similarity = (unit @ unit.T).numpy()                                                # (12, 12)
    for name, value in leave_one_out_loop(similarity, ql).items():
        assert results["retrieval"][name] == pytest.approx(value, abs=1e-12), name
    classifier = KNeighborsClassifier(n_neighbors=10, weights="distance")
    predicted = np.array([classifier.fit(np.delete(q, i, 0), np.delete(ql, i)).predict(x[None])[0]
                          for i, x in enumerate(q)])
    assert results["knn"]["10"]["overall"] == pytest.approx(np.mean(predicted == ql), abs=1e-9)
    assert "unseen classes, each query against the others" in stdout and "Recall@1/2/4/8" in stdout


def test_per_class_report_and_worst_classes(evaluated, unseen_run):
    folder, stdout = evaluated
    classes = Path(unseen_run[0], "splits", "classes.txt").read_text().splitlines()
    results = json.loads(Path(folder, "results.json").read_text())
    saved = dict(np.load(os.path.join(folder, "embeddings.npz")))
    report = results["per_class"]
    assert sorted(report["per_class"]) == sorted(classes[4:])
    with open(os.path.join(folder, "per_class.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(report["per_class"])
    for r in rows:
        assert float(r["f1"]) == pytest.approx(report["per_class"][r["class"]]["f1"])
        assert int(r["support"]) == 6
    # The report is scikit-learn's on the kNN predictions it was made from: recover them from the confusion matrix.
    with open(os.path.join(folder, "confusion_matrix.csv")) as f:
        table = list(csv.reader(f))
    assert table[0][1:] == classes[4:]
    counts = np.array([[int(v) for v in row[1:]] for row in table[1:]])
    truth = np.repeat([4, 5], counts.sum(1))
    predicted = np.concatenate([np.repeat([4, 5], row) for row in counts])
    want = sklearn_classification_report(truth, predicted, zero_division=0, output_dict=True)
    for c in (4, 5):
        assert report["per_class"][classes[c]]["f1"] == pytest.approx(want[str(c)]["f1-score"], abs=1e-12)
    worst = min(report["per_class"], key=lambda c: (report["per_class"][c]["f1"], c))
    assert f"worst classes (kNN@10 F1): {worst}" in stdout
    assert len(saved["query_paths"]) == 12


def test_rotation_table(evaluated):
    folder, stdout = evaluated
    results = json.loads(Path(folder, "results.json").read_text())
    rotations = results["rotations"]
    assert set(rotations) == set(D4) | {"worst"}
    assert rotations["identity"]["map"] == pytest.approx(results["retrieval"]["map"], abs=1e-12)
    assert rotations["identity"]["knn_oa"] == pytest.approx(results["knn"]["10"]["overall"], abs=1e-12)
    worst = rotations["worst"]
    assert worst["map"] == min(rotations[t]["map"] for t in D4) == rotations[worst["map_transform"]]["map"]
    assert worst["knn_oa"] == min(rotations[t]["knn_oa"] for t in D4)
    assert "rotations: worst mAP" in stdout


def test_tta_d4_embeds_each_image_as_its_mean_over_the_symmetries(unseen_run):
    run, root = unseen_run
    evaluate(run, "--tta", "d4")
    folder = os.path.join(run, "eval", "test-tta-d4")
    results = json.loads(Path(folder, "results.json").read_text())
    assert results["tta"] == "d4"
    saved = dict(np.load(os.path.join(folder, "embeddings.npz")))
    samples = [(os.path.join(root, p), 0) for p in saved["query_paths"]]
    images = decoded_images(samples, 32, 0)                                             # (12, 3, 32, 32)
    want = d4_mean_embeddings(trained_network(run), images)                             # (12, D)
    np.testing.assert_allclose(saved["queries"], want.numpy(), rtol=0, atol=1e-5)  # float32 embeddings, summed


def test_too_few_classes_get_one_line(tmp_path):
    make_image_tree(os.path.join(tmp_path, "tiny"), classes=2, per_class=4)
    done = subprocess.run([sys.executable, SCRIPTS["mu"], *small_run("mu", str(tmp_path), str(tmp_path / "runs"),
                                                                     "--split", "unseen", epochs=1)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: --split unseen:")
    assert "2 classes" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "runs" / "run")


# ---- tables and the paper script ----

def test_make_tables_keeps_unseen_runs_apart_and_shows_the_new_tables(tmp_path):
    rng = np.random.default_rng(0)
    reference = write_run(tmp_path / "AID-snca-ce-mb-seed0", "snca-ce", "mb", "AID", 0, rng)
    unseen = write_run(tmp_path / "AID-unseen-snca-ce-mb-seed0", "snca-ce", "mb", "AID", 0, rng)
    args = json.loads((tmp_path / "AID-unseen-snca-ce-mb-seed0" / "args.json").read_text())
    (tmp_path / "AID-unseen-snca-ce-mb-seed0" / "args.json").write_text(json.dumps({**args, "split": "unseen"}))
    results_path = tmp_path / "AID-snca-ce-mb-seed0" / "eval" / "test" / "results.json"
    results = json.loads(results_path.read_text())
    results["retrieval"].update({f"recall@{k}": rng.uniform() for k in (1, 2, 4, 8)} | {"map@r": rng.uniform()})
    results["rotations"] = {t: {"map": rng.uniform(), "knn_oa": rng.uniform()} for t in D4}
    results["rotations"]["worst"] = {"map": 0.125, "map_transform": "rot90", "knn_oa": 0.25,
                                     "knn_oa_transform": "flip"}
    results_path.write_text(json.dumps(results))
    done = subprocess.run([sys.executable, MAKE_TABLES, str(tmp_path), "--out", str(tmp_path / "tables")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = read_markdown(tmp_path / "tables" / "tables.md")
    knn = next(found[t] for t in found if t.startswith("kNN"))["SNCA-CE (MB)"]
    assert knn["AID kNN@10 OA"] == f"{100 * reference['knn.10.overall']:.2f}"
    assert knn["AID (unseen classes) kNN@10 OA"] == f"{100 * unseen['knn.10.overall']:.2f}"
    learning = next(found[t] for t in found if t.startswith("Metric learning"))["SNCA-CE (MB)"]
    assert learning["AID R@1"] == f"{100 * results['retrieval']['recall@1']:.2f}"
    assert learning["AID MAP@R"] == f"{100 * results['retrieval']['map@r']:.2f}"
    assert "AID (unseen classes) R@1" not in learning  # this run's results predate Recall@K: no empty column
    rotation = next(found[t] for t in found if t.startswith("Rotation robustness: mAP"))["SNCA-CE (MB)"]
    assert rotation["AID rot180"] == f"{100 * results['rotations']['rot180']['map']:.2f}"
    assert rotation["AID worst"] == "12.50"
    assert list(TRANSFORMS) == list(D4)


def test_paper_table_unseen_dry_run(tmp_path):
    for dataset in ("AID", "NWPU-RESISC45"):  # all that a dry run's checks look at
        os.makedirs(tmp_path / "datasets" / dataset)
    env = dict(os.environ, DRY_RUN="1", DATA=str(tmp_path / "datasets"), SEEDS="2", EPOCHS="1",
               OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "paper_table_unseen.sh")], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    train = [c for c in commands if c[1].startswith("train_SNCA_CE")]
    evaluate = [c for c in commands if c[1] == "scripts/evaluate.py"]
    assert len(train) == len(evaluate) == 2 * 2 * 6 and commands[-1][1] == "scripts/make_tables.py"
    seen = set()
    for command, evaluated in zip(train, evaluate):
        memory = "mu" if command[1].startswith("train_SNCA_CE_MC") else "mb"
        args = get_args_parser(memory).parse_args(command[2:])
        assert args.split == "unseen" and args.seen_fraction == 0.8 and args.train_fraction == 0.8
        assert args.run_name == f"{args.dataset}-unseen-{args.method}-{memory}-seed{args.seed}"
        assert evaluated[2] == os.path.join(str(tmp_path / "out"), args.run_name)
        seen.add((memory, args.method, args.dataset, args.seed))
    assert len(seen) == 24 and not (tmp_path / "out").exists()


def test_val_split_is_the_seen_classes_against_their_training_images(unseen_run):
    run, _ = unseen_run
    evaluate(run, "--split", "val")
    folder = os.path.join(run, "eval", "val")
    results = json.loads(Path(folder, "results.json").read_text())
    classes = Path(run, "splits", "classes.txt").read_text().splitlines()
    assert results["database"] == "train" and (results["num_queries"], results["num_database"]) == (8, 16)
    with open(os.path.join(folder, "confusion_matrix.csv")) as f:
        assert next(csv.reader(f))[1:] == classes[:4]  # the seen classes, not the unseen ones
    assert set(results["per_class"]["per_class"]) <= set(classes[:4])


def test_resume_refuses_another_split(unseen_run):
    """A resume takes --split from its checkpoint (lib/cli/args.py); given with another value, it is refused."""
    run, root = unseen_run
    flags = small_run("mb", os.path.dirname(root), os.path.dirname(run), "--resume", run, "--split", "reference",
                      epochs=2)
    done = subprocess.run([sys.executable, SCRIPTS["mb"], *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--split unseen (given reference)" in last, last
