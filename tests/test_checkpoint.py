"""Checkpoints: atomic writes survive a full disk and SIGKILL; unsafe, torn or foreign files are refused."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lib.checkpoint
from lib.checkpoint import check_compatible, load_state, resolve_resume, save_checkpoint
from lib.errors import InputError

from conftest import REPO


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})

    def disk_full(state, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lib.checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    state = load_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["last.pt"]  # no torn temporary file left behind


WRITER = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from lib.checkpoint import save_checkpoint
for k in range(1, 1000):
    save_checkpoint(sys.argv[2], {"epoch": k, "w": torch.full((20_000_000,), float(k))})  # 80 MB
    print(k, flush=True)
"""


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "last.pt")
    with subprocess.Popen([sys.executable, "-c", WRITER, REPO, path], stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout.readline().strip() == "1"  # one complete checkpoint exists
        deadline = time.time() + 60
        while not (os.path.exists(path + ".tmp") and os.path.getsize(path + ".tmp") > 2**20):
            assert time.time() < deadline
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)  # the next one is half written
        writer.wait(timeout=60)
    assert os.path.exists(path + ".tmp")  # the torn copy, never renamed over last.pt
    state = load_state(path)
    assert state["epoch"] >= 1 and bool((state["w"] == state["epoch"]).all())


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
    for name in ("old", "new"):
        os.makedirs(tmp_path / name / "checkpoints")
        (tmp_path / name / "checkpoints" / "last.pt").write_bytes(b"")
        time.sleep(0.02)
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
