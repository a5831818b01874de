"""Distance-weighted kNN classification on the device, in chunks (docs/method.md section 8)."""
import torch

CHUNK_ELEMENTS = 2**26  # distances held at once: 256 MB in float32
POOL_SLACK = 16  # candidates kept beyond k from the fast ranking, re-ranked by exact distances
REDUCED_PRECISION_UNIT = {"high": 2.0**-11, "medium": 2.0**-8}  # TF32 / bfloat16 matmul unit roundoff


def knn_predict(queries, references, reference_labels, k=10, chunk_elements=CHUNK_ELEMENTS, exclude_self=False):
    """Predictions of scikit-learn's ``KNeighborsClassifier(n_neighbors=k, weights="distance")``.

    ``exclude_self``: the queries are the references (same rows, same order) and each one's own row is left
    out of its neighbours (leave-one-out, as within the unseen classes' test images).

    Euclidean distance; each of the k nearest references votes with weight 1 / distance, and a query
    at distance 0 from some references takes only those (scikit-learn's rule). References at equal
    distance are taken in index order, and a tied vote goes to the smallest label, as scikit-learn.
    ``k`` is capped at the number of references.

    Exact on every processor: the fast matrix product |r|^2 - 2 q.r only proposes ``k + POOL_SLACK``
    candidates per query, whose distances are then recomputed from the vectors (q - r, in float64), so
    a duplicate is at distance exactly 0 whatever the kernel. A reference outside the pool is at least
    the pool's last proposed value minus the product's rounding bound away; a query whose k-th exact
    distance is not below that is ranked against all references exactly instead (rare: many duplicates).
    The Q x N matrix is never held whole: queries are taken in chunks.
    """
    references = references.to(queries.dtype)
    reference_labels = reference_labels.to(queries.device)
    num_classes = int(reference_labels.max()) + 1
    others = len(references) - int(exclude_self)  # references each query may take
    k = min(k, others)
    pool = min(others, k + POOL_SLACK)
    ref_sq = (references * references).sum(dim=1)                                   # (N,)
    error = _product_error(queries, references)                                    # (Q,)
    step = max(1, chunk_elements // max(len(references), pool * references.shape[1]))
    predictions = []
    for start, query, query_error in zip(range(0, len(queries), step), queries.split(step), error.split(step)):
        partial = torch.addmm(ref_sq, query, references.T, alpha=-2)                # (q, N) ~ |q - r|^2 - |q|^2
        rows = torch.arange(len(query), device=query.device)                         # (q,)
        if exclude_self:  # a query's own row sorts last and stays out of its pool (pool <= N - 1)
            partial[rows, start + rows] = float("inf")
        proposed, candidates = partial.topk(pool, dim=1, largest=False)             # (q, P)
        d2, nearest = _exact_nearest(query, references, candidates, k)             # (q, k), (q, k)
        # Every reference outside the pool has |q - r|^2 >= proposed[:, -1] + |q|^2 - error.
        outside = proposed[:, -1].double() + query.double().square().sum(1) - query_error  # (q,)
        unsure = (outside <= d2[:, -1]).nonzero().flatten().tolist() if pool < others else []
        for i in unsure:
            everyone = torch.arange(len(references), device=query.device)            # (N,)
            everyone = everyone[everyone != start + i] if exclude_self else everyone  # (N or N - 1,)
            exact_d2, exact_nearest = _exact_nearest(query[i:i + 1], references, everyone[None], k)  # (1, k), (1, k)
            d2[i], nearest[i] = exact_d2[0], exact_nearest[0]
        predictions.append(_vote(d2.sqrt(), reference_labels[nearest], num_classes))
    return torch.cat(predictions)                                                  # (Q,)


def _product_error(queries, references):
    """Bound on |fl(|r|^2 - 2 q.r) - (|r|^2 - 2 q.r)| for each query, any summation order, float64 (Q,).

    Each of |r|^2 and q.r is a sum of D products, off by at most gamma_D times the sum of the absolute
    products (<= |r|^2 and |q| |r|, Cauchy-Schwarz); the addition adds one more rounding. Hence
    <= 2 gamma_{D+2} (|q| + R)^2 with R the largest reference norm, gamma_n = n u / (1 - n u),
    u the unit roundoff of the matrix product (TF32 or bfloat16 where torch allows them for float32).
    """
    unit = torch.finfo(queries.dtype).eps / 2
    if queries.dtype == torch.float32:
        unit = REDUCED_PRECISION_UNIT.get(torch.get_float32_matmul_precision(), unit)
    n = references.shape[1] + 2
    gamma = n * unit / (1 - n * unit)
    largest = references.double().norm(dim=1).max()
    return 2 * gamma * (queries.double().norm(dim=1) + largest).square()           # (Q,)


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
