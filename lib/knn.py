"""Distance-weighted kNN classification on the device, in chunks (SPEC.md section 8)."""
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
    ref_sq = (references * references).sum(dim=1)                              # (N,)
    step = max(1, chunk_elements // len(references))
    predictions = []
    for query in queries.split(step):
        d2 = (query * query).sum(1, keepdim=True) + ref_sq - 2 * query @ references.T  # (q, N)
        d2, nearest = d2.clamp_min_(0).topk(k, dim=1, largest=False)          # (q, k)
        distance = d2.double().sqrt()
        exact = distance == 0                                                 # (q, k)
        weight = torch.where(exact.any(1, keepdim=True), exact.double(), 1.0 / distance)
        votes = torch.zeros(len(query), num_classes, dtype=torch.float64, device=query.device)
        votes.scatter_add_(1, reference_labels[nearest], weight)              # (q, C)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)                                             # (Q,)
