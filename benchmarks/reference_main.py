"""The authors' whole training process (their two ``main.py``), ported to the CPU, for whole-process timing.

What their process does, in their order: parse the flags; create the run folder and write the arguments; build
the PIL transforms and three loaders (shuffled training, validation, unshuffled training) over the split; build
the network (and MU's key encoder) and SGD; one pass over the unshuffled training loader to collect the labels
(decoding every training image); two TensorBoard writers; then, every epoch: train, validate, save a checkpoint
(and copy it when best), step the learning rate. Validation: kNN (scikit-learn, K = 10, distance-weighted) of
the validation embeddings against the memory bank (MB) or against the training embeddings re-extracted through
the unshuffled training loader, which carries the *training* augmentation (MU). Only ``.cuda()`` is gone, the
checkpoint holds state dicts (their pickled memory module does not load in current PyTorch), and MU's memory
update, whose module they never published, is the replacement their paper describes.

    python benchmarks/reference_main.py --memory mb --data DIR --dataset RSSCN7 --imgEXT jpg --image-size 64 \
        -b 64 --lr 0.01 --epochs 4 --num_workers 2 --out /tmp/reference-runs
"""
import argparse
import copy
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root

import reference  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from datasets import build_splits  # noqa: E402
from models import EmbeddingNet  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", choices=("mb", "mu"), required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--imgEXT", default="jpg")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=130)
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    folder = os.path.join(args.out, time.strftime("%Y%m%d_%H%M%S") + f"-{os.getpid()}")
    os.makedirs(os.path.join(folder, "checkpoints"))
    with open(os.path.join(folder, "arguments.txt"), "w") as f:
        f.writelines(f"{key}: {value}\n" for key, value in vars(args).items())

    splits = build_splits(os.path.join(args.data, args.dataset), args.imgEXT)
    size, b, workers = args.image_size, args.batch_size, args.num_workers
    train_loader = reference.loader(splits["train"], reference.train_transform(size), b, workers, shuffle=True)
    val_loader = reference.loader(splits["val"], reference.eval_transform(size), b, workers)
    # Their unshuffled training loader shares the training dataset, hence its augmentation.
    train_unshuffled = reference.loader(splits["train"], reference.train_transform(size), b, workers)

    model = EmbeddingNet("resnet18", args.dim, len(splits["classes"]))
    key_encoder = copy.deepcopy(model) if args.memory == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    labels = torch.cat([target for _, target, _ in train_unshuffled])  # their label pass decodes every image
    bound = (3.0 / args.dim) ** 0.5
    memory = torch.rand(len(labels), args.dim) * 2 * bound - bound
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5)
    train_writer = SummaryWriter(os.path.join(folder, "logs", "training"))
    val_writer = SummaryWriter(os.path.join(folder, "logs", "val"))

    best_acc = 0.0
    for epoch in range(args.epochs):
        momentum = 0.9 if epoch >= 120 else 0.8 if epoch >= 80 else 0.5
        reference.reference_train_epoch(model, memory, labels, key_encoder, train_loader, optimizer,
                                        momentum=momentum)
        acc = reference.reference_validate(model, memory, labels, val_loader,
                                           train_unshuffled if key_encoder is not None else None)
        train_writer.add_scalar("Loss", 0.0, epoch)
        val_writer.add_scalar("KNN-Acc", acc, epoch)
        print(f"epoch {epoch + 1}/{args.epochs} validation kNN {100 * acc:.2f}%", flush=True)
        is_best = acc > best_acc
        best_acc = max(best_acc, acc)
        path = os.path.join(folder, "checkpoints", "checkpoint.pth.tar")
        torch.save({"epoch": epoch + 1, "state_dict": model.state_dict(), "memory": memory, "best_acc": best_acc,
                    "optimizer": optimizer.state_dict()}, path)
        if is_best:
            shutil.copyfile(path, os.path.join(folder, "checkpoints", "model_best.pth.tar"))
        scheduler.step()
    train_writer.close()
    val_writer.close()


if __name__ == "__main__":
    main()
