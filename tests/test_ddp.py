"""Training under torchrun on two CPU processes (Gloo) against one process doing the same work.

The entry points run on two ranks set up as torchrun sets up its workers (``conftest.run_ranks``: the ranks fork
from a server that imported the code once, instead of each importing it for seconds), and under torchrun itself
where torchrun's own part is tested (a scheduler's SIGTERM); finer checks spawn two workers that call the
training loop directly. One process runs with one thread, as
each torchrun worker does, so that both sum in the same order wherever they can. Warnings are errors
in the spawned workers too.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from old_loop_call import train_one_epoch
from test_distributed import join_ranks, spawn
from test_entry_points import SCRIPTS, metrics, small_run

from datasets import DecodingBatches, TensorBatches
from datasets.synthetic import CLASSES, render
from errors import InputError
from lib.cli.args import get_args_parser
from lib.distributed.parallel import data_parallel, sync_batch_norm
from lib.distributed.ranks import Dist, cleanup, single_process
from lib.memories.bank import MemoryBank
from lib.memories.key_encoder import KeyEncoder
from lib.training.device import resolve_precision
from lib.training.program import check_world
from models import EmbeddingNet

from conftest import REPO, free_port, make_image_tree, run_ranks, run_script

CPU = torch.device("cpu")
LOSSES = ("loss", "loss_snca", "loss_ce")
ACCURACIES = ("knn_acc", "knn_acc_bank", "knn_acc_extracted")
# Two ranks against one process are the same float32 sums in another order. The noise of that, measured as the
# same comparison between two equivalent one-process runs of ``flags`` (one against two threads, or PyTorch's
# default kernels against AVX-512 ones: the settings of tests/other_cpus.sh), after 3 epochs: losses 9e-6
# relative, memory rows 4e-5, weights (with BatchNorm statistics) 1e-5. Tolerances: 5 to 10 times that.
RTOL = 1e-4
MEMORY_ATOL, WEIGHTS_ATOL = 2e-4, 1e-4
TIMEOUT_S = 300
EVALUATE = os.path.join(REPO, "scripts", "evaluate.py")


def one_thread():
    return dict(os.environ, OMP_NUM_THREADS="1")


def launch(method, *flags, ranks=2, cwd, script=None):
    """An entry point (or ``script``) on ``ranks`` processes set up as torchrun sets its workers up
    (``conftest.run_ranks``), or (ranks=1) run on one thread."""
    script = script or SCRIPTS[method]
    if ranks == 1:
        return run_script(script, *flags, cwd=cwd, threads=1)
    return run_ranks(script, *flags, ranks=ranks, cwd=cwd, timeout_s=TIMEOUT_S)


def torchrun(*flags, cwd):
    """``torchrun --nproc_per_node 2`` itself, as a user starts it (its own process, one thread per worker)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), SCRIPTS["mb"], *flags]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=one_thread())


def flags(data, out, *extra, epochs=2, run_name="run"):
    """A small run of the tiny dataset in one batch of 32 per epoch (16 per rank), at a learning rate low enough
    that float32 noise does not grow: this network from scratch on 32 px images amplifies a difference in the
    last bit in proportion to the learning rate: one against two threads, or two kernel sets, differ by 2e-3
    (relative loss) after 3 steps at 1e-4, 2e-4 at 1e-5 and 9e-6 at 1e-6. The network still learns (3 steps
    at 1e-6 move the loss by 7e-4, ~80 times that noise), and the memory moves whatever the rate."""
    return ["--data", data, "--dataset", "tiny", "--imgEXT", "png", "--image-size", "32", "-b", "32", "--num_workers",
            "0", "--pretrained", "none", "--device", "cpu", "--lr", "1e-6", "--epochs", str(epochs), "--out", out,
            *(("--run-name", run_name) if run_name else ()), *extra]


def assert_close_metrics(got, want, epochs):
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want] == list(epochs)
    for a, b in zip(got, want):
        for key in LOSSES:
            assert a[key] == pytest.approx(b[key], rel=RTOL), (a["epoch"], key)
        assert [a[key] for key in ACCURACIES] == [b[key] for key in ACCURACIES], a["epoch"]


def last_state(folder):
    return torch.load(os.path.join(folder, "checkpoints", "last.pt"), weights_only=True)


@pytest.fixture(scope="module")
def two_runs(image_tree, tmp_path_factory):
    """Two epochs in one process ('one') and on two ranks with --sync-bn, under the default (timestamp) name.
    Tests that resume them work on copies."""
    tmp = tmp_path_factory.mktemp("ddp")
    out, out2 = str(tmp / "runs"), str(tmp / "runs2")
    one = launch("mb", *flags(image_tree, out, run_name="one"), ranks=1, cwd=tmp)
    two = launch("mb", *flags(image_tree, out2, "--sync-bn", run_name=None), cwd=tmp)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    (name,) = os.listdir(out2)  # the ranks agreed on rank 0's timestamp
    return {"tmp": tmp, "one": os.path.join(out, "one"), "two": os.path.join(out2, name), "stdout": two.stdout}


@pytest.mark.slow
def test_two_ranks_with_sync_bn_train_as_one_process(two_runs):
    """-b is the global batch: two ranks of 16 images with BatchNorm over all 32 make the one-process steps; the
    memories (checked bitwise equal on both ranks every epoch by the run itself) and the weights agree too."""
    assert_close_metrics(metrics(two_runs["two"]), metrics(two_runs["one"]), epochs=[1, 2])
    one, two = last_state(two_runs["one"]), last_state(two_runs["two"])
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["model"].keys() == two["model"].keys()  # no "module." prefix: any world size resumes it
    torch.testing.assert_close(two["memory"]["memory"], one["memory"]["memory"], rtol=0, atol=MEMORY_ATOL)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=0, atol=WEIGHTS_ATOL)
    lines = two_runs["stdout"].splitlines()  # rank 1 prints nothing
    assert sum(line.startswith("epoch 1/2") for line in lines) == 1 and sum("run folder" in line for line in lines) == 2
    with open(os.path.join(two_runs["two"], "args.json")) as f:
        assert json.load(f)["world_size"] == 2


@pytest.mark.slow
def test_checkpoints_resume_on_any_number_of_ranks(two_runs, image_tree):
    """The 2-rank checkpoint evaluates to the same validation accuracy and continues in one process; the 1-process
    checkpoint continues on two ranks; both third epochs agree."""
    tmp = two_runs["tmp"]
    two, one = str(tmp / "resumed" / "two"), str(tmp / "resumed" / "one")
    shutil.copytree(two_runs["two"], two)
    shutil.copytree(two_runs["one"], one)
    out = str(tmp / "unused")
    evaluated = launch("mb", *flags(image_tree, out, "--resume", two, run_name=None), ranks=1, cwd=tmp)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = f"nothing to train after epoch 2: val kNN@10 {100 * metrics(two)[-1]['knn_acc']:.2f}%"
    assert expected in evaluated.stdout

    on_one = launch("mb", *flags(image_tree, out, "--resume", two, epochs=3, run_name=None), ranks=1, cwd=tmp)
    on_two = launch("mb", *flags(image_tree, out, "--sync-bn", "--resume", one, epochs=3, run_name=None), cwd=tmp)
    assert on_one.returncode == 0 and on_two.returncode == 0, on_one.stderr + on_two.stderr
    assert "epoch 3/3" in on_one.stdout and "epoch 2/3" not in on_one.stdout
    assert_close_metrics(metrics(two)[2:], metrics(one)[2:], epochs=[3])
    assert last_state(two)["world_size"] == 1 and last_state(one)["world_size"] == 2
    assert not os.path.exists(out)


@pytest.mark.slow
def test_evaluation_on_two_ranks_equals_one_process(two_runs):
    """scripts/evaluate.py under torchrun: each rank embeds its share of the queries and the database, rank 0
    gathers them and writes the same embeddings, metrics and figures as one process."""
    tmp = two_runs["tmp"]
    folders = {ranks: str(tmp / "evaluated" / str(ranks)) for ranks in (1, 2)}
    for ranks, folder in folders.items():
        shutil.copytree(two_runs["one"], folder)
        done = launch(None, folder, "--device", "cpu", "--num_workers", "0", "--tsne-points", "12", ranks=ranks,
                      cwd=tmp, script=EVALUATE)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("wrote ") == 1  # rank 0 alone writes
    out = {ranks: os.path.join(folder, "eval", "test") for ranks, folder in folders.items()}
    one, two = (np.load(os.path.join(out[ranks], "embeddings.npz")) for ranks in (1, 2))
    assert one.files == two.files
    for key in one.files:
        if one[key].dtype.kind == "f":
            # The same float32 network in eval mode on each image; only the kernels differ with the batch shape
            # (a rank embeds half of each set) and the thread count. Measured on the tiny run's network: unit
            # embeddings of batches of 12 against 6 + 6, 5 + 5 + 2 or 1 x 12, on 1 or 2 threads, or under the
            # kernels of tests/other_cpus.sh, differ by at most 3.1e-7; tolerance about 30 times that.
            np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-5, err_msg=key)
        else:
            assert np.array_equal(two[key], one[key]), key
    results = {}
    for ranks in (1, 2):
        with open(os.path.join(out[ranks], "results.json")) as f:
            results[ranks] = json.load(f)
    assert results[2]["knn"] == results[1]["knn"]
    # Rank 0 computes the metrics from the gathered embeddings with the one process's code: equal rankings and
    # clusters give values equal up to float64 rounding (1e-6 is loose); one item ranked or clustered otherwise
    # moves a mean over the 12 queries by far more than 1e-6.
    assert results[2]["clustering"] == pytest.approx(results[1]["clustering"], abs=1e-6)
    assert results[2]["retrieval"] == pytest.approx(results[1]["retrieval"], abs=1e-6)
    assert sorted(os.listdir(out[2])) == sorted(os.listdir(out[1]))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_all_ranks_and_the_run_resumes(two_runs, image_tree):
    """A scheduler's SIGTERM to torchrun reaches every rank: all finish the same step, rank 0 saves where they
    stand (with the loss sums of all ranks, carried by rank 0), and the resumed run goes on as the run that never
    stopped: the stop comes in epoch 2 (after its one step) or at one of its ends, so epochs 1 and 2 compare with
    the straight 2-epoch run."""
    tmp = two_runs["tmp"]
    run_flags = flags(image_tree, str(tmp / "stopped"), "--sync-bn", epochs=3, run_name="stopped")
    with torchrun(*run_flags, cwd=tmp) as process:
        for line in process.stdout:
            if line.startswith("epoch 1/3"):
                process.send_signal(signal.SIGTERM)
                break
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode != 0 and stderr.count("stopped by SIGTERM") == 1, stderr  # said by rank 0 alone
    folder = str(tmp / "stopped" / "stopped")
    assert 1 <= last_state(folder)["epoch"] < 3
    with torchrun(*run_flags, "--resume", folder, cwd=tmp) as process:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert "epoch 3/3" in stdout
    assert_close_metrics(metrics(folder)[:2], metrics(two_runs["two"]), epochs=[1, 2])


@pytest.mark.slow
def test_mu_with_shuffle_bn_and_decoding_every_epoch_runs_on_two_ranks(image_tree, tmp_path):
    out = str(tmp_path / "runs")
    done = launch("mu", *small_run("mu", image_tree, out, "--device", "cpu", "--key-bn", "shuffle", "--cache", "none",
                                   "-b", "12", epochs=1), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = metrics(os.path.join(out, "run"))
    assert line["epoch"] == 1 and all(torch.isfinite(torch.tensor(line[key])) for key in LOSSES)
    assert any(key.startswith("key_encoder.") for key in last_state(os.path.join(out, "run"))["memory"])


@pytest.mark.slow
def test_what_two_ranks_cannot_train_as_one_process_is_refused(image_tree, tmp_path):
    two_ranks = Dist(0, 2, 0, CPU, True)
    for extra, needle in ((["-b", "1"], "-b 1 is the global batch"), (["--method", "d-cnn"], "--method d-cnn")):
        args = get_args_parser("mb").parse_args(extra)
        check_world(args, Dist(0, 1, 0, CPU, True))  # one process trains it
        with pytest.raises(InputError, match=needle):
            check_world(args, two_ranks)
    out = str(tmp_path / "runs")
    done = launch("mb", *small_run("mb", image_tree, out, "--device", "cpu", "--method", "d-cnn"), cwd=tmp_path)
    assert done.returncode != 0 and done.stderr.count("error: --method d-cnn") == 1, done.stderr  # rank 0 says it
    assert not os.path.exists(out)


# ---------------- the training loop itself on two spawned ranks ----------------

SCENARIOS = [("mb", 32), ("mu", 32), ("mb", 33)]  # (method, number of images)


def worker(rank, world, port, scenarios, out_dir):
    dist = join_ranks(rank, world, port)
    try:
        for method, num_images in scenarios:
            result = train_epochs(dist, method, num_images)
            torch.save(result, os.path.join(out_dir, f"{method}{num_images}-rank{rank}.pt"))
    finally:
        cleanup(dist)


@pytest.fixture(scope="module")
def on_two_ranks(tmp_path_factory):
    """{scenario: what each of two spawned ranks returned}, all scenarios in one launch (a start imports torch and
    this code: seconds); a worker's exception is raised here."""
    tmp = tmp_path_factory.mktemp("spawned")
    spawn(worker, (2, free_port(), SCENARIOS, str(tmp)), 2, SCENARIOS, TIMEOUT_S)
    return {(method, n): [torch.load(tmp / f"{method}{n}-rank{rank}.pt", weights_only=True) for rank in range(2)]
            for method, n in SCENARIOS}


def train_epochs(dist, method, num_images):
    """Two epochs of MB or MU (--sync-bn, --key-bn sync) on generated scenes in batches of 32."""
    args = get_args_parser(method).parse_args(["--lr", "1e-6"])  # as ``flags``: float32 noise does not grow
    labels = torch.arange(num_images) % 4
    images = torch.stack([torch.from_numpy(render(CLASSES[label], np.random.default_rng(i), 32)).permute(2, 0, 1)
                          for i, label in enumerate(labels.tolist())])  # scenes: random noise is ill-conditioned
    torch.manual_seed(0)
    net = EmbeddingNet("resnet18", 16, 4).to(memory_format=torch.channels_last)
    memory = MemoryBank(labels, 16)
    key_encoder = KeyEncoder(net, dist, "sync") if method == "mu" else None
    net = sync_batch_norm(net, dist)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model = data_parallel(net, dist)
    generator = torch.Generator()
    batches = TensorBatches(images, labels, 32, CPU, shuffle=True, generator=generator, rank=dist.rank,
                            world_size=dist.world_size)
    losses, written = [], []
    for epoch in range(2):
        torch.manual_seed(epoch)
        generator.manual_seed(epoch)
        losses.append(train_one_epoch(model, memory, key_encoder, batches, optimizer, args,
                                      0.5 if method == "mb" else 0.0, resolve_precision(CPU, "none"), dist=dist))
        written.append(memory.memory.norm(dim=1))
    return {"losses": losses, "memory": memory.memory, "written": written, "model": net.state_dict()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_memory_is_bitwise_identical_on_both_ranks_and_equals_one_process(method, on_two_ranks):
    """Steps of 16 + 16 images: every rank holds the same memory and weights, bit for bit, and they equal the
    one-process steps of 32 images to float tolerance (MU: key encoder with BatchNorm over the global batch). Two
    steps: by the fourth, this network from scratch turns float32 rounding into percents (as two threads do)."""
    two = on_two_ranks[(method, 32)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        one = train_epochs(single_process(CPU), method, 32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(two[0]["memory"], two[1]["memory"])
    assert all(torch.equal(value, two[1]["model"][key]) for key, value in two[0]["model"].items())
    for a, b in zip(two[0]["losses"], one["losses"]):
        assert a == pytest.approx(b, rel=RTOL)
    torch.testing.assert_close(two[0]["memory"], one["memory"], rtol=0, atol=MEMORY_ATOL)
    for key, value in one["model"].items():
        torch.testing.assert_close(two[0]["model"][key], value, rtol=0, atol=WEIGHTS_ATOL)


@pytest.mark.slow
def test_a_batch_smaller_than_the_world_leaves_a_rank_empty_and_both_go_on(on_two_ranks):
    """33 images in batches of 32: the last, of one image, leaves rank 1 nothing; it still takes part in every
    collective, and the epoch writes every memory row once (each row turns unit-norm when written)."""
    two = on_two_ranks[("mb", 33)]
    assert torch.equal(two[0]["memory"], two[1]["memory"])
    # a norm of a float32 unit vector of 16 terms: 1 within (16 + 2) u = 1e-6, under allclose's 1e-5 + 1e-8
    assert torch.allclose(two[0]["written"][0], torch.ones(33))
    assert all(torch.isfinite(torch.tensor(list(epoch.values()))).all() for epoch in two[0]["losses"])


def test_each_rank_takes_its_part_of_every_batch_and_together_all(tmp_path):
    """Both batch sources, 33 images in batches of 16 on two ranks: the parts, in rank order, are the batches."""
    root = make_image_tree(str(tmp_path / "ds"), classes=3, per_class=11, size=32)
    samples = sorted((os.path.join(root, c, f), label) for label, c in enumerate(sorted(os.listdir(root)))
                     for f in os.listdir(os.path.join(root, c)))
    labels = [label for _, label in samples]
    for make in (lambda **kw: TensorBatches(torch.zeros(33, 3, 32, 32, dtype=torch.uint8), labels, 16, CPU, **kw),
                 lambda **kw: DecodingBatches(samples, 32, 16, CPU, 0, **kw)):
        parts = []
        for rank in range(2):
            batches = make(shuffle=True, generator=torch.Generator().manual_seed(5), rank=rank, world_size=2)
            parts.append([indices for _, _, indices in batches])
            assert [batches.global_size(step) for step in range(len(batches))] == [16, 16, 1]
        assert [len(p) for p in parts[1]] == [8, 8, 0]  # the empty part is yielded too
        whole = torch.randperm(33, generator=torch.Generator().manual_seed(5)).split(16)
        assert all(torch.equal(torch.cat([a, b]), w) for a, b, w in zip(*parts, whole))
