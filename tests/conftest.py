"""Shared test helpers: tests make their own small data in temporary folders."""
import contextlib
import io
import json
import multiprocessing
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import CLASSES, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_ERROR_CHARS = 300  # an error line of a tool, "error: ..." included: short enough to read at once (issue 23)
# Subprocesses whose runs are compared bit for bit sum with a fixed number of threads, whatever the machine
# or its load (OpenMP's default follows the cores, and a reduction's order follows the threads).
FIXED_THREADS = dict(os.environ, OMP_NUM_THREADS="2")
# A fresh interpreter's warning filters (Python's defaults): what a script run in this process sees, instead of
# pytest's "error" filter.
FRESH_WARNINGS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                  ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                  ("ignore", ResourceWarning, None)]


def run_script(script, *argv, cwd=None, threads=2):
    """``python script *argv`` run from ``cwd`` (or here) inside this process, as the command line would run it (its
    ``__main__``, ``sys.argv``, working directory, exit status, stdout and stderr, 2 threads as FIXED_THREADS),
    returned as ``subprocess.run(..., capture_output=True, text=True)`` would. It saves the interpreter's start
    and the imports, seconds a run. What only a separate process shows (--help before torch is imported, a
    signal, several ranks, torchrun) runs in one (``start_script``, ``run_ranks`` or a subprocess)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _as_main(script, [str(a) for a in argv], cwd, threads)
    return subprocess.CompletedProcess([sys.executable, script, *map(str, argv)], code, out.getvalue(),
                                       err.getvalue())


def _as_main(script, argv, cwd, threads):
    """Run ``script`` as ``__main__`` with ``argv`` from ``cwd`` on ``threads`` threads, with a fresh interpreter's
    warning filters, writing to the current sys.stdout and sys.stderr; return its exit status. All is restored."""
    import torch

    saved = sys.argv, sys.path[:], os.getcwd(), torch.get_num_threads()
    try:
        sys.argv, sys.path[0:0] = [script, *argv], [os.path.dirname(os.path.abspath(script))]
        os.chdir(cwd or saved[2])
        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(FRESH_WARNINGS):
                warnings.filterwarnings(action, category=category, module=module or "")
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as stop:  # as the interpreter ends: a message goes to stderr and means status 1
                if isinstance(stop.code, int) or stop.code is None:
                    return stop.code or 0
                print(stop.code, file=sys.stderr)
                return 1
            except Exception:
                traceback.print_exc()
                return 1
            return 0
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
        torch.set_num_threads(saved[3])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fork_server():
    """The multiprocessing context whose processes fork from a server that imported the training code once:
    a rank starts in milliseconds instead of importing torch, torchvision and the code for seconds, and
    forks from a process that has run no thread (so OpenMP works in it)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lib.training.program", "test_distributed", "test_ddp"])
    return context


def _rank(rank, world, port, script, argv, cwd, out_dir):
    """One rank of ``run_ranks``: torchrun's environment for it, the script on one thread, its output saved."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    done = run_script(script, *argv, cwd=cwd, threads=1)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump([done.returncode, done.stdout, done.stderr], f)
    sys.exit(done.returncode)


def _streamed(script, argv, cwd, threads, folder):
    """The process of ``start_script``: the script with its stdout and stderr line-buffered into files."""
    with open(os.path.join(folder, "stdout"), "w", buffering=1) as out, \
            open(os.path.join(folder, "stderr"), "w", buffering=1) as err:
        sys.stdout, sys.stderr = out, err
        code = _as_main(script, argv, cwd, threads)
    sys.exit(code)


class Started:
    """``start_script``'s running script: ``wait_for_line``, ``send_signal``, ``wait`` (as Popen's, whose
    returncode is -N after signal N)."""

    def __init__(self, script, argv, cwd, threads):
        self.folder, self.args = tempfile.mkdtemp(), [sys.executable, script, *argv]
        self.process = fork_server().Process(target=_streamed, args=(script, argv, cwd, threads, self.folder))
        self.process.start()

    def output(self, name):
        with open(os.path.join(self.folder, name)) as f:
            return f.read()

    def wait_for_line(self, prefix, timeout_s=600):
        deadline = time.monotonic() + timeout_s
        while self.process.is_alive() and time.monotonic() < deadline:
            if os.path.exists(os.path.join(self.folder, "stdout")) and any(
                    line.startswith(prefix) for line in self.output("stdout").splitlines()):
                return
            time.sleep(0.02)
        pytest.fail(f"no line starting {prefix!r} in {timeout_s} s: {self.output('stderr')}")

    def send_signal(self, sig):
        os.kill(self.process.pid, sig)

    def wait(self, timeout_s=600):
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            pytest.fail(f"{self.args} did not end in {timeout_s} s")
        return subprocess.CompletedProcess(self.args, self.process.exitcode, self.output("stdout"),
                                           self.output("stderr"))


def start_script(script, *argv, cwd=None, threads=2):
    """``python script *argv`` started in a process of its own, as Popen would start it, forked from
    ``fork_server`` (no seconds of imports): for the tests that signal a running script."""
    return Started(script, [str(a) for a in argv], cwd, threads)


def run_ranks(script, *argv, ranks=2, cwd=None, timeout_s=300):
    """``torchrun --nproc_per_node ranks script *argv`` from ``cwd``, as torchrun sets each worker up (RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, OMP_NUM_THREADS=1), with the ranks started from ``fork_server``.
    Returned as ``subprocess.run`` would: the ranks' stdout and stderr in rank order, the first failing rank's
    status; when a rank fails the others are stopped, as torchrun stops them. The test of torchrun's own part
    (passing a scheduler's signal to every rank) launches torchrun itself (tests/test_ddp.py)."""
    context, port, out_dir = fork_server(), free_port(), tempfile.mkdtemp()
    argv = [str(a) for a in argv]
    processes = [context.Process(target=_rank, args=(rank, ranks, port, script, argv, cwd, out_dir))
                 for rank in range(ranks)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s

    def failed():
        return any(p.exitcode not in (None, 0) for p in processes)

    while any(p.is_alive() for p in processes) and not failed() and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in processes:
        p.join(timeout=5 if failed() else 0)  # a few seconds for the other ranks to say why and end
    hung = [p for p in processes if p.is_alive()]
    timed_out = hung and not failed()
    for p in hung:
        p.kill()
    if timed_out:
        pytest.fail(f"{script} on {ranks} ranks did not finish in {timeout_s} s")
    results = []
    for rank, process in enumerate(processes):
        process.join()
        path = os.path.join(out_dir, f"rank{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
        else:
            results.append([process.exitcode or 1, "", f"rank {rank} ended with status {process.exitcode}\n"])
    code = next((c for c, _, _ in results if c), 0)
    return subprocess.CompletedProcess(["torchrun", f"--nproc_per_node={ranks}", script, *argv], code,
                                       "".join(r[1] for r in results), "".join(r[2] for r in results))


def make_image_tree(root, classes=4, per_class=12, size=32, ext="png"):
    """``root/<class>/<class>_<k>.<ext>`` with small synthetic scene images; returns ``root``."""
    for label, name in enumerate(CLASSES[:classes]):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            image = render(name, np.random.default_rng([label, k]), size)
            Image.fromarray(image).save(os.path.join(root, name, f"{name}_{k:02d}.{ext}"))
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory):
    """A small dataset: ``<data>/tiny/<class>/*.png`` (4 classes x 12 images, 32 px)."""
    data = tmp_path_factory.mktemp("data")
    make_image_tree(os.path.join(data, "tiny"))
    return str(data)



@pytest.fixture(scope="session", autouse=True)
def compilations(request, tmp_path_factory, image_tree):
    """The torch.compile work of the tests in tests/test_compile.py that this session runs, started at its
    beginning in processes of their own (``test_compile.start_compilations``): it takes minutes the first time on
    2 cores, and the other tests leave one core idle about half of the time."""
    wanted = {item.originalname for item in request.session.items if item.path.name == "test_compile.py"}
    if not wanted:
        yield {}
        return
    from test_compile import start_compilations

    started = start_compilations(wanted, tmp_path_factory, image_tree)
    yield started
    for process, _ in started.values():
        process = getattr(process, "process", process)
        if process.is_alive():
            process.kill()


def float32_error_bound(batch, dim, temperature, terms, norm=1.0):
    """How far the SNCA loss computed in float32 from float32 features and memory whose norms multiply to at most
    ``norm`` (1 for unit vectors) may be from float64 arithmetic on the same inputs: (loss error relative to
    max(1, loss), absolute gradient error).

    A logit f.m / T is a dot product of ``dim`` terms, off by at most eps_s = (gamma_dim + u) |f| |m| / T.
    A log-sum-exp over the memory is then off by eps_s plus the relative error of a float32 sum of ``terms``
    positive exponentials (a block's sum, then the running sum over blocks), for which we use the probabilistic
    bound of Higham and Mary (SIAM J. Sci. Comput. 2019): lambda sqrt(n) u, exceeded with probability below
    2 n exp(-lambda^2 / 2) (< 1e-6 for lambda = 7 and n <= 2e5); the worst case n u is ~1e4 times looser.
    Each row's loss log Z' - log P + m is off by 2 (eps_s + sum), and their float32 mean by gamma_B times
    itself more: at most (2 (eps_s + sum) + gamma_B) max(1, loss). The gradient (1 / (B T)) sum_j w_j m_j has
    sum_j |w_j| <= 2 (two softmax weight sets), each weight exp(s - log-sum-exp) off by 2 eps_s + sum
    relatively, and the weighted sum of ``terms`` products adds one more sum error: 2 / (B T) (2 eps_s + 2 sum).
    """
    unit = 2.0**-24
    eps_s = (dim * unit / (1 - dim * unit) + unit) * norm / temperature
    summed = 7 * terms**0.5 * unit
    gamma_batch = batch * unit / (1 - batch * unit)
    return 2 * (eps_s + summed) + gamma_batch, 2 / (batch * temperature) * (2 * eps_s + 2 * summed)


@pytest.fixture(scope="session")
def entry_runs(image_tree, tmp_path_factory):
    """Runs of an entry point on ``image_tree`` shared by every test that reads the same training:
    ``get(method, *extra, epochs=2)`` trains ``small_run(method, ..., *extra)`` once per distinct command (and
    ``resumed=N`` once more: a copy of it resumed to N epochs through its last.pt, ``via="file"``, or its folder)
    and returns ``(folder, completed process)``.
    The folders are read-only for the tests: one that resumes or changes a run copies it first (``copy_run``)."""
    from test_entry_points import run, small_run

    out = tmp_path_factory.mktemp("shared_runs")
    done = {}

    def get(method, *extra, epochs=2, resumed=None, via="folder"):
        key = (method, extra, epochs, resumed, via)
        if key not in done:
            source = None if resumed is None else get(method, *extra, epochs=epochs)[0]
            name = f"run{len(done)}"
            if resumed is None:
                process = run(method, *small_run(method, image_tree, str(out), *extra, epochs=epochs, run_name=name),
                              cwd=out)
            else:
                copy_run(source, os.path.join(out, name))
                target = os.path.join(out, name, *(("checkpoints", "last.pt") if via == "file" else ()))
                process = run(method, *small_run(method, image_tree, str(out), *extra, "--resume", target,
                                                 epochs=resumed, run_name=name), cwd=out)
            assert process.returncode == 0, process.stderr
            done[key] = (os.path.join(out, name), process)
        return done[key]

    return get


WALL_CLOCK = ("time_s", "startup_s")  # seconds measured by the clock: differ between any two runs


def trained_network(run_dir):
    """The network of a run's best.pt in eval mode, built here from the checkpoint's recorded arguments."""
    import torch

    from models import EmbeddingNet

    state = torch.load(os.path.join(run_dir, "checkpoints", "best.pt"), weights_only=True)
    model = EmbeddingNet(state["args"]["model"], state["args"]["dim"], state["num_classes"])
    model.load_state_dict(state["model"])
    return model.eval()


def d4_mean_embeddings(model, images):
    """The oracle of --tta d4 on a uint8 (n, 3, S, S) batch: the float64 mean over the 8 symmetries of the square
    of the network's embeddings, renormalised; (n, D)."""
    import torch

    from lib.eval.inference import embed
    from lib.eval.robustness import D4, transform
    from lib.training.device import resolve_precision

    cpu, labels = torch.device("cpu"), torch.zeros(len(images), dtype=torch.long)
    each = torch.stack([embed(model, transform(images, t), labels, cpu, resolve_precision(cpu, "none"))
                        for t in D4])                                                              # (8, n, D)
    return torch.nn.functional.normalize(each.double().mean(0), dim=1)


def untimed(lines):
    """Metrics lines without the wall-clock fields, for comparing two runs of the same computation."""
    return [{k: v for k, v in m.items() if k not in WALL_CLOCK} for m in lines]


def copy_run(folder, to):
    """A copy of a run folder, to resume or change without touching the shared one."""
    import shutil

    shutil.copytree(folder, to)
    return str(to)
