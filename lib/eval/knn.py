"""Distance-weighted kNN classification on the device, in chunks (docs/method.md section 8)."""
import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

CHUNK_ELEMENTS = 2**26  # distances held at once: 256 MB in float32
POOL_SLACK = 16  # candidates kept beyond k from the fast ranking, re-ranked by exact distances
REDUCED_PRECISION_UNIT = {"high": 2.0**-11, "medium": 2.0**-8}  # TF32 / bfloat16 matmul unit roundoff
NUMPY_DTYPES = (torch.float32, torch.float64)  # CPU tensors whose product goes through numpy's BLAS
CPU_CHUNKS_PER_THREAD = 4  # on the CPU, query chunks per thread: each thread ranks its own chunks alone


def knn_predict(queries, references, reference_labels, k=10, chunk_elements=CHUNK_ELEMENTS, exclude_self=False):
    """Predictions of scikit-learn's ``KNeighborsClassifier(n_neighbors=k, weights="distance")``.

    ``exclude_self``: the queries are the references (same rows, same order) and each one's own row is left
    out of its neighbours (leave-one-out, as within the unseen classes' test images).

    Euclidean distance; each of the k nearest references votes with weight 1 / distance, and a query
    at distance 0 from some references takes only those (scikit-learn's rule). References at equal
    distance are taken in index order, and a tied vote goes to the smallest label, as scikit-learn.
    ``k`` is capped at the number of references.

    Exact on every processor: the fast matrix product |r|^2 - 2 q.r only proposes ``k + POOL_SLACK``
    candidates per query, in order. Its rounding bound decides the rest (``_product_error``): where the
    (k+1)-th proposed value exceeds the k-th by more than twice the bound, the first k candidates are the
    k nearest by exact distance, and only their distances are recomputed from the vectors (q - r, in
    float64, so a duplicate is at distance exactly 0 whatever the kernel) for the votes. Only the other
    queries (a near tie at the k-th place, duplicates) rank their whole pool by exact distances; there a
    reference outside the pool is at least the pool's last proposed value minus the bound away, and a
    query whose k-th exact distance is not below that is ranked against all references exactly instead
    (rare: many duplicates). The Q x N matrix is never held whole: queries are taken in chunks.

    On the CPU, each of torch's threads takes whole chunks, with one thread for each operation inside
    them (torch's and numpy's BLAS are set to one thread meanwhile, then restored), as scikit-learn
    parallelises its brute force: fewer synchronisations than every operation split over the threads,
    which costs most on a loaded machine. Up to that many chunks are then held at once.
    """
    references = references.to(queries.dtype)
    reference_labels = reference_labels.to(queries.device)
    num_classes = int(reference_labels.max()) + 1
    others = len(references) - int(exclude_self)  # references each query may take
    k = min(k, others)
    pool = min(others, k + POOL_SLACK)
    ref_sq = (references * references).sum(dim=1)                                   # (N,)
    scores = _scorer(references, ref_sq)
    error = _product_error(queries, references.shape[1], ref_sq)                   # (Q,)
    threads = torch.get_num_threads() if queries.device.type == "cpu" else 1
    step = max(1, chunk_elements // max(len(references), pool * references.shape[1]) // threads)
    if threads > 1:  # at least CPU_CHUNKS_PER_THREAD chunks for each thread, where there are queries enough
        step = min(step, max(1, math.ceil(len(queries) / (threads * CPU_CHUNKS_PER_THREAD))))
    buffers = {}  # each thread's (step, N) distances, reused over its chunks

    def predict(start):
        query, query_error = queries[start:start + step], error[start:start + step]  # (q, D), (q,)
        if threading.get_ident() not in buffers:
            buffers[threading.get_ident()] = queries.new_empty(min(step, len(queries)), len(references))
        buffer = buffers[threading.get_ident()]
        partial = scores(query, buffer[:len(query)])                                # (q, N) ~ |q - r|^2 - |q|^2
        rows = torch.arange(len(query), device=query.device)                         # (q,)
        if exclude_self:  # a query's own row sorts last and stays out of its pool (pool <= N - 1)
            partial[rows, start + rows] = float("inf")
        proposed, candidates = partial.topk(pool, dim=1, largest=False)             # (q, P) ascending
        d2, nearest = _exact_nearest(query, references, candidates[:, :k], k)      # (q, k), (q, k)
        if pool > k:  # proposed k-th and (k+1)-th closer than twice the bound: the order there may be wrong
            near_tie = proposed[:, k].double() - proposed[:, k - 1].double() <= 2 * query_error  # (q,)
            unsure = near_tie.nonzero().flatten()                                    # (u,)
            if len(unsure):
                d2[unsure], nearest[unsure] = _pool_nearest(query[unsure], references, candidates[unsure],
                                                            proposed[unsure, -1], query_error[unsure], k,
                                                            start + unsure if exclude_self else None,
                                                            pool < others)
        return _vote(d2.sqrt(), reference_labels[nearest], num_classes)            # (q,)

    starts = range(0, len(queries), step)
    if threads == 1 or len(starts) == 1:
        return torch.cat([predict(start) for start in starts])                     # (Q,)
    with _one_thread_each(), ThreadPoolExecutor(threads) as executor:
        return torch.cat(list(executor.map(predict, starts)))                      # (Q,)


@contextlib.contextmanager
def _one_thread_each():
    """torch's operations and numpy's BLAS on one thread each, for threads that each take their own work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def _pool_nearest(query, references, candidates, last_proposed, query_error, k, own_rows, outside):
    """The k nearest of each query by exact distance, among its pool of ``candidates`` (q, P), or among all
    references (less its own row ``own_rows``, where given) when some reference ``outside`` the pool might be
    nearer than the pool's k-th: it is at least ``last_proposed`` + |q|^2 - ``query_error`` away."""
    d2, nearest = _exact_nearest(query, references, candidates, k)                 # (q, k), (q, k)
    if not outside:
        return d2, nearest
    beyond = last_proposed.double() + query.double().square().sum(1) - query_error  # (q,)
    for i in (beyond <= d2[:, -1]).nonzero().flatten().tolist():
        everyone = torch.arange(len(references), device=query.device)                # (N,)
        everyone = everyone[everyone != own_rows[i]] if own_rows is not None else everyone  # (N or N - 1,)
        exact_d2, exact_nearest = _exact_nearest(query[i:i + 1], references, everyone[None], k)  # (1, k), (1, k)
        d2[i], nearest[i] = exact_d2[0], exact_nearest[0]
    return d2, nearest


def _scorer(references, ref_sq):
    """A function (query (q, D), out (q, N)) -> out = fl(|r|^2 - 2 q.r) for every reference r.

    On the CPU, one float32 or float64 product [q, 1] . [-2 r, |r|^2] through numpy's BLAS (OpenBLAS), which
    picks its kernels for the processor it runs on: 1.25x the speed of torch's (MKL) on an AMD EPYC with
    AVX-512 (benchmarks/RESULTS.md). Elsewhere torch's addmm.
    """
    references, ref_sq = references.detach(), ref_sq.detach()
    if references.device.type != "cpu" or references.dtype not in NUMPY_DTYPES:
        return lambda query, out: torch.addmm(ref_sq, query, references.T, alpha=-2, out=out)
    augmented = torch.cat([-2 * references, ref_sq[:, None]], dim=1).numpy()       # (N, D + 1)

    def scores(query, out):
        query = torch.cat([query.detach(), query.new_ones(len(query), 1)], dim=1).numpy()  # (q, D + 1)
        np.matmul(query, augmented.T, out=out.numpy())
        return out
    return scores


def _product_error(queries, d, ref_sq):
    """Bound on how far ``_scorer``'s fl(|r|^2 - 2 q.r) + |q|^2 can be from the float64 sum of (q - r)^2, and
    on the float64 roundings of the comparisons made with it, for each query, any summation order (Q,).

    fl(|r|^2), summed elementwise in the tensors' precision (unit roundoff v), is off by at most
    gamma_D(v) |r|^2. The product sums D + 1 terms: the D products -2 q_i r_i (the factor 2 is exact) and
    fl(|r|^2), whether as a column of the matrices or as addmm's added term; each term may carry up to two
    roundings of its factors (TF32, bfloat16), so the sum is off by at most gamma_{D+2}(u) times the sum of
    the absolute terms, <= 2 |q| |r| + fl(|r|^2) (Cauchy-Schwarz). Hence <= 2 gamma_{D+2}(u) |q| R +
    (gamma_{D+2}(u) + gamma_D(v) (1 + gamma_{D+2}(u))) R^2 with R the largest reference norm,
    gamma_n(u) = n u / (1 - n u) (infinite from n u >= 1 on: no bound), u the unit roundoff of the matrix
    product (TF32 or bfloat16 where torch allows them for float32). The float64 sum of (q - r)^2 is within
    gamma_{D+2}(2^-53) |q - r|^2 <= gamma_{D+2}(2^-53) (|q| + R)^2 of the true value, and so are |q|^2
    and the sums and differences of the comparisons: 4 such terms in all. The norms are bounded from above
    by the squared norms summed in the tensors' precision (``ref_sq`` for the references' fl(|r|^2)).
    """
    unit = elementwise = torch.finfo(queries.dtype).eps / 2
    if queries.dtype == torch.float32:
        unit = REDUCED_PRECISION_UNIT.get(torch.get_float32_matmul_precision(), unit)
    gamma, squared = _gamma(d + 2, unit), _gamma(d, elementwise)
    if math.isinf(gamma) or squared >= 1:  # no bound: every query is ranked exactly
        return torch.full((len(queries),), math.inf, dtype=torch.float64, device=queries.device)  # (Q,)
    # fl(|x|^2) >= (1 - gamma_D(v)) |x|^2; the float64 division and square root may round down by 2^-52 each
    widen = (1 + 2.0**-50) / (1 - squared)
    largest = (ref_sq.max().double() * widen).sqrt() * (1 + 2.0**-50)
    norm = ((queries * queries).sum(dim=1).double() * widen).sqrt() * (1 + 2.0**-50)  # (Q,)
    squares = gamma + squared * (1 + gamma)
    return 2 * gamma * norm * largest + squares * largest**2 + 4 * _gamma(d + 2, 2.0**-53) * (
        norm + largest).square()                                                   # (Q,)


def _gamma(n, unit):
    """gamma_n = n u / (1 - n u): the relative error bound of n roundings of unit roundoff u; infinite (no
    bound) from n u >= 1 on."""
    return n * unit / (1 - n * unit) if n * unit < 1 else float("inf")


def _exact_nearest(query, references, candidates, k):
    """The k candidates nearest to each query by exact squared distance, equal distances in index order.

    Returns (squared distances in float64, reference indices), each (q, k), ascending.
    """
    candidates, _ = candidates.sort(dim=1)                                          # (q, P) index order
    difference = query.double()[:, None, :] - references[candidates].double()      # (q, P, D)
    d2 = difference.square().sum(dim=2)                                             # (q, P)
    d2, order = d2.sort(dim=1, stable=True)                                         # (q, P)
    return d2[:, :k], candidates.gather(1, order[:, :k])                            # (q, k), (q, k)


def _vote(distance, labels, num_classes):
    """scikit-learn's distance-weighted vote: weight 1 / distance, or only the references at distance 0."""
    exact = distance == 0                                                           # (q, k)
    weight = torch.where(exact.any(1, keepdim=True), exact.double(), 1.0 / distance)  # (q, k)
    votes = torch.zeros(len(distance), num_classes, dtype=torch.float64, device=distance.device)
    votes.scatter_add_(1, labels, weight)                                           # (q, C)
    return votes.argmax(dim=1)                                                      # (q,)
