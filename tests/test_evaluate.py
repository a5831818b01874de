"""scripts/evaluate.py and scripts/retrieve.py end to end on a two-epoch run of a tiny generated dataset;
every number checked against scikit-learn or the reference transform applied by hand."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.metrics import average_precision_score
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.neighbors import KNeighborsClassifier
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_entry_points import SCRIPTS, small_run

from models import EmbeddingNet

from conftest import REPO

pytestmark = pytest.mark.slow  # every test here trains a network

EVALUATE = os.path.join(REPO, "scripts", "evaluate.py")
RETRIEVE = os.path.join(REPO, "scripts", "retrieve.py")
FIGURES = ("confusion_matrix.png", "pr_curve.png", "tsne.png", "retrieval_examples.png")


def load(path):
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def trained(image_tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    done = subprocess.run([sys.executable, SCRIPTS["mb"], *small_run("mb", image_tree, out, "--seed", "3")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return os.path.join(out, "run")


@pytest.fixture(scope="module")
def evaluated(trained):
    done = subprocess.run([sys.executable, EVALUATE, trained, "--device", "cpu", "--num_workers", "0",
                           "--tsne-points", "12"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "test: kNN OA@1/5/10" in done.stdout
    return os.path.join(trained, "eval", "test")


def test_training_draws_its_learning_curve(trained):
    with Image.open(os.path.join(trained, "learning_curve.png")) as image:
        assert image.format == "PNG" and image.width > 500


def test_embeddings_are_the_checkpoints_on_the_reference_eval_transform(trained, evaluated, image_tree):
    saved = dict(np.load(os.path.join(evaluated, "embeddings.npz")))
    state = torch.load(os.path.join(trained, "checkpoints", "best.pt"), weights_only=True)
    model = EmbeddingNet(state["args"]["model"], state["args"]["dim"], state["num_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    transform = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                          (0.229, 0.224, 0.225))])
    rows = Path(trained, "splits", "test.txt").read_text().splitlines()
    assert list(saved["query_paths"]) == [r.split()[0] for r in rows]
    with torch.no_grad():
        images = torch.stack([transform(load(os.path.join(image_tree, "tiny", r.split()[0]))) for r in rows])
        expected = model(images)[0].numpy()
    np.testing.assert_allclose(saved["queries"], expected, atol=2e-3)  # PIL's and torchvision's resize differ
    assert list(saved["query_labels"]) == [int(r.split()[1]) for r in rows]


def test_results_match_scikit_learn_on_the_saved_embeddings(evaluated):
    saved = dict(np.load(os.path.join(evaluated, "embeddings.npz")))
    results = json.loads(Path(evaluated, "results.json").read_text())
    q, ql, db, dbl = saved["queries"], saved["query_labels"], saved["database"], saved["database_labels"]
    for k in (1, 5, 10):
        predicted = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(db, dbl).predict(q)
        assert results["knn"][str(k)]["overall"] == pytest.approx(np.mean(predicted == ql))
        recalls = [np.mean(predicted[ql == c] == c) for c in np.unique(ql)]
        assert results["knn"][str(k)]["average"] == pytest.approx(np.mean(recalls))
    unit = [x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in (q, db)]
    ap = [average_precision_score(dbl == y, s) for y, s in zip(ql, unit[0] @ unit[1].T)]
    # A barely trained network puts database items within float32 rounding of each other, which the float32
    # ranking on the device and this float64 one may order differently; exact agreement with scikit-learn on
    # data without such near-ties is tests/test_metrics.py's.
    assert results["retrieval"]["map"] == pytest.approx(np.mean(ap), abs=5e-3)
    predicted = KNeighborsClassifier(n_neighbors=10, weights="distance").fit(db, dbl).predict(q)
    with open(os.path.join(evaluated, "confusion_matrix.csv")) as f:
        table = list(csv.reader(f))
    classes = table[0][1:]
    assert list(saved["classes"]) == classes
    assert np.array_equal(np.array([[int(v) for v in row[1:]] for row in table[1:]]),
                          sk_confusion(ql, predicted, labels=range(len(classes))))
    assert set(results["retrieval"]) >= {"map@20", "map@50", "map@100", "precision@10", "r_precision", "anmrr"}
    assert 0 <= results["clustering"]["kmeans_accuracy"] <= 1 and 0 <= results["clustering"]["nmi"] <= 1
    with open(os.path.join(evaluated, "pr_curve.csv")) as f:
        rows = list(csv.reader(f))[1:]
    assert [float(r[0]) for r in rows] == pytest.approx(results["pr_curve"]["recall"])


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_are_written(evaluated, figure):
    with Image.open(os.path.join(evaluated, figure)) as image:
        image.verify()
        assert image.format == "PNG"


def test_tensorboard_gets_the_confusion_matrix_and_the_projector_once_per_evaluation(trained, evaluated):
    """A re-run (the run given as --checkpoint PATH, as scripts/retrieve.py takes it) replaces tb/eval_test/."""
    results = json.loads(Path(evaluated, "results.json").read_text())
    done = subprocess.run([sys.executable, EVALUATE, "--checkpoint", os.path.join(trained, "checkpoints", "best.pt"),
                           "--device", "cpu", "--num_workers", "0", "--tsne-points", "12"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout + done.stderr
    assert json.loads(Path(evaluated, "results.json").read_text()) == results
    events = EventAccumulator(os.path.join(trained, "tb", "eval_test"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval_test/knn10_overall")] == [0]
    assert "eval_test/confusion_matrix" in events.Tags()["images"]
    assert os.path.exists(os.path.join(trained, "tb", "eval_test", "projector_config.pbtxt"))


def test_retrieve_finds_the_query_itself_and_refreshes_its_cache(trained, image_tree, tmp_path):
    gallery = shutil.copytree(os.path.join(image_tree, "tiny"), tmp_path / "gallery")
    files = sorted(gallery.rglob("*.png"))
    query = files[5]
    flags = ["--checkpoint", trained, "--gallery", str(gallery), "--device", "cpu", "--k", "4"]
    done = subprocess.run([sys.executable, RETRIEVE, *flags, "--query", str(query), "--html", str(tmp_path / "p.html")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ranked = [line.split() for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(ranked) == 4 and ranked[0][2] == str(query) and float(ranked[0][1]) == pytest.approx(1, abs=1e-5)
    assert f"embedded {len(files)} new" in done.stderr
    assert (tmp_path / "p.html").read_text().count("<figure>") == 5  # the query and 4 results

    files[0].unlink()  # one image gone, one changed: only the changed one is embedded again
    load(files[1]).rotate(90).save(files[1])
    done = subprocess.run([sys.executable, RETRIEVE, *flags, "--query", str(query), "--k", "1000"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "embedded 1 new or changed" in done.stderr
    listed = [line.split()[2] for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert sorted(listed) == sorted(str(f) for f in files[1:])
