"""lib.knn_predict against scikit-learn's distance-weighted KNeighborsClassifier."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lib import knn_predict
from lib.eval import knn
from lib.eval.knn import POOL_SLACK


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


def test_k_larger_than_the_reference_set_uses_all_references():
    queries, refs, labels = clustered(4, n=8, q=30)
    got = knn_predict(torch.tensor(queries), torch.tensor(refs), torch.tensor(labels), k=50)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, len(refs)))


def dyadic(x):
    """``x`` rounded to multiples of 2^-20: exact in float32, and for |x| <= 1 in D <= 2^12 dimensions every
    product and dot product is a multiple of 2^-40 below 2^12, exact in float64 (53 bits). So scikit-learn's
    brute force, which ranks by |r|^2 - 2 q.r in float64, computes exact distances here, while our float32
    matrix product does not (a product needs 40 bits)."""
    return np.round(x * 2**20) / 2**20


def kd_tree_predict(queries, refs, labels, k):
    # scikit-learn's brute force (chosen by "auto" above 15 dimensions) ranks by |q|^2 + |r|^2 - 2 q.r in
    # float64: a duplicate comes out at ~1e-8, not 0, and the other neighbours' votes decide. Its kd-tree
    # sums (q - r)^2, so a duplicate is at exactly 0 and only the duplicates vote: the rule it documents.
    model = KNeighborsClassifier(n_neighbors=k, weights="distance", algorithm="kd_tree").fit(refs, labels)
    return model.predict(queries)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [3, 10])  # k >= the copies: the kd-tree takes tied ones in tree order, not index order
def test_a_query_equal_to_references_takes_only_those(k, dtype):
    queries, refs, labels = clustered(3, q=50, dim=128)
    queries = np.concatenate([queries, refs[:20]]).astype(dtype_name(dtype))
    refs = np.concatenate([refs, refs[:5], refs[:3]]).astype(dtype_name(dtype))  # two or three at distance 0
    labels = np.concatenate([labels, (labels[:5] + 1) % 6, (labels[:3] + 3) % 6])  # each copy another label
    got = knn_predict(torch.tensor(queries), torch.tensor(refs), torch.tensor(labels), k=k)
    np.testing.assert_array_equal(got.numpy(), kd_tree_predict(queries, refs, labels, k))


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def equidistant(seed, dim=32, q=20, ties=15):
    """Dyadic references around each query, 2 * ``ties`` of them at distance exactly 1/8 with random labels."""
    rng = np.random.default_rng(seed)
    queries = dyadic(rng.uniform(-0.25, 0.25, (q, dim)))
    refs = [dyadic(rng.uniform(-0.25, 0.25, (300, dim)))]
    for query in queries:
        axes = np.eye(dim)[rng.permutation(dim)[:ties]] / 8                         # (ties, dim)
        refs += [query + axes, query - axes]
    refs = np.concatenate(refs)
    order = rng.permutation(len(refs))  # ties at scattered indices
    return queries, refs[order], rng.integers(0, 6, len(refs))


@pytest.mark.parametrize("k", [1, 5, 10, 40])
def test_equal_distances_at_the_k_th_place_are_taken_in_index_order(k):
    # 30 references tie at the nearest distance: which ones are among the k is scikit-learn's index order.
    queries, refs, labels = equidistant(5)
    got = knn_predict(*(torch.tensor(x, dtype=torch.float32) for x in (queries, refs)), torch.tensor(labels), k=k)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, k))


@pytest.mark.parametrize("k", [1, 10])
def test_more_duplicates_than_candidates_are_ranked_exactly(k):
    # A query with more copies among the references than the fast ranking's pool (k + POOL_SLACK) of
    # candidates: the copies taken are the first in index order, whatever the product's rounding proposed.
    queries, refs, labels = equidistant(6, q=4)
    copies = np.repeat(queries, POOL_SLACK + k + 5, axis=0)
    refs = np.concatenate([refs, copies, refs[:50]])
    labels = np.concatenate([labels, np.arange(len(copies)) % 6, labels[:50]])
    got = knn_predict(*(torch.tensor(x, dtype=torch.float32) for x in (queries, refs)), torch.tensor(labels), k=k)
    np.testing.assert_array_equal(got.numpy(), sklearn_predict(queries, refs, labels, k))


@pytest.mark.parametrize("numpy_product", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_product_stays_within_its_rounding_bound(dtype, numpy_product, monkeypatch):
    # The bound that decides which queries are re-ranked exactly: |fl(|r|^2 - 2 q.r) + |q|^2 - exact| <= error
    # for every pair, where exact is the float64 sum of (q - r)^2 (float32 inputs; float64 inputs: to the
    # float64 roundings, which the bound also covers). Norms of 1 to 20, so that the terms do not all cancel.
    if not numpy_product:
        monkeypatch.setattr(knn, "NUMPY_DTYPES", ())  # torch's addmm, the GPU's product
    rng = np.random.default_rng(8)
    refs = torch.tensor(rng.standard_normal((500, 128)) * rng.uniform(1, 20, (500, 1)), dtype=dtype)
    queries = torch.tensor(rng.standard_normal((60, 128)) * rng.uniform(1, 20, (60, 1)), dtype=dtype)
    ref_sq = (refs * refs).sum(dim=1)
    scores = knn._scorer(refs, ref_sq)(queries, queries.new_empty(60, 500)).double()   # (60, 500)
    exact = (queries.double()[:, None] - refs.double()).square().sum(2)                # (60, 500)
    error = knn._product_error(queries, 128, ref_sq)                                   # (60,)
    deviation = (scores + queries.double().square().sum(1, keepdim=True) - exact).abs()
    assert (deviation <= error[:, None]).all()
    assert deviation.max() > 0 or dtype == torch.float64  # float32: the bound is not vacuously met


@pytest.mark.parametrize("k", [1, 10])
def test_torch_product_gives_the_same_predictions(k, monkeypatch):
    queries, refs, labels = clustered(9, dim=128)
    args = torch.tensor(queries, dtype=torch.float32), torch.tensor(refs, dtype=torch.float32), torch.tensor(labels)
    monkeypatch.setattr(knn, "NUMPY_DTYPES", ())
    np.testing.assert_array_equal(knn_predict(*args, k=k).numpy(), sklearn_predict(queries.astype(np.float32),
                                                                                   refs.astype(np.float32), labels, k))


def test_threads_take_whole_chunks_with_the_same_predictions_and_get_their_setting_back():
    queries, refs, labels = clustered(10)
    args = torch.tensor(queries), torch.tensor(refs), torch.tensor(labels)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = knn_predict(*args, k=10)  # one thread: chunks in turn
        torch.set_num_threads(3)
        threaded = knn_predict(*args, k=10, chunk_elements=len(refs) * 7 * 3)  # 3 threads, 7 queries a chunk
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert torch.equal(threaded, alone)
