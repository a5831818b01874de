"""Command-line arguments of both entry points; the method-specific ones are in their own group.

Every number from the paper (docs/method.md section 7) is a flag whose default is the paper's value. Every
option string of the authors' two parsers parses with its meaning there, their aliases ``--learning-rate`` and
the misspelt ``--m-mementum`` included (tests/test_args.py lists them all).

Everything is checked here, before a folder or a file is written: each number against its range while parsing
(``error: argument --temperature: must be > 0, got 0``), then the paths, then, on ``--resume``, the flags that
define the experiment against its checkpoint. This module imports no torch, so ``--help`` answers at once.
"""

import os

from datasets.presets import PRESETS
from errors import InputError
from lib.cli.flags import (
    COUNT,
    FRACTION,
    MAX_WORKERS,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    REFERENCE_DATASET,
    SEED,
    ArgumentParser,
    Range,
    band_list,
    check_companions,
    check_paths,
    default_workers,
    rgb_bands,
)
from lib.losses import METHODS
from lib.memories import MEMORIES
from lib.training.resume import flag_names, given_flags, resume_experiment
from models import ARCHS


def offered(entry_point):
    """(memories, methods) that an entry point's ``--memory`` and ``--method`` offer, its own memory first. The
    baselines need no memory: the MB entry point trains them, as in the authors' code."""
    memories = [entry_point] + [name for name, memory in MEMORIES.items()
                                if memory.entry_point == entry_point and name != entry_point]
    methods = [name for name, method in METHODS.items() if method.uses_memory or entry_point == "mb"]
    return memories, methods


MIN_IMAGE_SIZE = 32  # the trunk downsamples by 32: at 32 px layer4 sees one pixel, below it only padding
SCRATCH_LR = 0.01  # a learning rate that trains from scratch (--pretrained none) without diverging
KNN_EXTRACTED_EVERY = 10  # epochs between MB's diagnostic kNN against re-extracted training embeddings


def get_args_parser(memory="mb"):
    """The flags of the entry point whose own memory is ``memory`` ('mb' or 'mu', ``lib.memories.MEMORIES``)."""
    memories, methods = offered(memory)
    parser = ArgumentParser(description=f"Train {MEMORIES[memory].title} (Kang et al., IEEE TGRS 2020).")

    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="folder holding <dataset>/<class>/<image>; "
                      "without it the embedded synthetic dataset is generated under <repo>/data")
    data.add_argument("--dataset", default=None, help="dataset folder name under --data; 'synthetic' "
                      "without --data, else UCMerced_LandUse (the reference's default). Paper: AID, NWPU-RESISC45. "
                      "Known names fill in --imgEXT and check the class count: " + ", ".join(sorted(PRESETS)))
    data.add_argument("--imgEXT", default=None, help="image file extension, case-insensitive "
                      "(default: the --dataset preset's, e.g. jpg for AID; else tif, the reference's)")
    data.add_argument("--check-images", default="header", choices=("none", "header", "full"),
                      help="start-up check of every file (scripts/check_dataset.py): header reads each header, "
                      "full decodes each image (finds truncated files)")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="leave unreadable and empty files out of the split (with a warning) instead of stopping; "
                      "the rest gets the reference split of itself")
    data.add_argument("--bands", default=None, type=band_list,
                      help="read multi-band .tif/.tiff files (tifffile), keeping these 1-based bands in this "
                      "order, e.g. 4,3,2,8, or all (default: the --dataset preset's, EuroSAT_MS: all; else 8-bit "
                      "RGB images)")
    data.add_argument("--rgb-bands", default=None, type=rgb_bands,
                      help="with --bands: the red, green and blue bands, which get ImageNet's filters and make the "
                      "figures' composites (default: the preset's, EuroSAT_MS: 4,3,2; else none: every band gets "
                      "the mean ImageNet filter and figures show band 1 in grey)")
    data.add_argument("--rot90", action="store_true",
                      help="with --bands: also rotate each training image by a random multiple of 90 degrees")
    data.add_argument("--image-size", type=Range(int, low=MIN_IMAGE_SIZE), default=256,
                      help="side of the fixed Resize((S, S)); paper: 256")
    data.add_argument("--split-seed", type=SEED, default=42, help="seed of the per-class split shuffle; reference: 42")
    data.add_argument("--split", default="reference", choices=("reference", "unseen"),
                      help="reference: every class split 0.7 / 0.1 / 0.2 (the paper's); unseen: the authors' "
                      "class-disjoint split (DataGenClsSplit): seen classes train / val, the unseen ones are all test")
    data.add_argument("--seen-fraction", type=FRACTION, default=0.8,
                      help="--split unseen: share of the classes seen in training, int(f x C); authors: 0.8")
    data.add_argument("--train-fraction", type=FRACTION, default=0.8,
                      help="--split unseen: share of a seen class's images in train, int(f x n), the rest val; "
                      "authors: 0.8")
    data.add_argument("--num_workers", type=NON_NEGATIVE_INT, default=default_workers(),
                      help=f"processes decoding images (default: the cores, at most {MAX_WORKERS})")
    data.add_argument("--cache", default="auto", choices=("auto", "device", "memory", "none"),
                      help="keep the decoded, resized images on the training device, in CPU memory, or decode "
                      "every epoch (none); auto: device when they take under half its free memory, else memory")
    data.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="also store the decoded images on disk here, reused while the files are unchanged")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="resnet18", choices=sorted(ARCHS), help="trunk; paper: resnet18")
    model.add_argument("--dim", type=COUNT, default=128, help="embedding dimension D; paper: 128")
    model.add_argument("--pretrained", default="imagenet", choices=("imagenet", "none"),
                       help="trunk initialisation; paper: imagenet (torchvision weights, from the cache or downloaded)")
    model.add_argument("--weights", default=None, metavar="PATH",
                       help="local torchvision state dict for the trunk (overrides --pretrained)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=COUNT, default=130,
                       help="epochs to train in all, at least 1 (a resume with a larger value extends the run); "
                       "paper: 130")
    optim.add_argument("-b", "--batch-size", type=COUNT, default=256,
                       help="global batch size: under torchrun the ranks split each batch; paper: 256 (one GPU)")
    optim.add_argument("--lr", "--learning-rate", type=POSITIVE, default=0.1, help="SGD learning rate; paper: 0.1")
    optim.add_argument("--lr-step", type=COUNT, default=30, help="epochs between learning-rate decays; paper: 30")
    optim.add_argument("--lr-gamma", type=Range(float, 0, 1, low_open=True), default=0.5,
                       help="learning-rate decay factor; paper: 0.5")
    optim.add_argument("--momentum", type=Range(float, 0, 1, low_open=True, high_open=True), default=0.9,
                       help="SGD (Nesterov) momentum; paper: 0.9")
    optim.add_argument("--weight-decay", type=NON_NEGATIVE, default=1e-4, help="paper: 1e-4")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--method", default="snca-ce", choices=methods,
                      help="; ".join(f"{name}: {METHODS[name].help}" for name in methods))
    loss.add_argument("--temperature", type=POSITIVE, default=0.05, help="SNCA temperature T; paper: 0.05")
    loss.add_argument("--margin", type=NON_NEGATIVE, default=0.0,
                      help="SNCA margin in cosine units (divided by T); paper: 0")
    loss.add_argument("--lambda_", type=NON_NEGATIVE, default=1.0,
                      help="weight of L_SNCA in lambda * L_SNCA + L_CE; paper: 1")

    for name in methods:
        METHODS[name].add_arguments(loss)

    titles = "; ".join(f"{name}: {MEMORIES[name].title}" for name in memories)
    parser.add_argument_group("memory").add_argument("--memory", default=memory, choices=memories,
                                                     help=f"the memory of L_SNCA: {titles}")
    for name in memories:
        MEMORIES[name].add_arguments(parser.add_argument_group(MEMORIES[name].title))

    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=SEED, default=0,
                     help="seeds python, numpy, torch and the shuffle, anew every epoch from (seed, epoch)")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    run.add_argument("--amp", default=None, choices=("none", "bf16", "fp16"),
                     help="mixed precision of the network (default: bf16 on CUDA, none elsewhere); "
                     "the SNCA loss, the memory and kNN stay float32")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the training step's network (and MU's key encoder): faster steps on a GPU "
                     "after a compilation of tens of seconds per batch shape; needs Triton (CUDA) or a C++ "
                     "compiler (CPU)")
    run.add_argument("--cpu-allocator", default="system", choices=("system", "keep"),
                     help="on the CPU (Linux): 'keep' serves large tensors from the process heap and keeps freed "
                     "memory for the next step instead of mapping fresh pages for each one: at 256 px a ResNet-18 "
                     "step took 25%% less time for 31%% more peak memory; at 64 px no gain. Results are the same "
                     "either way")
    run.add_argument("--sync-bn", action="store_true",
                     help="under torchrun, BatchNorm over the global batch (SyncBatchNorm) as on the paper's one GPU, "
                     "instead of over each rank's part; no effect in one process")
    run.add_argument("--memory-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                     help="storage of the memory (read as float32); half types halve it for very large datasets")
    run.add_argument("--knn-k", type=COUNT, default=10, help="neighbours of the validation kNN; paper: 10")
    run.add_argument("--eval-batch-size", type=COUNT, default=None,
                     help="batch of the validation embedding passes (default: -b, as the authors' validation "
                     "loaders; a larger one is faster on a GPU and costs peak memory)")
    run.add_argument("--knn-extracted-every", type=NON_NEGATIVE_INT, default=KNN_EXTRACTED_EVERY, metavar="N",
                     help="for a method whose kNN reference is the memory (MB), also log the kNN against re-extracted "
                     "training embeddings every N epochs (0: never); each costs an inference pass over the training "
                     "split, about a third of a training epoch, hence every 10th epoch: about 3%% of training time. "
                     "MU's own reference is always computed")
    run.add_argument("--out", default="runs", help="folder of run folders")
    run.add_argument("--run-name", default=None, help="run folder name (default: a timestamp and the method)")
    run.add_argument("--resume", default="", metavar="PATH",
                     help="continue a run in its folder: a checkpoint file, a run folder (its last.pt), or 'auto' "
                     "(the newest last.pt under --out, or of --run-name)")
    run.add_argument("--check-args", action="store_true",
                     help="parse and check the flags, the paths and that the dataset folder exists (and a resume's "
                     "checkpoint), then exit 0 without writing anything; the paper scripts check every command so")
    return parser


def parse_args(memory, argv=None):
    """The checked flags of an entry point (``argv``: the command line's by default). Ranges are checked while
    parsing, then the paths, then a resume's experiment against its checkpoint; any problem is one line and
    exit status 2, before anything is written."""
    parser = get_args_parser(memory)
    args = parser.parse_args(argv)
    try:
        given = given_flags(get_args_parser(memory), argv)
        if args.resume:
            resume_experiment(args, memory, given, flag_names(parser))
        check_companions(args, given)
        check_paths(args)
        if args.check_args:
            check_dataset_folder(args)
    except InputError as error:
        parser.error(str(error))
    return args


def check_dataset_folder(args):
    """``--check-args``: the dataset folder that training would read is there (the synthetic one is generated)."""
    dataset = args.dataset or ("synthetic" if args.data is None else REFERENCE_DATASET)
    if args.data is not None and dataset != "synthetic" and not os.path.isdir(os.path.join(args.data, dataset)):
        raise InputError(f"--data {args.data} holds no {dataset}/ folder: check --data and --dataset")


def divergence_hint(args):
    """The likely cause of a non-finite loss and its fix, when the flags show one (else empty): the paper's
    learning rate assumes ImageNet weights, and float16 overflows where bfloat16 does not."""
    if args.pretrained == "none" and args.weights is None and args.lr > SCRATCH_LR:
        return (f"; likely cause: --lr {args.lr:g} from scratch (--pretrained none): the paper's learning rate assumes "
                f"ImageNet weights; try --lr {SCRATCH_LR:g}")
    if args.amp == "fp16":
        return "; likely cause: float16 overflow (--amp fp16); try --amp bf16 or --amp none"
    return f"; if it recurs, try a lower --lr than {args.lr:g}"
