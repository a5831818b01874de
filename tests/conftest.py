"""Shared test helpers: tests make their own small data in temporary folders."""
import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
import warnings

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import CLASSES, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    and the imports, seconds a run. Tests of what only a separate process shows (--help before torch is imported,
    signals, torchrun, torch.compile) start one."""
    import torch

    argv = [str(a) for a in argv]
    saved = sys.argv, sys.path[:], os.getcwd(), torch.get_num_threads()
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        sys.argv, sys.path[0:0] = [script, *argv], [os.path.dirname(os.path.abspath(script))]
        os.chdir(cwd or saved[2])
        torch.set_num_threads(threads)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(FRESH_WARNINGS):
                warnings.filterwarnings(action, category=category, module=module or "")
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as stop:  # as the interpreter ends: a message goes to stderr and means status 1
                if isinstance(stop.code, int) or stop.code is None:
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
        torch.set_num_threads(saved[3])
    return subprocess.CompletedProcess([sys.executable, script, *argv], code, out.getvalue(), err.getvalue())


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



def float32_error_bound(batch, dim, temperature, terms):
    """How far the SNCA loss computed in float32 from unit float32 features and memory may be from float64
    arithmetic on the same inputs: (loss error relative to max(1, loss), absolute gradient error).

    A logit f.m / T is a dot product of ``dim`` terms, off by at most eps_s = (gamma_dim + u) / T (|f| |m| <= 1).
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
    eps_s = (dim * unit / (1 - dim * unit) + unit) / temperature
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


def untimed(lines):
    """Metrics lines without the wall-clock fields, for comparing two runs of the same computation."""
    return [{k: v for k, v in m.items() if k not in WALL_CLOCK} for m in lines]


def copy_run(folder, to):
    """A copy of a run folder, to resume or change without touching the shared one."""
    import shutil

    shutil.copytree(folder, to)
    return str(to)
