"""Find the images of a gallery folder most similar to a query image, with a trained run.

    python scripts/retrieve.py --checkpoint runs/NAME --gallery /archive/tiles --query scene.jpg --k 20
    python scripts/retrieve.py runs/NAME --checkpoint last --gallery /archive/tiles --query scene.jpg  # as evaluate.py

The gallery (every image under the folder, any depth) is embedded once and cached beside the run in
``retrieval_cache/``; files added, removed or changed since are re-embedded on the next call. Prints the
top-k paths with their cosine similarity and writes a self-contained HTML page with thumbnails per query, one
per query path (``wrote PATH`` names it); ``--exclude-self`` leaves the query's own file, and copies of it, out.
"""
import base64
import gc
import hashlib
import html
import io
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from errors import InputError, one_line  # noqa: E402
from lib.cli.flags import COUNT, ArgumentParser, add_checkpoint_arguments, checkpoint_target  # noqa: E402


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--gallery", required=True, metavar="DIR", help="folder of images to search")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMAGE", help="query image(s)")
    parser.add_argument("--k", type=COUNT, default=20, help="results per query")
    parser.add_argument("--html", default=None, metavar="PATH",
                        help="the page to write, with one --query (default: RUN_DIR/retrieval/<folder>-<name>-<hash of "
                        "the query's path>.html, one page per query path)")
    parser.add_argument("--exclude-self", action="store_true",
                        help="leave out of the results the gallery files that are the query: the same path, or the "
                        "same bytes")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    return parser


if __name__ == "__main__":  # --help and bad flags answer here, before torch and the rest below are imported
    PARSER = get_args_parser()
    ARGS = PARSER.parse_args()
    ARGS.target, ARGS.checkpoint = checkpoint_target(ARGS, PARSER)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import load_rgb  # noqa: E402
from datasets.augment import pipeline_of  # noqa: E402
from datasets.check import digest  # noqa: E402
from datasets.folder import decode_image, read_bands  # noqa: E402
from lib.eval.inference import checkpoint_path, embed, load_trained, top_k  # noqa: E402
from lib.training.device import resolve_device, resolve_precision  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
BAND_EXTENSIONS = (".tif", ".tiff")  # the gallery files of an N-band run
THUMBNAIL = 160  # px, in the HTML page
EMBED_CHUNK = 256  # images decoded and embedded at a time


def main(args):
    try:
        retrieve(args)
    except InputError as error:
        sys.exit(f"error: {one_line(error)}")


def retrieve(args):
    device = resolve_device(args.device)
    precision = resolve_precision(device, "none")
    if not os.path.isdir(args.gallery):
        raise InputError(f"--gallery {args.gallery}: no such folder")
    for query in args.query:  # before the gallery is embedded
        if not os.path.isfile(query):
            raise InputError(f"--query {query}: no such file")
    model, run_args, run_dir = load_trained(args.target, device, args.checkpoint, flag="--checkpoint")
    size = run_args["image_size"]
    args.pipeline = pipeline_of(run_args["band_stats"])  # N-band runs: their bands and per-band statistics
    paths, gallery = gallery_embeddings(model, args, run_dir, size, device, precision)
    if not paths:
        raise InputError(f"--gallery {args.gallery}: no images ({', '.join(extensions(args.pipeline))})")
    queries = torch.stack([decode_query(q, size, args.pipeline) for q in args.query])  # (Q, C, S, S)
    q = embed(model, queries, torch.zeros(len(queries), dtype=torch.long), device, precision, pipeline=args.pipeline)
    left_out = [same_files(query, paths) if args.exclude_self else set() for query in args.query]
    found = top_k(q, gallery.to(device), args.k + max(map(len, left_out)))           # (Q, k + left out)
    scores = (q[:, None, :] * gallery.to(device)[found]).sum(-1)                     # (Q, k + left out)
    for query, rows, sims, out in zip(args.query, found.tolist(), scores.tolist(), left_out):
        kept = [(j, sim) for j, sim in zip(rows, sims) if j not in out][:args.k]
        print(f"query {query}" + (f" ({len(out)} gallery file(s) identical to it left out)" if out else ""))
        for rank, (j, sim) in enumerate(kept, start=1):
            print(f"{rank:4d}  {sim:.4f}  {paths[j]}")
        rows, sims = [j for j, _ in kept], [sim for _, sim in kept]
        page = args.html if args.html and len(args.query) == 1 else os.path.join(run_dir, "retrieval", page_name(query))
        os.makedirs(os.path.dirname(os.path.abspath(page)), exist_ok=True)
        with open(page, "w") as f:
            f.write(html_page(query, [(paths[j], s) for j, s in zip(rows, sims)], args.pipeline))
        print(f"wrote {page}")


def page_name(query):
    """``<folder>-<name>-<hash>.html``: readable, and unique per query path (every class of an archive may hold a
    ``0087.tif``; two folders of one name elsewhere differ in the hash of the absolute path)."""
    path = os.path.abspath(query)
    folder = os.path.basename(os.path.dirname(path)) or "root"
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{folder}-{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}.html"


def same_files(query, paths):
    """Indices of the gallery ``paths`` that are ``query`` itself or a copy of its bytes (``--exclude-self``)."""
    size, wanted = os.path.getsize(query), None
    same = set()
    for j, path in enumerate(paths):
        if os.path.samefile(path, query):
            same.add(j)
        elif os.path.getsize(path) == size:
            wanted = wanted or digest(query)
            if digest(path) == wanted:
                same.add(j)
    return same


def reason(error):
    """The cause of a decoding error, without the training's advice (flags this script does not have)."""
    return one_line(error).split(" (scripts/check_dataset.py", 1)[0]


def decode_query(path, size, pipeline):
    """A ``--query`` image, or one line naming the flag and the file."""
    try:
        return decode(path, size, pipeline)
    except InputError as error:
        raise InputError(f"--query {path}: {reason(error).replace(f'cannot read image {path}: ', '')}") from None


def extensions(pipeline):
    return IMAGE_EXTENSIONS if getattr(pipeline, "bands", None) is None else BAND_EXTENSIONS


def decode(path, size, pipeline):
    """The image as the run's network takes it before normalisation: uint8 RGB or the run's bands (C, S, S)."""
    return decode_image(path, size, getattr(pipeline, "bands", None))


def gallery_embeddings(model, args, run_dir, size, device, precision):
    """Paths and embeddings (N, D) of the gallery, from the cache where the file and the network are unchanged."""
    root = os.path.abspath(args.gallery)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(extensions(args.pipeline)))
    stamps = [f"{stat.st_size}:{stat.st_mtime_ns}" for stat in map(os.stat, paths)]
    weights = checkpoint_path(args.target, args.checkpoint)
    network = f"{os.path.abspath(weights)}:{os.stat(weights).st_mtime_ns}"
    cache = os.path.join(run_dir, "retrieval_cache", hashlib.sha256(root.encode()).hexdigest()[:16] + ".npz")
    known = {}
    if os.path.exists(cache):
        with np.load(cache) as saved:
            if str(saved["network"]) == network:
                known = {(p, s): e for p, s, e in zip(saved["paths"], saved["stamps"], saved["embeddings"])}
    todo = [i for i, key in enumerate(zip(paths, stamps)) if key not in known]
    kept, fresh = [], {}
    for start in range(0, len(todo), EMBED_CHUNK):
        chunk = todo[start:start + EMBED_CHUNK]
        images, ok = [], []
        for i in chunk:
            try:
                images.append(decode(paths[i], size, args.pipeline))
                ok.append(i)
            except InputError as error:
                print(f"warning: skipped {reason(error)}", file=sys.stderr)
        if ok:
            e = embed(model, torch.stack(images), torch.zeros(len(ok), dtype=torch.long), device, precision,
                      pipeline=args.pipeline)
            fresh.update(zip(ok, e.cpu().numpy()))
    for i, key in enumerate(zip(paths, stamps)):
        if key in known or i in fresh:
            kept.append((paths[i], stamps[i], known[key] if key in known else fresh[i]))
    if todo:
        print(f"embedded {len(fresh)} new or changed gallery images ({len(kept)} in all)", file=sys.stderr)
    if not kept:
        return [], None
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(f"{cache}.tmp.npz", paths=np.array([k[0] for k in kept]), stamps=np.array([k[1] for k in kept]),
             embeddings=np.stack([k[2] for k in kept]), network=np.array(network))
    os.replace(f"{cache}.tmp.npz", cache)
    return [k[0] for k in kept], torch.from_numpy(np.stack([k[2] for k in kept]))


def thumbnail(path, pipeline):
    """A JPEG data URL of the image, or of an N-band image's RGB composite (the run's red, green, blue bands)."""
    bands = getattr(pipeline, "bands", None)
    if bands is None:
        image = load_rgb(path)
    else:
        picked = torch.from_numpy(read_bands(path)[list(bands.bands)].astype("float32"))[None]  # (1, C, H, W)
        image = Image.fromarray(pipeline.display(picked)[0].permute(1, 2, 0).numpy())
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def html_page(query, results, pipeline):
    cells = "".join(f'<figure><img src="{thumbnail(p, pipeline)}"><figcaption>{rank}. {s:.3f}<br>{html.escape(p)}'
                    "</figcaption></figure>" for rank, (p, s) in enumerate(results, start=1))
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(query)}</title>"
            "<style>body{font:13px sans-serif}figure{display:inline-block;width:180px;margin:6px;"
            "vertical-align:top;word-break:break-all}</style>"
            f"<h3>query</h3><figure><img src='{thumbnail(query, pipeline)}'>"
            f"<figcaption>{html.escape(query)}</figcaption></figure><h3>top {len(results)}</h3>{cells}")


if __name__ == "__main__":
    main(ARGS)
    gc.freeze()  # all is written and closed: the exit need not sweep torch's ~3e5 objects for cycles (~1 s)
