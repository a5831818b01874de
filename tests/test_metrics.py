"""lib.eval.metrics against scikit-learn and loops written from each metric's definition (float64, CPU)."""
import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import average_precision_score, normalized_mutual_info_score
from sklearn.metrics import classification_report as sklearn_classification_report
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.neighbors import KNeighborsClassifier

from lib.eval.knn import knn_predict
from lib.eval.metrics import (
    PR_RECALLS,
    classification_report,
    cluster_accuracy,
    clustering_scores,
    confusion_matrix,
    knn_accuracies,
    retrieval_scores,
)


def clustered(seed, n=113, q=37, dim=8, classes=5, database_classes=None):
    """Noisy class directions; database labels drawn from ``database_classes`` weights when given."""
    rng = np.random.default_rng(seed)
    weights = database_classes if database_classes is not None else np.ones(classes)
    labels = rng.choice(classes, n, p=np.asarray(weights) / np.sum(weights))
    database = rng.standard_normal((n, dim)) + 1.0 * np.eye(dim)[labels]
    query_labels = rng.integers(0, classes, q)
    queries = rng.standard_normal((q, dim)) + 1.0 * np.eye(dim)[query_labels]
    return queries, query_labels, database, labels


def as_tensors(*arrays):
    return [torch.tensor(a) for a in arrays]


# ---- kNN accuracies and confusion matrix ----

def test_knn_accuracies_match_scikit_learn_and_a_per_class_loop():
    queries, query_labels, refs, labels = clustered(0, n=300, q=120)
    got = knn_accuracies(*as_tensors(queries, query_labels, refs, labels), ks=(1, 5, 10))
    assert sorted(got) == [1, 5, 10]
    for k in (1, 5, 10):
        predicted = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(refs, labels).predict(queries)
        recalls = [np.mean(predicted[query_labels == c] == c) for c in np.unique(query_labels)]
        # means of 0/1 values and of per-class means, in float64: a few ulps
        assert got[k]["overall"] == pytest.approx(np.mean(predicted == query_labels), abs=1e-12)
        assert got[k]["average"] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_average_accuracy_ignores_classes_absent_from_the_queries():
    queries, query_labels, refs, labels = clustered(1, n=300, q=120)
    keep = query_labels != 2
    got = knn_accuracies(*as_tensors(queries[keep], query_labels[keep], refs, labels), ks=(5,), num_classes=5)
    predicted = KNeighborsClassifier(n_neighbors=5, weights="distance").fit(refs, labels).predict(queries[keep])
    recalls = [np.mean(predicted[query_labels[keep] == c] == c) for c in (0, 1, 3, 4)]
    assert got[5]["average"] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_confusion_matrix_matches_scikit_learn():
    rng = np.random.default_rng(2)
    predictions, labels = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    got = confusion_matrix(torch.tensor(predictions), torch.tensor(labels), 7)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), sklearn_confusion_matrix(labels, predictions, labels=range(7)))


# ---- clustering ----

def brute_force_accuracy(clusters, labels, classes):
    return max(np.mean(np.asarray(perm)[clusters] == labels) for perm in itertools.permutations(range(classes)))


@pytest.mark.parametrize("seed", range(5))
def test_cluster_accuracy_is_the_best_one_to_one_matching(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)
    clusters = np.where(rng.random(60) < 0.6, (labels + 1) % 4, rng.integers(0, 4, 60))  # permuted, noisy
    assert cluster_accuracy(clusters, labels) == pytest.approx(brute_force_accuracy(clusters, labels, 4))


def blobs(seed, spread, classes=4, per_class=30, dim=8):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    centres = rng.permutation(np.eye(dim)[:classes])  # class i is not cluster i
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


def test_well_separated_blobs_cluster_perfectly():
    points, labels = blobs(3, spread=0.02)
    got = clustering_scores(torch.tensor(points), torch.tensor(labels), 4)
    assert got["kmeans_accuracy"] == 1.0
    assert got["nmi"] == pytest.approx(1.0)  # a float64 ratio of equal entropies: a few ulps from 1


def test_clustering_scores_follow_kmeans_on_normalised_embeddings():
    points, labels = blobs(4, spread=0.5)
    got = clustering_scores(torch.tensor(points), torch.tensor(labels), 4, seed=7)
    normalised = points / np.linalg.norm(points, axis=1, keepdims=True)
    clusters = KMeans(n_clusters=4, n_init=10, random_state=7).fit_predict(normalised)
    # the same counts divided, and scikit-learn's own NMI on the same clusters: float64 rounding, under approx's 1e-6
    assert got["kmeans_accuracy"] == pytest.approx(brute_force_accuracy(clusters, labels, 4))
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert 0.0 < got["kmeans_accuracy"] < 1.0


# ---- retrieval ----

def retrieval_loop(queries, query_labels, database, database_labels, ks, precision_ks, recalls, recall_ks=(1, 2, 4, 8),
                   exclude_self=False):
    """Every score from its definition, one query and one rank at a time; ``exclude_self``: the queries are the
    database and query i's ranking leaves out row i."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    database = database / np.linalg.norm(database, axis=1, keepdims=True)
    n = len(database) - exclude_self
    gtm = max(int(np.sum(database_labels == label)) - exclude_self for label in query_labels)
    scores = {name: [] for name in ["map", "r_precision", "map@r", "anmrr"]}
    scores.update({f"map@{k}": [] for k in ks} | {f"precision@{k}": [] for k in precision_ks})
    scores.update({f"recall@{k}": [] for k in recall_ks})
    curve = []
    for i, (query, label) in enumerate(zip(queries, query_labels)):
        order = [j for j in np.argsort(-(database @ query), kind="stable") if not (exclude_self and j == i)]
        relevant = [bool(database_labels[j] == label) for j in order]
        total = sum(relevant)
        hits = list(itertools.accumulate(relevant))  # hits[i - 1]: relevant among the first i
        precision = [hits[i - 1] / i for i in range(1, n + 1)]
        ap = sum(precision[i - 1] for i in range(1, n + 1) if relevant[i - 1])
        scores["map"].append(ap / total if total else 0.0)
        for k in ks:
            ap_k = sum(precision[i - 1] for i in range(1, min(k, n) + 1) if relevant[i - 1])
            scores[f"map@{k}"].append(ap_k / hits[min(k, n) - 1] if hits[min(k, n) - 1] else 0.0)
        for k in precision_ks:
            scores[f"precision@{k}"].append(hits[min(k, n) - 1] / k)
        scores["r_precision"].append(precision[total - 1] if total else 0.0)
        scores["map@r"].append(sum(precision[i - 1] for i in range(1, total + 1) if relevant[i - 1]) / total
                               if total else 0.0)
        for k in recall_ks:
            scores[f"recall@{k}"].append(float(any(relevant[:k])))
        if total:
            cutoff = min(4 * total, 2 * gtm)
            ranks = [i for i in range(1, n + 1) if relevant[i - 1]]
            avr = sum(rank if rank <= cutoff else 1.25 * cutoff for rank in ranks) / total
            scores["anmrr"].append((avr - 0.5 - total / 2) / (1.25 * cutoff - 0.5 - total / 2))
        else:
            scores["anmrr"].append(1.0)
        curve.append([max([precision[i - 1] for i in range(1, n + 1) if total and hits[i - 1] / total >= r] or [0.0])
                      for r in recalls])
    return {name: np.mean(values) for name, values in scores.items()}, np.mean(curve, axis=0)


CASES = {
    "balanced": {},
    "dominant_class": {"database_classes": [12, 1, 1, 1, 1]},  # 2 GTM > N: K reaches past the database
    "class_missing": {"database_classes": [1, 1, 1, 1, 0]},  # queries of class 4 have nothing relevant
}


@pytest.mark.parametrize("case", CASES)
def test_retrieval_scores_match_loops_over_the_definitions(case):
    arrays = clustered(5, **CASES[case])
    ks, precision_ks = (1, 20, 50, 100, 150), (1, 5, 10, 20, 50, 100, 200)
    got = retrieval_scores(*as_tensors(*arrays), ks=ks, precision_ks=precision_ks, chunk_elements=113 * 5)
    want, curve = retrieval_loop(*arrays, ks, precision_ks, PR_RECALLS)
    assert set(got) == set(want) | {"pr_curve"}
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["pr_curve"]["recall"] == [i / 20 for i in range(21)]  # docs/evaluation.md: r = 0, 0.05, ..., 1
    np.testing.assert_allclose(got["pr_curve"]["precision"], curve, rtol=0, atol=1e-12)
    assert 0.0 <= got["anmrr"] <= 1.0


def test_full_map_is_scikit_learn_average_precision():
    queries, query_labels, database, labels = clustered(6)
    got = retrieval_scores(*as_tensors(queries, query_labels, database, labels), chunk_elements=113 * 4)
    similarity = queries @ database.T / np.linalg.norm(queries, axis=1)[:, None] / np.linalg.norm(database, axis=1)
    want = [average_precision_score(labels == label, row) for label, row in zip(query_labels, similarity)]
    assert got["map"] == pytest.approx(np.mean(want), abs=1e-12)


def test_custom_recall_levels():
    arrays = clustered(7)
    recalls = [0.0, 0.3, 0.7, 1.0]
    got = retrieval_scores(*as_tensors(*arrays), pr_recalls=recalls)
    _, curve = retrieval_loop(*arrays, (20,), (1,), recalls)
    assert got["pr_curve"]["recall"] == recalls
    np.testing.assert_allclose(got["pr_curve"]["precision"], curve, rtol=0, atol=1e-12)


def test_ties_are_ranked_by_database_index():
    # Four copies of the query's direction (exact similarity 1) ahead of two orthogonal items.
    database = torch.tensor([[1.0, 0], [2, 0], [1, 0], [3, 0], [0, 1], [0, 1]], dtype=torch.float64)
    query = torch.tensor([[5.0, 0]], dtype=torch.float64)
    first_relevant = retrieval_scores(query, torch.tensor([0]), database, torch.tensor([0, 1, 0, 1, 0, 1]),
                                      ks=(2,), precision_ks=(1, 2))
    assert first_relevant["precision@1"] == 1.0
    assert first_relevant["map@2"] == 1.0
    assert first_relevant["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    first_irrelevant = retrieval_scores(query, torch.tensor([0]), database, torch.tensor([1, 0, 1, 0, 0, 1]),
                                        ks=(2,), precision_ks=(1, 2))
    assert first_irrelevant["precision@1"] == 0.0
    assert first_irrelevant["map@2"] == 0.5
    assert first_irrelevant["map"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)


def test_chunking_does_not_change_the_scores():
    args = as_tensors(*clustered(8))
    whole = retrieval_scores(*args)
    assert retrieval_scores(*args, chunk_elements=113 * 7) == whole  # 7 queries per chunk
    assert retrieval_scores(*args, chunk_elements=1) == whole  # one query per chunk


# ---- retrieval within one set (the unseen classes), Recall@K, MAP@R ----

@pytest.mark.parametrize("case", CASES)
def test_retrieval_within_one_set_leaves_each_query_out(case):
    _, _, points, labels = clustered(9, **CASES[case])
    if case == "class_missing":
        labels[0] = 4  # a class of one image: its query has nothing relevant once it is left out
    ks, precision_ks = (1, 20, 50, 150), (1, 5, 10, 200)
    got = retrieval_scores(*as_tensors(points, labels, points, labels), ks=ks, precision_ks=precision_ks,
                           chunk_elements=113 * 6, exclude_self=True)  # 6 queries per chunk: offsets matter
    want, curve = retrieval_loop(points, labels, points, labels, ks, precision_ks, PR_RECALLS, exclude_self=True)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    np.testing.assert_allclose(got["pr_curve"]["precision"], curve, rtol=0, atol=1e-12)


def test_knn_within_one_set_is_scikit_learn_without_the_query():
    _, _, points, labels = clustered(10, n=60)
    got = knn_accuracies(*as_tensors(points, labels, points, labels), ks=(1, 5), exclude_self=True)
    for k in (1, 5):
        classifier = KNeighborsClassifier(n_neighbors=k, weights="distance")
        predicted = [classifier.fit(np.delete(points, i, 0), np.delete(labels, i)).predict(x[None])[0]
                     for i, x in enumerate(points)]
        assert got[k]["overall"] == pytest.approx(np.mean(predicted == labels), abs=1e-12)


def unit_circle(degrees):
    return torch.tensor([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in degrees], dtype=torch.float64)


def test_recall_at_k_and_map_at_r_on_a_case_worked_by_hand():
    """Five points on the unit circle at 0, 12, 25, 45, 100 degrees, classes A A B A B, each the query against the
    other four (pytorch-metric-learning's ``embeddings_come_from_same_source``: R = class size - 1).
    Rankings (relevant = 1) and R: q0 [1 0 1 0] R=2; q1 [1 0 1 0] R=2; q2 [0 0 0 1] R=1; q3 [0 1 1 0] R=2;
    q4 [0 1 0 0] R=1. MAP@R = 1/R sum_{i<=R} P(i) rel(i): 1/2, 1/2, 0, (1/2)(1/2), 0 -> mean 0.25.
    R-precision hits(R)/R: 1/2, 1/2, 0, 1/2, 0 -> 0.3. Recall@1: 1 1 0 0 0 -> 0.4; @2: 1 1 0 1 1 -> 0.8; @4: 1.
    pytorch-metric-learning's accuracy_calculator gives the same by its definition (a relevance mask over the
    first R neighbours, ``mean_average_precision_at_r`` divides by R, ``r_precision`` counts matches in it,
    ``precision_at_1``): every query here has a relevant item, so its rule of leaving such queries out of the
    mean does not apply."""
    points, labels = unit_circle([0, 12, 25, 45, 100]), torch.tensor([0, 0, 1, 0, 1])
    got = retrieval_scores(points, labels, points, labels, exclude_self=True)
    assert got["map@r"] == pytest.approx(0.25, abs=1e-15)
    assert got["r_precision"] == pytest.approx(0.3, abs=1e-15)
    assert [got[f"recall@{k}"] for k in (1, 2, 4, 8)] == pytest.approx([0.4, 0.8, 1.0, 1.0], abs=1e-15)
    assert got["precision@1"] == got["recall@1"]  # one item: a hit in it is both


def pml_map_at_r(knn_labels, query_labels, r):
    """pytorch-metric-learning's ``mean_average_precision_at_r`` as published, vectorised over a relevance mask
    (ones over each query's first R columns): cumulative matches times matches over the rank, summed inside the
    mask, over R."""
    mask = np.arange(knn_labels.shape[1])[None] < r[:, None]                            # (Q, K)
    equality = (knn_labels == query_labels[:, None]) & mask
    cumulative = np.cumsum(equality, axis=1)
    precision_at_ks = cumulative * equality / np.arange(1, knn_labels.shape[1] + 1)
    return np.mean(np.sum(precision_at_ks * mask, axis=1) / r)


@pytest.mark.parametrize("seed", range(3))
def test_map_at_r_matches_pytorch_metric_learning_published_definition(seed):
    queries, query_labels, database, labels = clustered(seed, database_classes=[3, 1, 1, 2, 1])
    got = retrieval_scores(*as_tensors(queries, query_labels, database, labels))
    order = np.argsort(-((queries / np.linalg.norm(queries, axis=1, keepdims=True))
                         @ (database / np.linalg.norm(database, axis=1, keepdims=True)).T), axis=1, kind="stable")
    r = np.array([np.sum(labels == y) for y in query_labels])
    assert got["map@r"] == pytest.approx(pml_map_at_r(labels[order], query_labels, r), abs=1e-12)


# ---- per-class report ----

def test_classification_report_matches_scikit_learn():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, 150)
    predictions = np.where(rng.random(150) < 0.6, labels, rng.integers(0, 7, 150))
    predictions[predictions == 3] = 2  # class 3 is never predicted; class 6 is predicted, never true
    got = classification_report(torch.tensor(predictions), torch.tensor(labels))
    want = sklearn_classification_report(labels, predictions, zero_division=0, output_dict=True)
    assert sorted(got["per_class"]) == sorted(int(c) for c in want if c.isdigit()) == list(range(7))

    def ours(row):  # in scikit-learn's names
        return {"precision": row["precision"], "recall": row["recall"], "f1-score": row["f1"],
                "support": row["support"]}

    for c, row in got["per_class"].items():
        assert ours(row) == pytest.approx(want[str(c)], abs=1e-12)
    for average in ("macro avg", "weighted avg"):
        assert ours(got[average]) == pytest.approx(want[average], abs=1e-12)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)


def test_knn_within_one_set_with_many_duplicates():
    """Thirty exact copies of each of three points: every query's pool is all ties, the exact re-ranking over
    every other row runs, and the query's own copy must stay out of it (at distance 0 it would decide its vote
    alone). The oracle is knn_predict on the other rows (tested against scikit-learn with duplicates in
    tests/test_knn.py)."""
    rng = np.random.default_rng(12)
    points = torch.tensor(np.repeat(rng.standard_normal((3, 4)), 30, axis=0))          # (90, 4)
    labels = torch.tensor(np.repeat([0, 1, 2], 30))
    labels[::7] = (labels[::7] + 1) % 3  # some copies of a point carry another label
    for k in (1, 10):
        got = knn_predict(points, points, labels, k=k, exclude_self=True)
        keep = torch.ones(90, dtype=torch.bool)
        want = []
        for i in range(90):
            keep[i] = False
            want.append(knn_predict(points[i:i + 1], points[keep], labels[keep], k=k)[0])
            keep[i] = True
        assert torch.equal(got, torch.stack(want)), k
