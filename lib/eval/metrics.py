"""Final evaluation of a trained embedding: kNN, clustering and retrieval metrics (docs/evaluation.md).

Test split as queries, training split as reference / database. Pure functions of tensors on their own
device; the Q x N similarity matrix is never held whole: queries are taken in chunks of
``chunk_elements // N`` rows.
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from lib.eval.knn import knn_predict

CHUNK_ELEMENTS = 2**24  # (q, N) entries per chunk; the ranking's float64 buffers peak near 1.5 GB
KMEANS_RESTARTS = 10  # scikit-learn's n_init, set explicitly
PR_RECALLS = [i / 20 for i in range(21)]  # 0, 0.05, ..., 1; i / 20 rounds exactly like hits / R


def knn_accuracies(queries, query_labels, references, reference_labels, ks=(1, 5, 10), num_classes=None,
                   exclude_self=False):
    """Distance-weighted kNN accuracies, ``{k: {"overall": OA, "average": AA}}``, for each k in ``ks``.

    Predictions are ``knn_predict`` (scikit-learn's ``KNeighborsClassifier(weights="distance")``) on the
    embeddings as given (the model returns them L2-normalised). OA is the fraction of queries predicted
    correctly; AA is the mean, over the classes present among the queries, of per-class recall (correct
    queries of the class / queries of the class). Both lie in [0, 1]. ``exclude_self``: the queries are the
    references, each left out of its own neighbours (``knn_predict``).
    """
    query_labels = query_labels.to(queries.device)
    num_classes = num_classes or max(int(query_labels.max()), int(reference_labels.max())) + 1
    per_class = torch.bincount(query_labels, minlength=num_classes).double()              # (C,)
    present = per_class > 0
    scores = {}
    for k in ks:
        predicted = knn_predict(queries, references, reference_labels, k=k, exclude_self=exclude_self)  # (Q,)
        correct = (predicted == query_labels).double()                                    # (Q,)
        class_correct = torch.bincount(query_labels, weights=correct, minlength=num_classes)  # (C,)
        scores[k] = {"overall": correct.mean().item(),
                     "average": (class_correct[present] / per_class[present]).mean().item()}
    return scores


def confusion_matrix(predictions, labels, num_classes):
    """Counts as an int64 (C, C) tensor: entry [i, j] is the number of items of true class i predicted as j."""
    flat = labels.to(predictions.device) * num_classes + predictions                      # (Q,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(predictions, labels):
    """Per-class precision, recall, F1 and support of predicted labels, as scikit-learn's
    ``classification_report(labels, predictions, zero_division=0, output_dict=True)``.

    Classes are those among the labels or the predictions, ascending. For class c with tp true positives,
    fp false positives and fn false negatives: precision = tp / (tp + fp), recall = tp / (tp + fn), F1 =
    2 tp / (2 tp + fp + fn), support = tp + fn; 0 where a denominator is 0. Returns ``{"per_class": {c:
    {precision, recall, f1, support}}, "macro avg": ..., "weighted avg": ... (weights: support),
    "accuracy": ...}``.
    """
    labels = labels.to(predictions.device)
    present = torch.cat([labels, predictions]).unique()                                   # (c,) ascending
    counts = confusion_matrix(predictions, labels, int(present.max()) + 1)[present][:, present].double()  # (c, c)
    tp, predicted, support = counts.diag(), counts.sum(0), counts.sum(1)                  # (c,) each

    def ratio(a, b):
        return torch.where(b > 0, a / b.clamp_min(1), 0.0)

    scores = {"precision": ratio(tp, predicted), "recall": ratio(tp, support),
              "f1": ratio(2 * tp, predicted + support), "support": support}
    report = {"per_class": {int(c): {name: v[i].item() for name, v in scores.items()} for i, c in
                            enumerate(present.tolist())}}
    report["macro avg"] = {**{name: v.mean().item() for name, v in scores.items() if name != "support"},
                           "support": len(labels)}
    report["weighted avg"] = {**{name: (v * support).sum().item() / len(labels) for name, v in scores.items()
                                 if name != "support"}, "support": len(labels)}
    report["accuracy"] = tp.sum().item() / len(labels)
    return report


def cluster_accuracy(clusters, labels):
    """Fraction of items whose cluster is matched to their class, under the best one-to-one matching.

    ``clusters`` and ``labels`` are integer numpy arrays; the matching maximises the number of matched
    items (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).
    """
    size = int(max(clusters.max(), labels.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)                                       # (clusters, classes)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return counts[rows, cols].sum() / len(labels)


def clustering_scores(embeddings, labels, num_classes, seed=0):
    """K-means clustering of the embeddings, ``{"kmeans_accuracy": ..., "nmi": ...}``.

    scikit-learn ``KMeans(n_clusters=num_classes, n_init=10, random_state=seed)`` on the L2-normalised
    embeddings (numpy, CPU). ``kmeans_accuracy`` is ``cluster_accuracy`` (Hungarian matching of clusters
    to classes); ``nmi`` is ``normalized_mutual_info_score(labels, clusters)``. Both lie in [0, 1].
    """
    points = F.normalize(embeddings.double(), dim=1).cpu().numpy()                       # (N, D)
    labels = labels.cpu().numpy()                                                         # (N,)
    clusters = KMeans(n_clusters=num_classes, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(points)
    return {"kmeans_accuracy": float(cluster_accuracy(clusters, labels)),
            "nmi": float(normalized_mutual_info_score(labels, clusters))}


def retrieval_scores(queries, query_labels, database, database_labels, ks=(20, 50, 100),
                     precision_ks=(1, 5, 10, 20, 50, 100), pr_recalls=None, chunk_elements=CHUNK_ELEMENTS,
                     recall_ks=(1, 2, 4, 8), exclude_self=False):
    """Image-retrieval scores of each query against the whole database, averaged over queries.

    The database is ranked by descending cosine similarity, ties by ascending database index (stable
    sort); an item is relevant when it has the query's label. ``exclude_self``: the queries are the
    database (same rows, same order) and each query's own row is left out of its ranking (retrieval within
    one set, as for the unseen classes). For one query, with hits(i) the relevant items among the first i,
    and R the relevant items in the database:

    - ``map``: average precision over the full ranking, sum over relevant ranks i of hits(i) / i, over R
      (scikit-learn's ``average_precision_score`` when there are no ties).
    - ``map@k``: sum over relevant ranks i <= k of hits(i) / i, over hits(k); 0 when hits(k) = 0.
    - ``precision@k``: hits(k) / k.
    - ``r_precision``: hits(R) / R.
    - ``map@r``: MAP@R (Musgrave et al., ECCV 2020), sum over relevant ranks i <= R of hits(i) / i, over R.
    - ``recall@k``: 1 when one of the first k items is relevant, else 0 (Recall@K of metric learning).
    - ``anmrr``: Average Normalized Modified Retrieval Rank (MPEG-7), lower is better, in [0, 1]. With
      NG = R, GTM = max NG over all queries and K = min(4 NG, 2 GTM): Rank(j) is the rank of the j-th
      relevant item if it is <= K, else 1.25 K; AVR = sum_j Rank(j) / NG; MRR = AVR - 0.5 - NG / 2;
      NMRR = MRR / (1.25 K - 0.5 - NG / 2); ANMRR is the mean NMRR.
    - ``pr_curve``: ``{"recall": levels, "precision": values}``; at each recall level r (default 0, 0.05,
      ..., 1) the interpolated precision, max of hits(i) / i over the ranks i with hits(i) / R >= r.

    A k beyond the database counts the whole database, still dividing by k. A query with no relevant
    item scores 0 in every precision and recall and 1 in NMRR (pytorch-metric-learning leaves such queries
    out of its mean instead, and caps R at 1023 neighbours). Sums are in float64.
    """
    recalls = PR_RECALLS if pr_recalls is None else list(pr_recalls)
    queries = F.normalize(queries, dim=1)                                                 # (Q, D)
    database = F.normalize(database.to(queries.dtype), dim=1)                             # (N, D)
    query_labels = query_labels.to(queries.device)
    database_labels = database_labels.to(queries.device)
    left_out = int(exclude_self)
    n = len(database) - left_out  # items ranked for each query
    in_database = torch.bincount(database_labels, minlength=int(query_labels.max()) + 1)  # (C,)
    gtm = (in_database[query_labels].max() - left_out).double()
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=queries.device)           # (N,)
    levels = torch.tensor(recalls, dtype=torch.float64, device=queries.device)          # (L,)
    per_query = {name: [] for name in ["map", "r_precision", "map@r", "anmrr", "pr"]}
    per_query.update({f"map@{k}": [] for k in ks})
    per_query.update({f"precision@{k}": [] for k in precision_ks})
    per_query.update({f"recall@{k}": [] for k in recall_ks})
    step = max(1, chunk_elements // len(database))
    for start, query, label in zip(range(0, len(queries), step), queries.split(step), query_labels.split(step)):
        similarity = query @ database.T                                                   # (q, N)
        if exclude_self:  # the query's own row sorts last (cosines are >= -1), then is cut off
            rows = torch.arange(len(query), device=query.device)                          # (q,)
            similarity[rows, start + rows] = -float("inf")
        order = similarity.sort(dim=1, descending=True, stable=True).indices[:, :n]       # (q, N)
        relevant = database_labels[order] == label[:, None]                               # (q, N)
        hits = relevant.cumsum(dim=1).double()                                            # (q, N)
        precision = hits / ranks                                                          # (q, N)
        total = hits[:, -1]                                                               # (q,)
        found = total > 0
        at_relevant = precision * relevant                                                # (q, N)
        per_query["map"].append(at_relevant.sum(1) / total.clamp_min(1))
        for k in ks:
            top = min(k, n)
            per_query[f"map@{k}"].append(at_relevant[:, :top].sum(1) / hits[:, top - 1].clamp_min(1))
        for k in precision_ks:
            per_query[f"precision@{k}"].append(hits[:, min(k, n) - 1] / k)
        for k in recall_ks:
            per_query[f"recall@{k}"].append((hits[:, min(k, n) - 1] > 0).double())
        r_index = (total.long() - 1).clamp_min(0)[:, None]                                # (q, 1)
        per_query["r_precision"].append(torch.where(found, precision.gather(1, r_index)[:, 0], 0.0))
        within_r = at_relevant * (ranks <= total[:, None])                                # (q, N)
        per_query["map@r"].append(within_r.sum(1) / total.clamp_min(1))
        cutoff = torch.minimum(4 * total, 2 * gtm)                                        # (q,) K
        within = relevant & (ranks <= cutoff[:, None])                                    # (q, N)
        missed = total - within.sum(1)                                                    # (q,)
        rank_sum = (ranks * within).sum(1) + missed * 1.25 * cutoff                      # (q,)
        mrr = rank_sum / total.clamp_min(1) - 0.5 - total / 2
        nmrr = mrr / (1.25 * cutoff - 0.5 - total / 2)
        per_query["anmrr"].append(torch.where(found, nmrr, 1.0))
        # Recall rises with rank, so the ranks reaching a level form a suffix: take suffix maxima.
        recall = hits / total.clamp_min(1)[:, None]                                       # (q, N)
        best_after = precision.flip(1).cummax(dim=1).values.flip(1)                      # (q, N)
        best_after = F.pad(best_after, (0, 1))                                            # (q, N + 1)
        first = torch.searchsorted(recall, levels.expand(len(query), -1).contiguous())    # (q, L)
        per_query["pr"].append(best_after.gather(1, first))
    scores = {name: torch.cat(values).mean(0) for name, values in per_query.items()}
    curve = scores.pop("pr")                                                              # (L,)
    scores = {name: value.item() for name, value in scores.items()}
    scores["pr_curve"] = {"recall": recalls, "precision": curve.tolist()}
    return scores
