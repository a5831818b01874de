"""Rotation robustness: the 8 symmetries of the square (the dihedral group D4) on image batches, the test
queries embedded under each of them against the unrotated database, and test-time augmentation over them.

Overhead images have no canonical orientation: a scene turned by 90 degrees or mirrored is the same scene,
and a metric for remote sensing should find it as well. The paper trains with horizontal flips only.
"""
import torch
import torch.nn.functional as F

from lib.eval.metrics import knn_accuracies, retrieval_scores

# name -> (mirror left-right first, then quarter turns counter-clockwise): every element of D4 once.
D4 = {"identity": (False, 0), "rot90": (False, 1), "rot180": (False, 2), "rot270": (False, 3),
      "flip": (True, 0), "flip-rot90": (True, 1), "flip-rot180": (True, 2), "flip-rot270": (True, 3)}
ROTATION_KNN_K = 10  # the kNN of the table: the paper's K


def transform(images, name):
    """``images`` (..., H, W) under the symmetry ``name`` of ``D4`` (square images keep their shape)."""
    mirror, turns = D4[name]
    if mirror:
        images = images.flip(-1)                                                      # (..., H, W)
    return torch.rot90(images, turns, dims=(-2, -1))                                  # (..., W, H) for odd turns


def tta_embed(embed, images):
    """Test-time augmentation: the mean of ``embed`` (a function of an image batch returning (N, D)) over the
    8 transforms of ``images``, renormalised to unit length."""
    total = sum(embed(transform(images, name)) for name in D4)                       # (N, D)
    return F.normalize(total, dim=1)


def rotation_scores(embed_queries, query_labels, database, database_labels, exclude_self=False, k=ROTATION_KNN_K):
    """mAP and kNN OA (K = ``k``) of the queries under each symmetry against the unrotated ``database``.

    ``embed_queries(name)`` returns the (Q, D) query embeddings under the transform ``name``; ``exclude_self``
    as in ``retrieval_scores`` (the queries are the database, each left out of its own ranking). Returns
    ``{name: {"map", "knn_oa"}, ..., "worst": {"map", "map_transform", "knn_oa", "knn_oa_transform"}}``: the
    worst case is the lowest value over the 8 transforms, the first in ``D4`` order on ties.
    """
    scores = {}
    for name in D4:
        queries = embed_queries(name)                                                 # (Q, D)
        scores[name] = {
            "map": retrieval_scores(queries, query_labels, database, database_labels, ks=(), precision_ks=(),
                                    recall_ks=(), exclude_self=exclude_self)["map"],
            "knn_oa": knn_accuracies(queries, query_labels, database, database_labels, ks=(k,),
                                     exclude_self=exclude_self)[k]["overall"]}
    worst = {}
    for metric in ("map", "knn_oa"):
        name = min(D4, key=lambda n: scores[n][metric])
        worst.update({metric: scores[name][metric], f"{metric}_transform": name})
    return {**scores, "worst": worst}
