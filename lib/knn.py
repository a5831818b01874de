"""Distance-weighted kNN classification on the device, in chunks (docs/method.md section 8)."""
import torch

CHUNK_ELEMENTS = 2**26  # distances held at once: 256 MB in float32


def knn_predict(queries, references, reference_labels, k=10, chunk_elements=CHUNK_ELEMENTS):
    """Predictions of scikit-learn's ``KNeighborsClassifier(n_neighbors=k, weights="distance")``.

    Euclidean distance; each of the k nearest references votes with weight 1 / distance, and a query
    at distance 0 from some references takes only those (scikit-learn's rule). Ties go to the
    smallest label. The Q x N distance matrix is never held whole: queries are taken in chunks of
    ``chunk_elements // N`` rows. ``k`` is capped at the number of references.
    """
    references = references.to(queries.dtype)
    reference_labels = reference_labels.to(queries.device)
    num_classes = int(reference_labels.max()) + 1
    k = min(k, len(references))
    ref_sq = (references * references).sum(dim=1)                                   # (N,)
    step = max(1, chunk_elements // len(references))
    predictions = []
    for query in queries.split(step):
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r; |q|^2 does not change the ranking, so it is added to the k kept.
        partial = torch.addmm(ref_sq, query, references.T, alpha=-2)                # (q, N)
        partial, nearest = partial.topk(k, dim=1, largest=False)                    # (q, k)
        d2 = partial.double() + (query * query).sum(1, keepdim=True).double()
        distance = d2.clamp_min(0).sqrt()                                           # (q, k)
        exact = distance == 0
        weight = torch.where(exact.any(1, keepdim=True), exact.double(), 1.0 / distance)
        votes = torch.zeros(len(query), num_classes, dtype=torch.float64, device=query.device)
        votes.scatter_add_(1, reference_labels[nearest], weight)                   # (q, C)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)                                                  # (Q,)
