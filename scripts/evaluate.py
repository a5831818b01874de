"""Evaluate a trained run as the paper does (docs/evaluation.md): the evaluated split (default test) as
queries, the training split as references / database, embedded with the eval transform on the device.
A run trained with ``--split unseen`` has only unseen classes in its test split: there each test image is a
query against all the other test images (itself left out), as in the metric-learning benchmarks.

    python scripts/evaluate.py runs/NAME                   # best.pt, test split -> runs/NAME/eval/test/
    python scripts/evaluate.py runs/NAME --checkpoint last --split val --device cpu
    python scripts/evaluate.py --checkpoint runs/NAME/checkpoints/last.pt    # as scripts/retrieve.py takes it
    torchrun --nproc_per_node 4 scripts/evaluate.py runs/NAME   # each GPU decodes and embeds a quarter

Under torchrun each rank decodes and embeds its contiguous share of the queries and of the database, the
embeddings are gathered in order, and rank 0 computes the metrics and writes everything: the same results
as one process.

Writes results.json (kNN OA / AA at K = 1, 5, 10; K-means accuracy and NMI; mAP, mAP@20/50/100,
P@k, R-precision, ANMRR, Recall@1/2/4/8, MAP@R; the PR curve; the per-class report of the kNN (K = 10)
predictions; with --rotations, mAP and kNN OA of the queries under each of the 8 symmetries of the square),
confusion_matrix.csv/.png (kNN K = 10), per_class.csv, pr_curve.csv/.png, tsne.png, retrieval_examples.png
and embeddings.npz; logs the confusion matrix and the query embeddings (TensorBoard's projector, with
thumbnails) to the run's tb/eval_<split>/, replaced by a re-run. With --tta d4 everything goes to
eval/<split>-tta-d4/ (and tb/eval_<split>-tta-d4/). Metric definitions: docs/evaluation.md.
"""
import csv
import gc
import json
import os
import shutil
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from errors import InputError, one_line  # noqa: E402
from lib.cli.flags import (  # noqa: E402
    COUNT,
    NON_NEGATIVE_INT,
    SEED,
    ArgumentParser,
    Range,
    add_checkpoint_arguments,
    checkpoint_target,
    default_workers,
)

MIN_TSNE_POINTS = 3  # t-SNE's perplexity (at least 2 here) must stay below the number of points


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--split", default="test", choices=("test", "val"), help="the queries")
    parser.add_argument("--data", default=None, help="the dataset's parent folder, if it moved since training")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="precision of the network")
    parser.add_argument("--batch-size", type=COUNT, default=512, help="images per embedding pass")
    parser.add_argument("--num_workers", type=NON_NEGATIVE_INT, default=default_workers(),
                        help="processes decoding images (default: the cores, at most 4)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="decoded images on disk, as in training (default: the run's own --cache-dir)")
    parser.add_argument("--weights", default=None, metavar="PATH", help="not used (the checkpoint holds the trained "
                        "network); accepted so that the paper scripts' EXTRA_ARGS serve training and evaluation alike")
    parser.add_argument("--tsne-points", type=Range(int, low=MIN_TSNE_POINTS), default=5000,
                        help="queries shown in tsne.png (a seeded sample)")
    parser.add_argument("--seed", type=SEED, default=0, help="seeds K-means, t-SNE and the example queries")
    parser.add_argument("--rotations", action="store_true",
                        help="also score the queries rotated by 90, 180, 270 degrees and mirrored (the 8 symmetries of "
                        "the square), each against the unrotated database: mAP and kNN@10 OA per transform")
    parser.add_argument("--tta", default="none", choices=("none", "d4"),
                        help="d4: embed every image, query and database, as the renormalised mean of its 8 "
                        "symmetries' embeddings (results in eval/<split>-tta-d4/)")
    parser.add_argument("--check-args", action="store_true",
                        help="parse and check the flags and the paths given (--data, --cache-dir), then exit 0 "
                        "without reading the run, which may not exist yet (the paper scripts check before training)")
    return parser


def check_args(args, parser):
    """``--check-args``: the paths whose kind is known before the run exists."""
    if args.data is not None and not os.path.isdir(args.data):
        parser.error(f"--data {args.data}: no such folder")
    if args.cache_dir is not None and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        parser.error(f"--cache-dir {args.cache_dir} is a file: give a folder")
    sys.exit(0)


if __name__ == "__main__":  # --help and bad flags answer here, before torch and the rest below are imported
    PARSER = get_args_parser()
    ARGS = PARSER.parse_args()
    ARGS.target, ARGS.checkpoint = checkpoint_target(ARGS, PARSER)
    if ARGS.check_args:
        check_args(ARGS, PARSER)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets import decoded_images  # noqa: E402
from datasets.augment import pipeline_of  # noqa: E402
from lib.distributed.ranks import all_gather_varlen, run_on_ranks, shard_batch  # noqa: E402
from lib.eval import plots  # noqa: E402
from lib.eval.inference import checkpoint_path, embed, load_trained, recorded_split, top_k  # noqa: E402
from lib.eval.knn import knn_predict  # noqa: E402
from lib.eval.metrics import (  # noqa: E402
    classification_report,
    clustering_scores,
    confusion_matrix,
    knn_accuracies,
    retrieval_scores,
)
from lib.eval.robustness import D4, rotation_scores, transform, tta_embed  # noqa: E402
from lib.training.device import resolve_precision  # noqa: E402

KNN_KS = (1, 5, 10)
WORST_SHOWN = 3  # classes named in the printed summary, lowest F1 first
EXAMPLE_QUERIES, EXAMPLE_RESULTS = 8, 10
THUMBNAIL = 32  # px, for TensorBoard's projector


def main(args):
    try:
        folder = evaluate(args)
    except InputError as error:  # under torchrun every rank stops alike: rank 0 says why
        sys.exit(f"error: {one_line(error)}" if os.environ.get("RANK", "0") == "0" else 1)
    if folder:
        print(f"wrote {folder}")


def evaluate(args):
    """Evaluate in this process: alone, or as one rank of a torchrun launch (rank 0 returns the output folder)."""
    return run_on_ranks(evaluate_ranks, args)


def evaluate_ranks(args, dist):
    # ---------------- the trained network and the run's own split ----------------
    device = dist.device
    precision = resolve_precision(device, args.amp)
    model, run_args, run_dir = load_trained(args.target, device, args.checkpoint)
    queries, classes, root = recorded_split(run_dir, args.split, args.data)
    # Unseen classes are retrieved among themselves: each test image against the other test images.
    within = split_kind(run_args) == "unseen" and args.split == "test"
    database = queries if within else recorded_split(run_dir, "train", args.data)[0]
    out = os.path.join(run_dir, "eval", args.split + ("-tta-d4" if args.tta == "d4" else ""))
    pipeline = pipeline_of(run_args["band_stats"])  # N-band runs: their bands and per-band statistics
    bands = getattr(pipeline, "bands", None)

    # ---------------- embeddings, on the device: each rank its share, gathered in order ----------------
    size = run_args["image_size"]
    sets = {"queries": queries} if within else {"database": database, "queries": queries}
    labels = {name: torch.tensor([y for _, y in samples]).to(device) for name, samples in sets.items()}
    emb, thumbnails, rotated = {}, None, {}
    for name, samples in sets.items():
        mine = shard_batch(torch.arange(len(samples)), dist.rank, dist.world_size)      # contiguous, rank order
        cache_dir = (args.cache_dir or run_args.get("cache_dir")) if dist.world_size == 1 else None
        images = decoded_images([samples[i] for i in mine.tolist()], size, args.num_workers, cache_dir,
                                bands)                                                   # (n, C, S, S)
        mine_labels = labels[name][mine.to(device)].cpu()

        def network(batch, mine_labels=mine_labels):
            return embed(model, batch, mine_labels, device, precision, args.batch_size, pipeline)  # (n, D)

        def embedded(batch, network=network):  # this rank's share, with --tta, gathered from every rank
            return all_gather_varlen(tta_embed(network, batch) if args.tta == "d4" else network(batch), dist)

        emb[name] = embedded(images)                                                     # (N, D)
        if name == "queries":  # for TensorBoard's projector, and the queries under every symmetry
            thumbnails = all_gather_varlen(thumbnail(pipeline.display(images)), dist)        # (Q, 3, 32, 32)
            rotated = {t: embedded(transform(images, t)) for t in D4} if args.rotations else {}  # (Q, D) each
    if not dist.is_main:
        return None
    os.makedirs(out, exist_ok=True)
    q, q_labels = emb["queries"], labels["queries"]
    db, db_labels = (q, q_labels) if within else (emb["database"], labels["database"])

    # ---------------- metrics ----------------
    num_classes = len(classes)
    # The classes evaluated: all of them, or under --split unseen those of this split (the seen ones for val).
    scored = torch.arange(num_classes, device=device) if split_kind(run_args) == "reference" else \
        torch.cat([q_labels, db_labels]).unique()
    knn = knn_accuracies(q, q_labels, db, db_labels, KNN_KS, num_classes, exclude_self=within)
    retrieval = retrieval_scores(q, q_labels, db, db_labels, exclude_self=within)
    pr = retrieval.pop("pr_curve")
    clustering = clustering_scores(q, q_labels, len(scored), seed=args.seed)
    predicted = knn_predict(q, db, db_labels, k=10, exclude_self=within)
    matrix = confusion_matrix(predicted, q_labels, num_classes)[scored][:, scored].cpu().numpy()
    report = classification_report(predicted, q_labels)
    report["per_class"] = {classes[c]: row for c, row in report["per_class"].items()}
    results = {"split": args.split, "checkpoint": os.path.abspath(checkpoint_path(args.target, args.checkpoint)),
               "split_kind": split_kind(run_args), "database": "queries" if within else "train",
               "tta": args.tta, "num_queries": len(q), "num_database": len(db),
               "knn": {str(k): v for k, v in knn.items()}, "clustering": clustering, "retrieval": retrieval,
               "per_class": report, "pr_curve": pr}
    if rotated:
        results["rotations"] = rotation_scores(rotated.__getitem__, q_labels, db, db_labels, exclude_self=within)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    classes_shown = [classes[c] for c in scored.tolist()]

    # ---------------- tables, figures, embeddings ----------------
    write_csv(os.path.join(out, "confusion_matrix.csv"), ["true \\ predicted", *classes_shown],
              [[c, *row] for c, row in zip(classes_shown, matrix.tolist())])
    write_csv(os.path.join(out, "per_class.csv"), ["class", "precision", "recall", "f1", "support"],
              [[c, row["precision"], row["recall"], row["f1"], int(row["support"])]
               for c, row in report["per_class"].items()])
    method = f"{run_args.get('method', 'snca-ce')} ({run_args['memory']})"
    title = f"kNN (K = 10) on the {args.split} split, {method}, {os.path.basename(os.path.normpath(run_dir))}"
    plots.save(plots.confusion(matrix, classes_shown, title), os.path.join(out, "confusion_matrix.png"))
    write_csv(os.path.join(out, "pr_curve.csv"), ["recall", "precision"], zip(pr["recall"], pr["precision"]))
    plots.save(plots.pr_curve(pr["recall"], pr["precision"], method), os.path.join(out, "pr_curve.png"))
    rng = np.random.default_rng(args.seed)
    shown = np.sort(rng.permutation(len(q))[: args.tsne_points])
    plots.save(plots.scatter_2d(tsne(q[shown].cpu().numpy(), args.seed), q_labels[shown].cpu().numpy(), classes,
                                f"t-SNE of the {args.split} embeddings ({len(shown)} images), {method}"),
               os.path.join(out, "tsne.png"))
    examples = np.sort(rng.permutation(len(q))[:EXAMPLE_QUERIES])
    found = top_k(q[examples], db, EXAMPLE_RESULTS + within).cpu().numpy()            # (8, 10 or 11)
    if within:  # each example query's own image leaves its results
        found = np.stack([row[row != i][:EXAMPLE_RESULTS] for row, i in zip(found, examples)])  # (8, 10)

    def shown(samples):  # uint8 RGB (n, S, S, 3): the images, or N-band images' RGB composites
        return pipeline.display(decoded_images(samples, size, 0, bands=bands)).permute(0, 2, 3, 1).numpy()

    shown_queries = shown([queries[i] for i in examples])
    shown_results = shown([database[j] for j in found.flatten()])
    names = [[classes[db_labels[j]] for j in row] for row in found]
    plots.save(plots.retrieval_grid(shown_queries, shown_results.reshape(*found.shape, *shown_results.shape[1:]),
                                    db_labels.cpu().numpy()[found] == q_labels.cpu().numpy()[examples, None],
                                    [classes[q_labels[i]] for i in examples], names),
               os.path.join(out, "retrieval_examples.png"))
    np.savez_compressed(os.path.join(out, "embeddings.npz"), queries=q.cpu().numpy(),
                        query_labels=q_labels.cpu().numpy(), database=db.cpu().numpy(),
                        database_labels=db_labels.cpu().numpy(), split=args.split, classes=np.array(classes),
                        query_paths=np.array([os.path.relpath(p, root) for p, _ in queries]),
                        database_paths=np.array([os.path.relpath(p, root) for p, _ in database]))
    log_tensorboard(run_dir, os.path.basename(out), results, matrix, classes_shown, q, q_labels, thumbnails,
                    classes, title)
    print(summary(results))
    return out


def split_kind(run_args):
    """The run's --split: reference, or unseen (runs recorded before the flag existed are reference)."""
    return run_args.get("split", "reference")


def tsne(points, seed):
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(points) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def thumbnail(images):
    """uint8 images (n, 3, S, S) as float (n, 3, 32, 32) in [0, 1], for TensorBoard's projector."""
    return torch.nn.functional.interpolate(images.float() / 255, size=(THUMBNAIL, THUMBNAIL), mode="bilinear",
                                           antialias=True)


def log_tensorboard(run_dir, split, results, matrix, classes, queries, labels, thumbnails, names, title):
    """Scalars, the confusion matrix image (of ``classes``) and the query embeddings (projector, with thumbnails;
    ``names`` of every label), in tb/eval_<split>/: a re-run replaces that folder, so nothing is logged twice."""
    from torch.utils.tensorboard import SummaryWriter

    folder = os.path.join(run_dir, "tb", f"eval_{split}")
    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(folder) as writer:
        for k, scores in results["knn"].items():
            writer.add_scalar(f"eval_{split}/knn{k}_overall", scores["overall"])
        for key in ("map", "map@20", "anmrr", "recall@1", "map@r"):
            writer.add_scalar(f"eval_{split}/{key}", results["retrieval"][key])
        writer.add_figure(f"eval_{split}/confusion_matrix", plots.confusion(matrix, classes, title))
        writer.add_embedding(queries.cpu(), metadata=[names[y] for y in labels.tolist()], label_img=thumbnails.cpu(),
                             tag=f"eval_{split}")


def summary(results):
    knn = results["knn"]
    r = results["retrieval"]
    overall = " / ".join(f"{100 * scores['overall']:.2f}" for scores in knn.values())
    recalls = " / ".join(f"{100 * r[f'recall@{k}']:.2f}" for k in (1, 2, 4, 8))
    worst = sorted(results["per_class"]["per_class"].items(), key=lambda item: (item[1]["f1"], item[0]))
    within = " (unseen classes, each query against the others)" if results["database"] == "queries" else ""
    tta = " with --tta d4 (each embedding the mean of the 8 symmetries')" if results.get("tta") == "d4" else ""
    lines = [f"{results['split']}{tta}{within}: kNN OA@1/5/10 {overall} %, "
             f"AA@10 {100 * knn['10']['average']:.2f} %; mAP {100 * r['map']:.2f}, mAP@20 {100 * r['map@20']:.2f}, "
             f"ANMRR {r['anmrr']:.4f}; K-means acc {100 * results['clustering']['kmeans_accuracy']:.2f} %, "
             f"NMI {results['clustering']['nmi']:.4f}",
             f"Recall@1/2/4/8 {recalls} %, MAP@R {100 * r['map@r']:.2f}, R-precision {100 * r['r_precision']:.2f}",
             "worst classes (kNN@10 F1): " + ", ".join(f"{name} {100 * row['f1']:.2f}"
                                                        for name, row in worst[:WORST_SHOWN])]
    if "rotations" in results:
        w, same = results["rotations"]["worst"], results["rotations"]["identity"]
        lines.append(f"rotations: worst mAP {100 * w['map']:.2f} ({w['map_transform']}), worst kNN@10 OA "
                     f"{100 * w['knn_oa']:.2f} ({w['knn_oa_transform']}); unrotated {100 * same['map']:.2f} / "
                     f"{100 * same['knn_oa']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(ARGS)
    gc.freeze()  # all is written and closed: the exit need not sweep torch's ~3e5 objects for cycles (~1 s)
