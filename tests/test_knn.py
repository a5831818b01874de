"""lib.knn_predict against scikit-learn's distance-weighted KNeighborsClassifier."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lib import knn_predict


def clustered(seed, n=600, q=200, dim=16, classes=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    refs = rng.standard_normal((n, dim)) + 1.5 * np.eye(dim)[labels]
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    queries = refs[rng.choice(n, q)] + 0.3 * rng.standard_normal((q, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries, refs, labels


def sklearn_predict(queries, refs, labels, k):
    return KNeighborsClassifier(n_neighbors=k, weights="distance").fit(refs, labels).predict(queries)


@pytest.mark.parametrize("k", [1, 5, 10, 25])
@pytest.mark.parametrize("seed", [0, 1])
def test_identical_to_scikit_learn(k, seed):
    queries, refs, labels = clustered(seed)
    got = knn_predict(torch.tensor(queries), torch.tensor(refs), torch.tensor(labels), k=k)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, k))


def test_chunking_does_not_change_predictions():
    queries, refs, labels = clustered(2)
    args = torch.tensor(queries), torch.tensor(refs), torch.tensor(labels)
    whole = knn_predict(*args, k=10)
    assert torch.equal(knn_predict(*args, k=10, chunk_elements=len(refs) * 7), whole)  # 7 queries per chunk
    assert torch.equal(knn_predict(*args, k=10, chunk_elements=1), whole)  # one query per chunk


def test_a_query_equal_to_references_takes_only_those():
    queries, refs, labels = clustered(3, q=50)
    queries = np.concatenate([queries, refs[:20]])
    refs = np.concatenate([refs, refs[:5]])  # duplicated references: two neighbours at distance 0
    labels = np.concatenate([labels, (labels[:5] + 1) % 6])
    got = knn_predict(torch.tensor(queries), torch.tensor(refs), torch.tensor(labels), k=10)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, 10))


def test_k_larger_than_the_reference_set_uses_all_references():
    queries, refs, labels = clustered(4, n=8, q=30)
    got = knn_predict(torch.tensor(queries), torch.tensor(refs), torch.tensor(labels), k=50)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, len(refs)))
