"""Flags: the authors' option strings, every number's range, the help, and bad input refused in one line before
anything is written; a resume keeps its experiment and records itself in history.jsonl."""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from test_entry_points import SCRIPTS, small_run

import lib.training.program
from lib.cli.args import divergence_hint, get_args_parser, given_flags, parse_args
from lib.cli.flags import COUNT, Range
from lib.training.loop import NonFiniteError
from lib.training.run import resume_line

from conftest import MAX_ERROR_CHARS, REPO, run_script

# Every option string of the authors' two parsers (train_SNCA_CE/main.py and train_SNCA_CE_MC/main.py of
# github.com/jiankang1991/SNCA_CE), a value, and what it sets there: (destination, value).
REFERENCE = {
    "mb": {"--data": ("data", "/datasets"), "--dataset": ("dataset", "AID"), "-b": ("batch_size", 64),
           "--batch-size": ("batch_size", 64), "--num_workers": ("num_workers", 1), "--epochs": ("epochs", 7),
           "--lr": ("lr", 0.05), "--learning-rate": ("lr", 0.05), "--resume": ("resume", "x.pt"),
           "--dim": ("dim", 64), "--imgEXT": ("imgEXT", "jpg"), "--temperature": ("temperature", 0.1),
           "--memory-momentum": ("memory_momentum", 0.3), "--m-mementum": ("memory_momentum", 0.3),
           "--margin": ("margin", 0.1), "--model": ("model", "resnet50"), "--lambda_": ("lambda_", 0.5)},
    "mu": {"--data": ("data", "/datasets"), "--dataset": ("dataset", "AID"), "-b": ("batch_size", 64),
           "--batch-size": ("batch_size", 64), "--num_workers": ("num_workers", 1), "--epochs": ("epochs", 7),
           "--lr": ("lr", 0.05), "--learning-rate": ("lr", 0.05), "--resume": ("resume", "x.pt"),
           "--dim": ("dim", 64), "--imgEXT": ("imgEXT", "jpg"), "--temperature": ("temperature", 0.1),
           "--margin": ("margin", 0.1)},
}


@pytest.mark.parametrize("memory, option", [(m, o) for m in REFERENCE for o in REFERENCE[m]])
def test_every_option_string_of_the_authors_parsers_parses_with_its_meaning(memory, option):
    dest, value = REFERENCE[memory][option]
    args = get_args_parser(memory).parse_args([option, str(value)])
    assert getattr(args, dest) == value  # their defaults: tests/test_paper_values.py


def script_parser(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()


PARSERS = {"mb": lambda: get_args_parser("mb"), "mu": lambda: get_args_parser("mu"),
           **{name: (lambda name=name: script_parser(name))
              for name in ("evaluate", "retrieve", "check_dataset", "make_tables")}}
REQUIRED = {"retrieve": ["--checkpoint", "r", "--gallery", "g", "--query", "q"], "check_dataset": ["--data", "d",
            "--dataset", "x"], "make_tables": ["runs"]}
# (parser, flag, a value out of range, the range); the valid bounds parse (test below)
RANGES = [
    *[(m, flag, bad, text) for m in ("mb", "mu") for flag, bad, text in [
        ("--image-size", "8", "an integer >= 32"), ("--split-seed", "-1", "an integer in [0, 4294967295]"),
        ("--num_workers", "-1", "an integer >= 0"), ("--dim", "0", "an integer >= 1"),
        ("--epochs", "-1", "an integer >= 1"), ("--epochs", "0", "an integer >= 1"),
        ("--batch-size", "0", "an integer >= 1"), ("--lr", "-0.1", "> 0"),
        ("--lr", "0", "> 0"), ("--lr", "nan", "> 0"), ("--lr-step", "0", "an integer >= 1"),
        ("--lr-gamma", "0", "in (0, 1]"), ("--momentum", "1", "in (0, 1)"), ("--weight-decay", "-1", ">= 0"),
        ("--temperature", "0", "> 0"), ("--margin", "-0.1", ">= 0"), ("--lambda_", "-1", ">= 0"),
        ("--seed", "-1", "an integer in [0, 4294967295]"), ("--knn-k", "0", "an integer >= 1"),
        ("--eval-batch-size", "0", "an integer >= 1"), ("--batch-size", "1.5", "an integer >= 1"),
        ("--temperature", "abc", "> 0"), ("--seen-fraction", "1", "in (0, 1)"),
        ("--train-fraction", "0", "in (0, 1)")]],
    ("mb", "--memory-momentum", "1", "in [0, 1)"), ("mb", "--m-mementum", "-0.5", "in [0, 1)"),
    ("mb", "--dcnn-tau", "-1", ">= 0"), ("mb", "--dcnn-beta", "-1", ">= 0"), ("mb", "--dcnn-weight", "-1", ">= 0"),
    ("mb", "--triplet-margin", "-1", ">= 0"), ("mu", "--key-momentum", "1", "in [0, 1)"),
    ("mb", "--queue-size", "0", "an integer >= 1"),
    *[(m, "--knn-extracted-every", "-1", "an integer >= 0") for m in ("mb", "mu")],
    ("evaluate", "--batch-size", "0", "an integer >= 1"), ("evaluate", "--num_workers", "-1", "an integer >= 0"),
    ("evaluate", "--tsne-points", "2", "an integer >= 3"), ("evaluate", "--seed", "-1", "an integer in [0, "),
    ("retrieve", "--k", "0", "an integer >= 1"),
    ("check_dataset", "--split-seed", "-1", "an integer in [0, "), ("check_dataset", "--num_workers", "0",
                                                                    "an integer >= 1"),
    ("check_dataset", "--seen-fraction", "1", "in (0, 1)"), ("check_dataset", "--train-fraction", "0", "in (0, 1)"),
]
BOUNDS = {"mb": ["--image-size", "32", "--epochs", "1", "--margin", "0", "--lambda_", "0", "--weight-decay", "0",
                 "--lr-gamma", "1", "--memory-momentum", "0", "--num_workers", "0", "--seed", str(2**32 - 1)],
          "mu": ["--ema-momentum", "0", "--knn-k", "1", "-b", "1", "--momentum", "0.999"]}


@pytest.mark.parametrize("parser, flag, bad, text", RANGES)
def test_each_number_out_of_range_is_one_line_naming_flag_value_and_range(parser, flag, bad, text, capsys):
    with pytest.raises(SystemExit) as stop:
        PARSERS[parser]().parse_args([*REQUIRED.get(parser, []), flag, bad])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument ") and flag in err, err
    assert err.strip().endswith(f"got {bad}") and f": must be {text}" in err, err


def test_every_numeric_flag_of_every_parser_has_a_range_and_a_test():
    tested = {(parser, flag) for parser, flag, _, _ in RANGES}
    for name, make in PARSERS.items():
        for action in make()._actions:
            if action.type in (int, float) or isinstance(action.type, Range):  # not the band lists' own parsers
                assert isinstance(action.type, Range), (name, action.option_strings)
                assert any((name, o) in tested for o in action.option_strings), (name, action.option_strings)


@pytest.mark.parametrize("memory", sorted(BOUNDS))
def test_the_bounds_themselves_parse(memory):
    args = get_args_parser(memory).parse_args(BOUNDS[memory])
    assert args.epochs == 1 or args.knn_k == 1


def test_ranges_name_their_kind():
    assert COUNT("3") == 3 and isinstance(COUNT("3"), int)
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1, got inf"):
        COUNT("inf")
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be > 0, got inf"):
        Range(float, low=0, low_open=True)("inf")


@pytest.mark.slow  # starts entry points or trains a network
@pytest.mark.parametrize("script", ["train_SNCA_CE/main.py", "train_SNCA_CE_MC/main.py", "scripts/check_dataset.py",
                                    "scripts/make_tables.py", "scripts/evaluate.py", "scripts/retrieve.py"])
def test_help_states_each_default_once(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    done = run_script(os.path.join(REPO, script), "--help")
    assert done.returncode == 0, done.stderr
    assert "(default: None)" not in done.stdout
    assert not [line for line in done.stdout.splitlines() if line.count("default") > 1 and "(default:" in line]


PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.slow  # starts entry points or trains a network
@pytest.mark.parametrize("script", ["train_SNCA_CE/main.py", "train_SNCA_CE_MC/main.py", "scripts/check_dataset.py",
                                    "scripts/make_tables.py", "scripts/evaluate.py", "scripts/retrieve.py"])
def test_help_does_not_import_torch(script):
    done = subprocess.run([sys.executable, "-c", PROBE, os.path.join(REPO, script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "torch imported: False" in done.stdout


def test_given_flags_are_told_from_defaults_in_every_spelling():
    argv = ["--learning-rate=0.5", "-b16", "--m-mem", "0.3", "--epochs", "130", "--pretrained", "none"]
    assert given_flags(get_args_parser("mb"), argv) == {"lr", "batch_size", "memory_momentum", "epochs", "pretrained"}


def test_a_diverging_run_says_why_and_what_to_try(monkeypatch):
    scratch = get_args_parser("mb").parse_args(["--pretrained", "none"])
    assert "from scratch" in divergence_hint(scratch) and "ImageNet weights; try --lr 0.01" in divergence_hint(scratch)
    fp16 = get_args_parser("mu").parse_args(["--amp", "fp16"])
    assert "--amp bf16" in divergence_hint(fp16)

    def diverge(args):
        raise NonFiniteError("non-finite loss_ce at epoch 3/3, step 5: stopped before the optimizer step")

    monkeypatch.setattr(lib.training.program, "train", diverge)
    with pytest.raises(SystemExit) as stop:
        lib.training.program.main(scratch)
    assert str(stop.value.code) == ("error: non-finite loss_ce at epoch 3/3, step 5: stopped before the optimizer "
                                    "step" + divergence_hint(scratch))


def test_the_resume_line_says_where_training_continues():
    args = SimpleNamespace(resume="runs/x/checkpoints/last.pt", epochs=5)
    assert resume_line(args, {"epoch": 2, "step": 0}).endswith("2 epochs done, continuing with epoch 3/5")
    assert resume_line(args, {"epoch": 2, "step": 7}).endswith("continuing at step 8 of epoch 3/5")
    assert resume_line(args, {"epoch": 5, "step": 0}).endswith("5 epochs done, none left of --epochs 5")


# ---------------- a trained run: resume and bad input ----------------

@pytest.fixture(scope="module")
def trained(image_tree, tmp_path_factory):
    """A one-epoch MB run at --lr 0.01 -b 16 on the tiny dataset: (its folder, the folder of runs)."""
    out = tmp_path_factory.mktemp("runs")
    done = run_script(SCRIPTS["mb"], *small_run("mb", image_tree, str(out), epochs=1), cwd=out)
    assert done.returncode == 0, done.stderr
    return str(out / "run"), str(out)


@pytest.mark.slow  # starts entry points or trains a network
def test_a_resume_takes_the_experiment_from_its_checkpoint(trained, image_tree):
    folder, _ = trained
    args = parse_args("mb", ["--resume", folder, "--num_workers", "1"])
    assert (args.lr, args.batch_size, args.image_size, args.pretrained, args.dataset) == (0.01, 16, 32, "none", "tiny")
    assert args.data == image_tree and args.epochs == 1 and args.num_workers == 1
    assert args.resume == os.path.join(folder, "checkpoints", "last.pt")


def tree(root):
    """{path: (size, mtime)} of every file and folder under ``root``."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = os.path.join(folder, name)
            found[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


@pytest.mark.slow  # starts entry points or trains a network
def test_bad_input_is_one_line_naming_flag_or_path_and_the_fix_and_leaves_everything_as_it_was(trained, image_tree,
                                                                                                 tmp_path):
    folder, out = trained
    data = os.path.join(image_tree, "tiny")
    (tmp_path / "a_file").write_text("x")
    new = ["--data", image_tree, "--dataset", "tiny", "--imgEXT", "png", "--pretrained", "none", "--out", out]
    cases = [  # (script, flags, what the line names)
        ("mb", ["-b", "0"], ["-b/--batch-size", "must be an integer >= 1, got 0"]),
        ("mb", ["--temperature", "0"], ["argument --temperature: must be > 0, got 0"]),
        ("mb", ["--lr-step", "0"], ["--lr-step", ">= 1, got 0"]),
        ("mb", ["--lr", "-0.1"], ["--lr", "> 0, got -0.1"]),
        ("mb", ["--weight-decay", "-1"], ["--weight-decay", ">= 0, got -1"]),
        ("mb", ["--image-size", "8"], ["--image-size", ">= 32, got 8"]),
        ("mu", ["--knn-k", "0"], ["--knn-k", ">= 1, got 0"]),
        ("mu", ["--epochs", "0"], ["--epochs", ">= 1, got 0"]),
        ("mb", ["--momentum", "1"], ["--momentum", "in (0, 1), got 1"]),
        ("mb", ["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
        ("mu", [*new, "--device", "gpu"], ["--device gpu: not a device name", "cuda:1"]),
        ("retrieve", [folder, "--gallery", image_tree, "--query", "q.png", "--device", "gpu"], ["--device gpu"]),
        ("mb", ["--data", data], [f"--data {data} is the dataset folder itself",
                                  f"try --data {image_tree} --dataset tiny"]),
        ("mu", ["--data", str(tmp_path / "nowhere")], ["--data", "nowhere: no such folder"]),
        ("mb", [*new, "--weights", str(tmp_path / "w.pt")], ["--weights", "w.pt: no such file"]),
        ("mb", [*new[:-1], str(tmp_path / "a_file")], ["--out", "a_file is a file: give a folder"]),
        ("mb", [*new, "--cache-dir", str(tmp_path / "a_file")], ["--cache-dir", "a_file is a file"]),
        ("mb", [*new, "--run-name", "a/b"], ["--run-name a/b: a name, not a path"]),
        ("mb", [*new, "--run-name", "run"], [f"{folder} already exists", "--run-name", "--resume"]),
        ("mb", ["--resume", str(tmp_path / "none.pt")], ["--resume", "none.pt: no such file"]),
        ("mb", ["--resume", str(tmp_path)], ["--resume", "last.pt: no such file"]),
        ("mb", ["--resume", folder, "-b", "128", "--learning-rate", "0.5", "--epochs", "3"],
         ["--batch-size 16 (given 128), --lr 0.01 (given 0.5); leave these flags out"]),
        ("mu", ["--resume", folder], ["a run of SNCA-CE (MB)", "train_SNCA_CE/main.py"]),
        ("mb", ["--resume", folder, "--split", "unseen", "--rot90", "--memory", "xbm", "--queue-size", "64"],
         ["--rot90 off (given on), --split reference (given unseen), --memory mb (given xbm), --queue-size 8192 "
          "(given 64); leave these flags out"]),
        ("mb", [*new, "--rgb-bands", "4,3,2"], ["--rgb-bands applies to N-band images: give --bands"]),
        ("mu", [*new, "--rot90"], ["--rot90 applies to N-band images"]),
        ("mb", [*new, "--seen-fraction", "0.5"], ["--seen-fraction applies to --split unseen"]),
        ("mu", [*new, "--train-fraction", "0.5"], ["--train-fraction applies to --split unseen"]),
        ("evaluate", [], ["RUN_DIR", "--checkpoint PATH"]),
        ("evaluate", [folder, "--checkpoint", folder], ["not both"]),
        ("retrieve", ["--gallery", "g", "--query", "q", "--k", "0"], ["--k", ">= 1, got 0"]),
        ("check_dataset", ["--data", data, "--dataset", "x"], ["--data", "is the dataset folder itself"]),
        ("make_tables", [str(tmp_path / "nowhere")], ["nowhere: no such folder"]),
    ]
    before = tree(tmp_path), tree(out), tree(image_tree)
    for script, flags, needles in cases:
        path = SCRIPTS[script] if script in SCRIPTS else os.path.join(REPO, "scripts", f"{script}.py")
        done = run_script(path, *flags, cwd=tmp_path)
        assert done.returncode != 0 and done.stdout == "", (flags, done.stdout)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), (flags, done.stderr)
        assert len(done.stderr.strip()) <= MAX_ERROR_CHARS, (flags, done.stderr)  # one short line, fix included
        for needle in needles:
            assert needle in done.stderr, (flags, done.stderr)
    assert (tree(tmp_path), tree(out), tree(image_tree)) == before  # no new folder, no changed file


@pytest.mark.slow  # starts entry points or trains a network
def test_a_resume_extends_the_run_keeps_args_json_and_appends_history(trained, tmp_path):
    folder = shutil.copytree(trained[0], tmp_path / "run")
    args_json = (folder / "args.json").read_bytes()
    done = run_script(SCRIPTS["mb"], "--resume", folder, "--epochs", "2", "--num_workers", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resumed {folder / 'checkpoints' / 'last.pt'}: 1 epochs done, continuing with epoch 2/2" in done.stdout
    assert "epoch 2/2" in done.stdout and "epoch 1/2" not in done.stdout
    assert (folder / "args.json").read_bytes() == args_json
    start, resume = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert start["event"] == "start" and resume["event"] == "resume" and resume["from"] == {"epoch": 1, "step": 0}
    assert resume["changed"] == {"epochs": [1, 2]}  # -b, --lr, --data, ... came from the checkpoint
    assert {"time", "command", "git_commit", "host"} <= resume.keys() and "--epochs 2" in resume["command"]
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["memory_momentum"] == 0.5 for m in metrics)


def test_default_workers_never_exceed_the_cores_torch_suggests():
    """DataLoader warns when given more workers than the cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    assert 1 <= get_args_parser("mb").parse_args([]).num_workers <= cores
    assert 1 <= script_parser("evaluate").parse_args(["runs/x"]).num_workers <= cores


def test_bad_image_warnings_say_what_becomes_of_the_files(tmp_path):
    from datasets.check import summary

    report = {"problems": [("unreadable", str(tmp_path / "a" / "x.png"), ""), ("empty-file", str(tmp_path / "b.png"),
                                                                               "")]}
    stopping, skipping = summary(report, str(tmp_path)), summary(report, str(tmp_path), skipping=True)
    assert all("training stops unless --skip-bad-images" in line for line in stopping)
    assert all("left out of the split (--skip-bad-images)" in line and "stops" not in line for line in skipping)
