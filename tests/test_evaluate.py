"""scripts/evaluate.py and scripts/retrieve.py end to end on a two-epoch run of a tiny generated dataset;
every number checked against scikit-learn or the reference transform applied by hand."""
import csv
import html
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import average_precision_score, classification_report
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.neighbors import KNeighborsClassifier
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_entry_points import SCRIPTS, small_run

from conftest import REPO, d4_mean_embeddings, run_script, trained_network

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
    done = run_script(SCRIPTS["mb"], *small_run("mb", image_tree, out, "--seed", "3"), cwd=out)
    assert done.returncode == 0, done.stderr
    return os.path.join(out, "run")


@pytest.fixture(scope="module")
def evaluated(trained):
    done = run_script(EVALUATE, trained, "--device", "cpu", "--num_workers", "0", "--tsne-points", "12", cwd=trained)
    assert done.returncode == 0, done.stderr
    assert "test: kNN OA@1/5/10" in done.stdout
    return os.path.join(trained, "eval", "test")


def test_training_draws_its_learning_curve(trained):
    with Image.open(os.path.join(trained, "learning_curve.png")) as image:
        assert image.format == "PNG" and image.width > 500


def test_embeddings_are_the_checkpoints_on_the_reference_eval_transform(trained, evaluated, image_tree):
    saved = dict(np.load(os.path.join(evaluated, "embeddings.npz")))
    model = trained_network(trained)
    transform = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                          (0.229, 0.224, 0.225))])
    rows = Path(trained, "splits", "test.txt").read_text().splitlines()
    assert list(saved["query_paths"]) == [r.split()[0] for r in rows]
    with torch.no_grad():
        images = torch.stack([transform(load(os.path.join(image_tree, "tiny", r.split()[0]))) for r in rows])
        expected = model(images)[0].numpy()
    np.testing.assert_allclose(saved["queries"], expected, atol=2e-3)  # PIL's and torchvision's resize differ
    assert list(saved["query_labels"]) == [int(r.split()[1]) for r in rows]


def float32_ranking(queries, database):
    """Each query's database order as evaluate.py ranks it: float32 cosine similarity from PyTorch's kernels
    (another float32 product, numpy's, orders near-ties otherwise), descending, ties by index. Checked against
    float64: along each order the float64 similarities never rise by more than the float32 error of a similarity
    of unit vectors (normalisation and a dot product of D terms: (D + 4) u, u = 2^-24, twice for the two items
    compared), so it differs from the exact order only between items that tie within that bound."""
    unit32 = [torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1) for x in (queries, database)]
    similarity = unit32[0] @ unit32[1].T                                                      # (Q, N)
    order = similarity.sort(dim=1, descending=True, stable=True).indices.numpy()
    unit = [x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in (queries,
                                                                                                    database)]
    exact = np.take_along_axis(unit[0] @ unit[1].T, order, axis=1)                            # (Q, N)
    bound = 2 * (queries.shape[1] + 4) * 2.0**-24
    assert np.all(np.diff(exact, axis=1) <= bound)
    return order


def retrieval_by_definition(query_labels, database_labels, order):
    """docs/evaluation.md's retrieval metrics as loops over each query's ranking, in float64 (Python floats): each
    metric's per-query values, and the mean PR curve."""
    n = len(database_labels)
    gtm = max(int(np.sum(database_labels == y)) for y in query_labels)
    scores, curves = {}, []
    for y, ranked in zip(query_labels, order):
        relevant = [bool(database_labels[j] == y) for j in ranked]
        total = sum(relevant)
        hits, precision = [], []
        for i, r in enumerate(relevant, start=1):
            hits.append((hits[-1] if hits else 0) + r)
            precision.append(hits[-1] / i)
        one = {"map": sum(p for p, r in zip(precision, relevant) if r) / total if total else 0.0,
               "r_precision": hits[total - 1] / total if total else 0.0,
               # MAP@R: precision at the relevant ranks within the first R, over R
               "map@r": sum(p for p, r in zip(precision[:total], relevant[:total]) if r) / total if total else 0.0}
        for k in (1, 2, 4, 8):  # Recall@K: is one of the first k relevant?
            one[f"recall@{k}"] = float(any(relevant[:k]))
        for k in (20, 50, 100):
            top = min(k, n)
            one[f"map@{k}"] = (sum(p for p, r in zip(precision[:top], relevant[:top]) if r) / hits[top - 1]
                               if hits[top - 1] else 0.0)
        for k in (1, 5, 10, 20, 50, 100):
            one[f"precision@{k}"] = hits[min(k, n) - 1] / k
        if total:  # ANMRR (MPEG-7): NG = R, K = min(4 NG, 2 GTM), a relevant item beyond K at rank 1.25 K
            cutoff = min(4 * total, 2 * gtm)
            avr = sum(i if i <= cutoff else 1.25 * cutoff for i, r in enumerate(relevant, start=1) if r) / total
            one["anmrr"] = (avr - 0.5 - total / 2) / (1.25 * cutoff - 0.5 - total / 2)
        else:
            one["anmrr"] = 1.0
        for key, value in one.items():
            scores.setdefault(key, []).append(value)
        # interpolated precision at recall level r: the best precision at a rank whose recall reaches r
        curves.append([max([p for p, h in zip(precision, hits) if total and h / total >= level] or [0.0])
                       for level in [i / 20 for i in range(21)]])
    return scores, np.mean(curves, axis=0)


def test_results_match_scikit_learn_on_the_saved_embeddings(evaluated):
    """Every key of results.json and pr_curve.csv recomputed from embeddings.npz: kNN and the confusion matrix with
    scikit-learn, K-means with scikit-learn's call as documented and its accuracy by brute-force matching, NMI from
    its definition, the retrieval metrics by loops over the rankings."""
    saved = dict(np.load(os.path.join(evaluated, "embeddings.npz")))
    results = json.loads(Path(evaluated, "results.json").read_text())
    q, ql, db, dbl = saved["queries"], saved["query_labels"], saved["database"], saved["database_labels"]
    assert (results["num_queries"], results["num_database"]) == (len(q), len(db))
    assert set(results) == {"split", "checkpoint", "split_kind", "database", "tta", "num_queries", "num_database",
                            "knn", "clustering", "retrieval", "per_class", "pr_curve"}
    assert (results["split"], results["split_kind"], results["database"], results["tta"]) == (
        "test", "reference", "train", "none")
    assert results["checkpoint"].endswith(os.path.join("checkpoints", "best.pt"))
    assert set(results["knn"]) == {"1", "5", "10"}
    for k in (1, 5, 10):
        predicted = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(db, dbl).predict(q)
        # a mean of at most a few hundred 0/1 values: float64 rounding, far below pytest.approx's 1e-6
        assert results["knn"][str(k)]["overall"] == pytest.approx(np.mean(predicted == ql))
        recalls = [np.mean(predicted[ql == c] == c) for c in np.unique(ql)]
        assert results["knn"][str(k)]["average"] == pytest.approx(np.mean(recalls))

    # Retrieval: computed here by loops from the definitions, on the ranking evaluate.py uses (float32 similarity,
    # checked against float64 above). Means of float64 ratios of at most a few hundred terms: 1e-12 is ~1e4 ulps.
    per_query, curve = retrieval_by_definition(ql, dbl, float32_ranking(q, db))
    assert results["retrieval"].keys() == per_query.keys()
    for key, values in per_query.items():
        assert results["retrieval"][key] == pytest.approx(np.mean(values), rel=0, abs=1e-12), key
    with open(os.path.join(evaluated, "pr_curve.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["recall", "precision"]
    assert [float(r[0]) for r in rows[1:]] == results["pr_curve"]["recall"] == [i / 20 for i in range(21)]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], curve, rtol=0, atol=1e-12)
    np.testing.assert_allclose(results["pr_curve"]["precision"], curve, rtol=0, atol=1e-12)
    # The loop itself against scikit-learn: on the float64 ranking (no exact ties here), its AP is scikit-learn's
    # average precision of the float64 similarities, to float64 rounding.
    unit = [x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in (q, db)]
    similarity = unit[0] @ unit[1].T                                                          # (Q, N)
    assert np.all(np.diff(np.sort(similarity, axis=1), axis=1) > 0)
    exact, _ = retrieval_by_definition(ql, dbl, np.argsort(-similarity, axis=1, kind="stable"))
    ap = [average_precision_score(dbl == y, s) for y, s in zip(ql, similarity)]
    np.testing.assert_allclose(exact["map"], ap, rtol=0, atol=1e-12)

    # Clustering: K-means as evaluate.py documents it (scikit-learn, n_init=10, random_state = --seed, default 0,
    # on the L2-normalised float64 test embeddings); accuracy by trying every matching of clusters to classes;
    # NMI from its definition (arithmetic-mean normalisation, scikit-learn's default), in float64.
    classes = len(saved["classes"])
    clusters = KMeans(n_clusters=classes, n_init=10, random_state=0).fit_predict(unit[0])
    counts = np.zeros((classes, classes))
    np.add.at(counts, (clusters, ql), 1)
    best = max(sum(counts[c, perm[c]] for c in range(classes)) for perm in itertools.permutations(range(classes)))
    assert results["clustering"]["kmeans_accuracy"] == pytest.approx(best / len(ql), rel=0, abs=1e-12)
    joint = counts / len(ql)
    pc, pk = joint.sum(1), joint.sum(0)
    mutual = sum(joint[i, j] * np.log(joint[i, j] / (pc[i] * pk[j])) for i in range(classes) for j in range(classes)
                 if joint[i, j] > 0)
    entropy = [-sum(p * np.log(p) for p in marginal if p > 0) for marginal in (pc, pk)]
    nmi = mutual / np.mean(entropy) if np.mean(entropy) > 0 else 1.0
    # sums of at most C^2 = 16 float64 terms: 1e-12 is ~1e4 ulps
    assert results["clustering"]["nmi"] == pytest.approx(nmi, rel=0, abs=1e-12)
    assert set(results["clustering"]) == {"kmeans_accuracy", "nmi"}

    predicted = KNeighborsClassifier(n_neighbors=10, weights="distance").fit(db, dbl).predict(q)
    with open(os.path.join(evaluated, "confusion_matrix.csv")) as f:
        table = list(csv.reader(f))
    assert list(saved["classes"]) == table[0][1:]
    assert np.array_equal(np.array([[int(v) for v in row[1:]] for row in table[1:]]),
                          sk_confusion(ql, predicted, labels=range(classes)))
    # per-class precision, recall, F1 and support of the kNN@10 predictions: scikit-learn's report (ratios of
    # counts: float64 rounding, under approx's 1e-6), in results.json and per_class.csv
    report = classification_report(ql, predicted, zero_division=0, output_dict=True)
    names = list(saved["classes"])
    report = {c: {"f1" if k == "f1-score" else k: v for k, v in row.items()} if isinstance(row, dict) else row
              for c, row in report.items()}  # scikit-learn's "f1-score" is "f1" there
    per_class = {str(names[int(c)]): row for c, row in report.items() if c.isdigit()}
    assert results["per_class"]["per_class"].keys() == per_class.keys()
    for name, row in per_class.items():
        assert results["per_class"]["per_class"][name] == pytest.approx(row), name
    for average in ("macro avg", "weighted avg"):
        assert results["per_class"][average] == pytest.approx(report[average])
    assert results["per_class"]["accuracy"] == pytest.approx(report["accuracy"])
    with open(os.path.join(evaluated, "per_class.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in rows[1:]] == list(per_class)
    for r in rows[1:]:
        assert [float(v) for v in r[1:]] == pytest.approx([per_class[r[0]][k] for k in ("precision", "recall", "f1",
                                                                                           "support")]), r[0]


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_are_written(evaluated, figure):
    with Image.open(os.path.join(evaluated, figure)) as image:
        image.verify()
        assert image.format == "PNG"


def test_tensorboard_gets_the_confusion_matrix_and_the_projector_once_per_evaluation(trained, evaluated):
    """A re-run (the run given as --checkpoint PATH, as scripts/retrieve.py takes it) replaces tb/eval_test/."""
    results = json.loads(Path(evaluated, "results.json").read_text())
    done = run_script(EVALUATE, "--checkpoint", os.path.join(trained, "checkpoints", "best.pt"), "--device", "cpu",
                      "--num_workers", "0", "--tsne-points", "12")
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
    done = run_script(RETRIEVE, *flags, "--query", query, "--html", tmp_path / "p.html")
    assert done.returncode == 0, done.stderr
    ranked = [line.split() for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(ranked) == 4 and ranked[0][2] == str(query) and float(ranked[0][1]) == pytest.approx(1, abs=1e-5)
    assert f"embedded {len(files)} new" in done.stderr
    assert (tmp_path / "p.html").read_text().count("<figure>") == 5  # the query and 4 results

    files[0].unlink()  # one image gone, one changed: only the changed one is embedded again
    load(files[1]).rotate(90).save(files[1])
    done = run_script(RETRIEVE, *flags, "--query", query, "--k", "1000")
    assert done.returncode == 0, done.stderr
    assert "embedded 1 new or changed" in done.stderr
    listed = [line.split()[2] for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert sorted(listed) == sorted(str(f) for f in files[1:])


def test_tta_d4_embeds_the_database_too_and_rotations_score_a_reference_run(trained, image_tree):
    """On a reference-split run the database is the training split, apart from the queries: with --tta d4 each of
    its images is the renormalised mean of the checkpoint's embeddings of its 8 symmetries, as the queries are;
    --rotations scores the rotated queries against that database, the identity row being the plain scores."""
    from datasets import decoded_images
    from lib.eval.robustness import D4

    done = run_script(EVALUATE, trained, "--device", "cpu", "--num_workers", "0", "--tsne-points", "12", "--tta", "d4",
                      "--rotations", cwd=trained)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("test with --tta d4") and "\ntest:" not in done.stdout  # named as what it is
    folder = os.path.join(trained, "eval", "test-tta-d4")
    saved = dict(np.load(os.path.join(folder, "embeddings.npz")))
    model = trained_network(trained)
    for name in ("database", "queries"):
        paths = saved["database_paths" if name == "database" else "query_paths"]
        images = decoded_images([(os.path.join(image_tree, "tiny", p), 0) for p in paths], 32, 0)  # (n, 3, 32, 32)
        want = d4_mean_embeddings(model, images)                                                    # (n, D)
        # float32 embeddings of unit norm, 8 of them summed and renormalised in float32 by evaluate.py: well
        # within 1e-5 of the float64 mean (test_unseen.py makes the same comparison on an unseen run)
        np.testing.assert_allclose(saved[name], want.numpy(), rtol=0, atol=1e-5)
    assert len(saved["database_paths"]) == 32 and not set(saved["database_paths"]) & set(saved["query_paths"])

    results = json.loads(Path(folder, "results.json").read_text())
    rotations = results["rotations"]
    assert results["database"] == "train" and set(rotations) == set(D4) | {"worst"}
    assert rotations["identity"]["map"] == pytest.approx(results["retrieval"]["map"], abs=1e-12)
    assert rotations["identity"]["knn_oa"] == pytest.approx(results["knn"]["10"]["overall"], abs=1e-12)
    worst = rotations["worst"]
    assert worst["map"] == min(rotations[t]["map"] for t in D4) == rotations[worst["map_transform"]]["map"]
    assert worst["knn_oa"] == min(rotations[t]["knn_oa"] for t in D4) == rotations[worst["knn_oa_transform"]]["knn_oa"]


def test_retrieve_writes_one_page_per_query_path_and_leaves_the_query_out_when_told(trained, image_tree, tmp_path):
    """Two queries of one file name in two folders get two pages, each named in the output; --exclude-self leaves
    out the gallery file that is the query (same path) and any copy of it (same bytes)."""
    gallery = shutil.copytree(os.path.join(image_tree, "tiny"), tmp_path / "gallery")
    files = sorted(gallery.rglob("*.png"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(files[3], tmp_path / "a" / "0087.png")  # the same name, and the same bytes as a gallery file
    shutil.copy(files[20], tmp_path / "b" / "0087.png")
    queries = [tmp_path / "a" / "0087.png", tmp_path / "b" / "0087.png", files[9]]
    flags = ["--checkpoint", trained, "--gallery", str(gallery), "--device", "cpu", "--k", "3"]
    done = run_script(RETRIEVE, *flags, "--query", *queries)
    assert done.returncode == 0, done.stderr
    pages = [line.split("wrote ", 1)[1] for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert len(pages) == len(set(pages)) == 3 and all(os.path.isfile(p) for p in pages)
    for query, page in zip(queries, pages):
        assert html.escape(str(query)) in Path(page).read_text()
    firsts = [line.split()[2] for line in done.stdout.splitlines() if line.startswith("   1  ")]
    assert firsts == [str(files[3]), str(files[20]), str(files[9])]  # each query finds itself, or its copy

    done = run_script(RETRIEVE, *flags, "--query", *queries, "--exclude-self")
    assert done.returncode == 0, done.stderr
    ranked = [line.split()[2] for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(ranked) == 9 and not {str(files[3]), str(files[20]), str(files[9])} & set(ranked)


def test_retrieve_names_a_missing_query_without_flags_it_does_not_have(trained, image_tree, tmp_path):
    done = run_script(RETRIEVE, "--checkpoint", trained, "--gallery", os.path.join(image_tree, "tiny"), "--device",
                      "cpu", "--query", tmp_path / "nowhere.png")
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "--query" in done.stderr and "nowhere.png" in done.stderr and "--skip-bad-images" not in done.stderr
