"""lib.distributed.ranks on two CPU processes (Gloo) against one process doing the same work.

The tests share one start of two workers that join a process group through ``init_distributed`` (as
under torchrun), run every scenario in turn, save their results in a temporary folder and leave the
group; each test then compares its scenario's results. Warnings are errors in the workers too.
"""
import os
import time
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lib.distributed.parallel import shuffled_forward
from lib.distributed.ranks import (
    Dist,
    all_gather_varlen,
    assert_same_on_all_ranks,
    barrier,
    broadcast_object,
    cleanup,
    gather_memory_writes,
    init_distributed,
    memory_checksum,
    shard_batch,
    sharded_knn_predict,
)
from lib.eval.knn import knn_predict
from lib.memories.bank import MemoryBank

from conftest import fork_server, free_port

WORLD = 2
NUM_IMAGES, DIM, BATCH, EPOCHS = 49, 8, 16, 2  # batches of 16, 16, 16 and 1: the last leaves rank 1 empty
LENGTH_PAIRS = [(3, 0), (3, 5), (0, 0)]       # rows given by rank 0 and rank 1 to all_gather_varlen
TIMEOUT_S = 600  # a rank stuck in a collective fails the test instead of hanging it; ample on a loaded machine


def join_ranks(rank, world, port):
    """In a spawned worker: become rank ``rank`` of ``world`` as torchrun would set it up (one thread, warnings
    as errors) and return its ``Dist``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    warnings.simplefilter("error")
    torch.set_num_threads(1)
    return init_distributed("cpu")


def worker(rank, port, scenario, out_dir):
    dist = join_ranks(rank, WORLD, port)
    try:
        result = {name: SCENARIOS[name](dist) for name in scenario}
    finally:
        cleanup(dist)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def spawn(worker, args, nprocs, what, timeout_s=TIMEOUT_S):
    """``worker(rank, *args)`` in ``nprocs`` processes; a worker's exception is raised here
    (``ProcessRaisedException``), and ranks still running after ``timeout_s`` are killed and fail the test."""
    fork_server()  # the workers fork from a process that imported this code once
    workers = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="forkserver")
    deadline = time.monotonic() + timeout_s
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"{what} did not finish in {timeout_s} s")


def run_on_two_ranks(scenarios, tmp_path):
    """Run ``scenarios`` (names, in turn) on two ranks and return what each rank saved, by scenario."""
    spawn(worker, (free_port(), scenarios, str(tmp_path)), WORLD, f"scenarios {scenarios!r}")
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def rows(rank, length):
    """What ``rank`` contributes to all_gather_varlen: float rows and int64 values known to both sides."""
    start = 100 * rank
    return torch.arange(start, start + 4 * length, dtype=torch.float32).reshape(length, 4), torch.arange(length) + start


def epoch_batches(epoch):
    return torch.randperm(NUM_IMAGES, generator=torch.Generator().manual_seed(epoch)).split(BATCH)


def shard_features(epoch, step, rank, length):
    """Embeddings of one rank's shard: different on every rank and step, reproducible in the oracle."""
    generator = torch.Generator().manual_seed(1000 * epoch + 10 * step + rank)
    return F.normalize(torch.randn(length, DIM, generator=generator), dim=1)


def new_memory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MemoryBank(torch.arange(NUM_IMAGES) % 5, DIM)


def knn_data():
    """Queries with some references among them, and references duplicated under another label: exact ties."""
    generator = torch.Generator().manual_seed(3)
    references, queries = torch.randn(300, DIM, generator=generator), torch.randn(42, DIM, generator=generator)
    labels = torch.randint(0, 7, (300,), generator=generator)
    references, labels = torch.cat([references, references[:6]]), torch.cat([labels, (labels[:6] + 1) % 7])
    return torch.cat([queries, references[:10]]), references, labels


class RowWise(torch.nn.Module):
    """An encoder without BatchNorm whose outputs, like EmbeddingNet's (embedding, logits), are exact: integer
    pixels times integer weights, sums far below 2^24. Each row depends on its own image only."""

    def forward(self, images):
        x = images.flatten(1).float()                                                 # (b, 3 S S)
        weights = torch.arange(x.shape[1], dtype=torch.float32) % 7 - 3                # (3 S S,)
        return x * weights, x.sum(1, keepdim=True)                                    # (b, 3 S S), (b, 1)


def shuffle_images(rank):
    """This rank's part of a global batch of 7 tiny images (4 and 3): pixel values say which image it is."""
    batch = torch.arange(7 * 3 * 2 * 2, dtype=torch.uint8).reshape(7, 3, 2, 2)
    return batch[shard_batch(torch.arange(7), rank, WORLD)]


def gather_scenario(dist):
    out = {}
    for case, lengths in enumerate(LENGTH_PAIRS):
        floats, ints = rows(dist.rank, lengths[dist.rank])
        out[f"floats{case}"], out[f"ints{case}"] = all_gather_varlen(floats, dist), all_gather_varlen(ints, dist)
    barrier(dist)
    torch.manual_seed(0)  # the permutation: drawn alike on every rank
    out["shuffled"] = shuffled_forward(RowWise(), shuffle_images(dist.rank), dist)
    out["broadcast"] = broadcast_object({"from": dist.rank, "words": ["a"] * (dist.rank + 1)}, dist)
    return out


def memory_scenario(dist):
    memory = new_memory()
    for epoch in range(EPOCHS):
        for step, batch in enumerate(epoch_batches(epoch)):
            indices = shard_batch(batch, dist.rank, dist.world_size)
            features = shard_features(epoch, step, dist.rank, len(indices))
            memory.update(*gather_memory_writes(indices, features, dist), momentum=0.5)
    assert_same_on_all_ranks(memory_checksum(memory.memory), dist, "memory checksum")
    return {"memory": memory.memory}


def knn_scenario(dist):
    return {"predictions": sharded_knn_predict(*knn_data(), 5, dist, chunk_elements=300 * 8)}


def mismatch_scenario(dist):
    messages = []
    same = torch.tensor([1.0, float("nan"), -0.0])  # equal bits on both ranks, though NaN != NaN
    assert_same_on_all_ranks(same, dist, "same")
    for what, tensor in [("signed zero", torch.tensor([-0.0 if dist.rank else 0.0])),
                         ("length", torch.zeros(2 + dist.rank)), ("labels", torch.tensor([0, dist.rank]))]:
        try:
            assert_same_on_all_ranks(tensor, dist, what)
        except RuntimeError as error:
            messages.append(str(error))
    return {"messages": messages}


SCENARIOS = {"gather": gather_scenario, "memory": memory_scenario, "knn": knn_scenario, "mismatch": mismatch_scenario}


@pytest.mark.parametrize("batch, world", [(16, 2), (17, 2), (5, 3), (1, 2), (3, 8), (0, 4), (22005 % 256, 6)])
def test_shard_batch_splits_in_order_with_sizes_one_apart(batch, world):
    indices = torch.randperm(100)[:batch]
    shards = [shard_batch(indices, rank, world) for rank in range(world)]
    sizes = [len(shard) for shard in shards]
    assert torch.equal(torch.cat(shards), indices) and max(sizes) - min(sizes) <= 1


def test_one_process_leaves_torch_distributed_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = init_distributed("cpu")
    assert dist == Dist(0, 1, 0, torch.device("cpu"), True) and not torch.distributed.is_initialized()
    indices, features = torch.tensor([4, 1]), torch.randn(2, DIM)
    gathered = gather_memory_writes(indices, features, dist)
    assert torch.equal(gathered[0], indices) and torch.equal(gathered[1], features)
    assert torch.equal(sharded_knn_predict(*knn_data(), 5, dist), knn_predict(*knn_data(), 5))
    assert broadcast_object("x", dist) == "x" and torch.equal(shard_batch(indices, 0, 1), indices)
    assert_same_on_all_ranks(features, dist, "features")
    barrier(dist)
    cleanup(dist)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario, one after the other, in one start of two ranks (a start costs more than all of them)."""
    return run_on_two_ranks(tuple(SCENARIOS), tmp_path_factory.mktemp("ranks"))


def results_of(ranks, scenario):
    return [result[scenario] for result in ranks]


@pytest.mark.slow
def test_all_gather_varlen_concatenates_unequal_lengths(ranks):
    results = results_of(ranks, "gather")
    for case, lengths in enumerate(LENGTH_PAIRS):
        floats, ints = zip(*(rows(rank, n) for rank, n in enumerate(lengths)))
        for result in results:
            assert torch.equal(result[f"floats{case}"], torch.cat(floats))
            assert torch.equal(result[f"ints{case}"], torch.cat(ints))
    assert all(result["broadcast"] == {"from": 0, "words": ["a"]} for result in results)


@pytest.mark.slow
def test_shuffle_bn_puts_every_row_back(ranks):
    """MoCo's shuffle-BN sends images to other ranks and their outputs back: with an encoder without BatchNorm,
    each rank gets encoder(its images), row for row, as if nothing had moved."""
    for rank, result in enumerate(results_of(ranks, "gather")):
        want = RowWise()(shuffle_images(rank))
        assert len(result["shuffled"]) == len(want) == 2
        assert all(torch.equal(got, w) for got, w in zip(result["shuffled"], want))


@pytest.mark.slow
def test_memory_stays_identical_and_equals_one_process(ranks):
    results = results_of(ranks, "memory")
    oracle = new_memory()
    for epoch in range(EPOCHS):
        for step, batch in enumerate(epoch_batches(epoch)):
            shards = [shard_batch(batch, rank, WORLD) for rank in range(WORLD)]
            features = torch.cat([shard_features(epoch, step, rank, len(s)) for rank, s in enumerate(shards)])
            oracle.update(batch, features, momentum=0.5)
    assert not torch.equal(oracle.memory, new_memory().memory)
    assert torch.equal(results[0]["memory"], results[1]["memory"])
    assert torch.equal(results[0]["memory"], oracle.memory)


@pytest.mark.slow
def test_sharded_knn_equals_one_process(ranks):
    results = results_of(ranks, "knn")
    expected = knn_predict(*knn_data(), 5, chunk_elements=300 * 8)
    for result in results:
        assert torch.equal(result["predictions"], expected)


@pytest.mark.slow
def test_assert_same_on_all_ranks_raises_when_ranks_differ(ranks):
    for result in results_of(ranks, "mismatch"):
        assert [message.split(" differs")[0] for message in result["messages"]] == ["signed zero", "length", "labels"]
