"""Find the images of a gallery folder most similar to a query image, with a trained run.

    python scripts/retrieve.py --checkpoint runs/NAME --gallery /archive/tiles --query scene.jpg --k 20
    python scripts/retrieve.py runs/NAME --checkpoint last --gallery /archive/tiles --query scene.jpg  # as evaluate.py

The gallery (every image under the folder, any depth) is embedded once and cached beside the run in
``retrieval_cache/``; files added, removed or changed since are re-embedded on the next call. Prints the
top-k paths with their cosine similarity and writes a self-contained HTML page with thumbnails.
"""
import base64
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
                        help="the page to write (default: RUN_DIR/retrieval/<query name>.html)")
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
    model, run_args, run_dir = load_trained(args.target, device, args.checkpoint, flag="--checkpoint")
    size = run_args["image_size"]
    args.pipeline = pipeline_of(run_args["band_stats"])  # N-band runs: their bands and per-band statistics
    paths, gallery = gallery_embeddings(model, args, run_dir, size, device, precision)
    if not paths:
        raise InputError(f"--gallery {args.gallery}: no images ({', '.join(extensions(args.pipeline))})")
    queries = torch.stack([decode(q, size, args.pipeline) for q in args.query])      # (Q, C, S, S)
    q = embed(model, queries, torch.zeros(len(queries), dtype=torch.long), device, precision, pipeline=args.pipeline)
    found = top_k(q, gallery.to(device), args.k)                                      # (Q, k)
    scores = (q[:, None, :] * gallery.to(device)[found]).sum(-1)                     # (Q, k)
    for query, rows, sims in zip(args.query, found.tolist(), scores.tolist()):
        print(f"query {query}")
        for rank, (j, sim) in enumerate(zip(rows, sims), start=1):
            print(f"{rank:4d}  {sim:.4f}  {paths[j]}")
        page = args.html if args.html and len(args.query) == 1 else os.path.join(
            run_dir, "retrieval", f"{os.path.splitext(os.path.basename(query))[0]}.html")
        os.makedirs(os.path.dirname(os.path.abspath(page)), exist_ok=True)
        with open(page, "w") as f:
            f.write(html_page(query, [(paths[j], s) for j, s in zip(rows, sims)], args.pipeline))
        print(f"wrote {page}")


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
                print(f"warning: skipped {one_line(error)}", file=sys.stderr)
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
