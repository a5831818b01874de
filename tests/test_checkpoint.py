"""Checkpoints: atomic writes survive a full disk and SIGKILL; unsafe, torn or foreign files are refused."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lib.training.checkpoint
from errors import InputError
from lib.training.checkpoint import check_compatible, link_checkpoint, load_state, resolve_resume, save_checkpoint

from conftest import REPO


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})

    def disk_full(state, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lib.training.checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    state = load_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["last.pt"]  # no torn temporary file left behind



@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_best_keeps_its_epoch_when_last_is_written_again(tmp_path, monkeypatch, links):
    def no_links(source, target):  # as on a file system without hard links: best.pt becomes a copy
        raise OSError(errno.EPERM, "Operation not permitted")

    if not links:
        monkeypatch.setattr(lib.training.checkpoint.os, "link", no_links)
    last, best = str(tmp_path / "last.pt"), str(tmp_path / "best.pt")
    save_checkpoint(last, {"epoch": 1, "w": torch.ones(1000)})
    link_checkpoint(last, best)
    assert Path(best).read_bytes() == Path(last).read_bytes()
    assert (os.stat(best).st_ino == os.stat(last).st_ino) == links
    save_checkpoint(last, {"epoch": 2, "w": torch.zeros(1000)})  # renamed over last.pt: best.pt's file is untouched
    state, newer = load_state(best), load_state(last)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert newer["epoch"] == 2 and torch.equal(newer["w"], torch.zeros(1000))
    link_checkpoint(last, best)  # replaces the previous best.pt
    assert load_state(best)["epoch"] == 2 and sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]

WRITER = """
import io, os, signal, sys, torch
sys.path.insert(0, sys.argv[1])
import lib.training.checkpoint
from lib.training.checkpoint import save_checkpoint
save = torch.save

def half_then_killed(state, f):  # the process dies in the middle of writing the second checkpoint
    buffer = io.BytesIO()
    save(state, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

save_checkpoint(sys.argv[2], {"epoch": 1, "w": torch.full((1_000_000,), 1.0)})
lib.training.checkpoint.torch.save = half_then_killed
save_checkpoint(sys.argv[2], {"epoch": 2, "w": torch.full((1_000_000,), 2.0)})
"""


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL gives no chance to clean up: the writer kills itself half way through its second checkpoint (a
    signal from outside could land between two saves and test nothing)."""
    path = str(tmp_path / "last.pt")
    writer = subprocess.run([sys.executable, "-c", WRITER, REPO, path], capture_output=True, text=True, timeout=600)
    assert writer.returncode == -signal.SIGKILL, writer.stderr
    assert os.path.getsize(path + ".tmp") > 0  # the torn copy, never renamed over last.pt
    state = load_state(path)
    assert state["epoch"] == 1 and bool((state["w"] == 1.0).all())


def test_pickled_objects_are_refused(tmp_path):
    path = str(tmp_path / "unsafe.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module, as the original code saved
    with pytest.raises(InputError, match="pickled Python objects"):
        load_state(path)


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"w": torch.ones(10_000)})
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a loadable state dict"):
        load_state(path)
    with pytest.raises(InputError, match="--resume .*nothing.pt: no such file"):
        load_state(str(tmp_path / "nothing.pt"))


def test_resume_accepts_a_file_a_run_folder_or_auto(tmp_path):
    for stamp, name in enumerate(("new", "old")):  # "new" written first: auto goes by time, not by order
        os.makedirs(tmp_path / name / "checkpoints")
        (tmp_path / name / "checkpoints" / "last.pt").write_bytes(b"")
        os.utime(tmp_path / name / "checkpoints" / "last.pt", (1e9, 2e9 - 1e8 * stamp))  # seconds apart
    newest = str(tmp_path / "new" / "checkpoints" / "last.pt")
    assert resolve_resume(newest, str(tmp_path)) == newest
    assert resolve_resume(str(tmp_path / "new"), str(tmp_path)) == newest
    assert resolve_resume("auto", str(tmp_path)) == newest
    assert resolve_resume("auto", str(tmp_path), "old") == str(tmp_path / "old" / "checkpoints" / "last.pt")
    with pytest.raises(InputError, match="--resume auto: no checkpoint"):
        resolve_resume("auto", str(tmp_path / "empty"))


def test_a_checkpoint_of_another_configuration_is_refused():
    saved = {"args": {"memory": "mb", "model": "resnet18", "dim": 128, "dataset": "AID", "image_size": 256},
             "num_train": 6993, "num_classes": 30}
    same = SimpleNamespace(**saved["args"])
    check_compatible(saved, same, 6993, 30)
    with pytest.raises(InputError, match="dim=128, this run dim=64"):
        check_compatible(saved, SimpleNamespace(**{**saved["args"], "dim": 64}), 6993, 30)
    with pytest.raises(InputError, match="num_train=6993, this run num_train=22005"):
        check_compatible(saved, same, 22005, 30)
    with pytest.raises(InputError, match="memory='mb', this run memory='mu'"):
        check_compatible(saved, SimpleNamespace(**{**saved["args"], "memory": "mu"}), 6993, 30)


def test_an_mu_checkpoint_of_the_earlier_layout_resumes_its_bank_and_key_encoder():
    """Before the key encoder became part of the memory entry, an MU checkpoint held the bank's state dict under
    "memory" (buffers memory, labels) and the key encoder's under "key_encoder" (encoder.*), as written here from
    the same modules; both come back bit for bit, and a memory of another size is still refused in one line."""
    from lib.memories.bank import MemoryBank
    from lib.memories.key_encoder import KeyEncoder, KeyEncoderMemory
    from lib.training.checkpoint import memory_state, restore_training_state

    torch.manual_seed(0)

    def variant(n=10):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
        return net, KeyEncoderMemory(MemoryBank(torch.arange(n) % 3, dim=8), KeyEncoder(net))

    net, trained = variant()
    for tensor in trained.state_dict().values():  # every entry away from its initial value
        tensor.add_(torch.rand_like(tensor.float()).to(tensor.dtype) + 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    earlier = {"model": net.state_dict(), "memory": trained.bank.state_dict(),
               "key_encoder": trained.key_encoder.state_dict(), "optimizer": optimizer.state_dict(), "scaler": None,
               "epoch": 3, "step": 0, "best_acc": 0.5}
    assert set(memory_state(earlier)) == set(trained.state_dict())
    fresh_net, fresh = variant()
    restore_training_state(earlier, fresh_net, fresh, torch.optim.SGD(fresh_net.parameters(), lr=0.1), None, None)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())
    _, other = variant(n=12)
    with pytest.raises(InputError, match="the checkpoint's memory does not fit this run's"):
        restore_training_state(earlier, variant()[0], other, torch.optim.SGD(net.parameters(), lr=0.1), None, None)
