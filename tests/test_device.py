"""``--cpu-allocator keep``: large tensors come from the process heap and their pages are reused, not mapped anew."""
import platform
import resource

import pytest
import torch
from test_entry_points import SCRIPTS, metrics, run, small_run

import lib.training.program
from lib.training.device import keep_freed_memory

from conftest import fork_server, start_script, untimed

PAGE = resource.getpagesize()
PAGES = 64 * 2**20 // PAGE  # of the 64 MiB tensor allocated in each round


def page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


WARM_UP, MEASURED = 12, 4


def reallocation_faults(keep, answer):
    """In a fresh process: (whether keeping applied, the minor page faults of allocating, filling and freeing a
    64 MiB tensor ``MEASURED`` times after ``WARM_UP`` rounds). Kept, the heap grows for the first few rounds:
    PyTorch asks for aligned blocks, which glibc serves from a slightly larger request, so a freed block fits the
    next one only once freed neighbours have merged (here after at most 8 rounds of 23 fresh processes)."""
    applied = keep_freed_memory() if keep else False
    for _ in range(WARM_UP):
        torch.empty(PAGES * PAGE, dtype=torch.uint8).fill_(1)
    before = page_faults()
    for _ in range(MEASURED):
        torch.empty(PAGES * PAGE, dtype=torch.uint8).fill_(1)
    answer.put((applied, page_faults() - before))


def test_kept_memory_serves_large_tensors_without_new_pages():
    """The oracle is the kernel's count of minor page faults: with glibc's defaults every 64 MiB tensor is a fresh
    mapping whose 16,384 pages fault on first touch; kept, the freed block is handed out again already mapped.
    Each in a process of its own, forked from a server that has not changed the allocator: the setting lasts as long
    as the process, and this one goes on running tests."""
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    context = fork_server()
    faults = {}
    for keep in (False, True):
        answer = context.Queue()
        process = context.Process(target=reallocation_faults, args=(keep, answer))
        process.start()
        applied, faults[keep] = answer.get(timeout=120)
        process.join()
        assert applied == (keep and glibc)
    if glibc:  # elsewhere it changes nothing: nothing more to check
        # kept: (almost) no new page; fresh mappings fault on every page (16,384 a round), or on every 2 MiB page
        # where transparent huge pages are always on: fewer, but never none
        assert faults[True] < PAGES // 10 and faults[True] < faults[False]


@pytest.mark.slow
def test_the_entry_points_keep_freed_memory_on_the_cpu_when_told_to(monkeypatch, image_tree, tmp_path):
    calls = []
    monkeypatch.setattr(lib.training.program, "keep_freed_memory", lambda: calls.append(1) or True)
    for name, extra, expected in (("default", (), []), ("keep", ("--cpu-allocator", "keep"), [1])):
        calls.clear()
        done = run("mb", *small_run("mb", image_tree, str(tmp_path), *extra, epochs=1, run_name=name), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert calls == expected, name


@pytest.mark.slow
def test_training_does_not_depend_on_the_allocator(image_tree, tmp_path):
    """Two fresh processes (forked from a server that has not changed the allocator), one keeping freed memory and
    one with glibc's defaults: a read of memory never written (``torch.empty``) would see old data in the first
    and zeros in the second. The same losses, accuracies and weights, bit for bit."""
    folders = {}
    for allocator in ("keep", "system"):
        argv = small_run("mu", image_tree, str(tmp_path), "--cpu-allocator", allocator, "--cache", "memory",
                         run_name=allocator)
        done = start_script(SCRIPTS["mu"], *argv, cwd=tmp_path, threads=1).wait()
        assert done.returncode == 0, done.stderr
        folders[allocator] = tmp_path / allocator
    assert untimed(metrics(folders["keep"])) == untimed(metrics(folders["system"]))
    weights = [torch.load(folders[a] / "checkpoints" / "last.pt", weights_only=True)["model"] for a in folders]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
