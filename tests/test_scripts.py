"""The paper scripts, in dry-run mode: one naming scheme, one set of settings, EXTRA_ARGS on every training and
evaluation command, float32 unless asked, the plan (run count, GPU hours) printed first, and commands that parse;
scripts/cpu_results.sh, the CPU results of benchmarks/RESULTS.md, likewise."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from lib.cli.args import get_args_parser
from scripts.evaluate import get_args_parser as evaluate_parser

from conftest import REPO

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "scripts", "*.sh"))
                 if not p.endswith(("paper_common.sh", "cpu_results.sh")))
METHODS = ("snca-ce", "snca", "d-cnn", "triplet")
PLAN = re.compile(r"^plan: (\d+) runs \((\d+) already evaluated, (\d+) to train and evaluate\), about ([\d.]+) GPU "
                  r"hours on one H200 in (float32|bf16 autocast|fp16 autocast), (\d+) epochs")


def datasets(folder):
    """``folder`` holding empty AID/, NWPU-RESISC45/ and RSSCN7/: all that a dry run's checks look at."""
    for name in ("AID", "NWPU-RESISC45", "RSSCN7"):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    return str(folder)


def paper_script(script, out, check=True, **env):
    data = datasets(os.path.join(os.path.dirname(os.path.abspath(out)), "datasets"))
    env = {**os.environ, "DATA": data, "OUT": str(out), **env}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=env, capture_output=True, text=True,
                          check=check)


def dry_run(script, out, **env):
    return paper_script(script, out, DRY_RUN="1", **env).stdout.splitlines()


def commands(lines):
    return [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]


def test_every_script_is_covered():
    assert set(SCRIPTS) == {"train_paper.sh", "paper_table_knn.sh", "paper_table_retrieval.sh",
                            "paper_table_clustering.sh", "paper_fig4_learning_curves.sh", "paper_fig_pr_curves.sh",
                            "paper_table_unseen.sh"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_plan_names_and_extra_args(script, tmp_path):
    out, weights, cache = tmp_path / "paper", tmp_path / "resnet18.pth", tmp_path / "cache"
    weights.write_bytes(b"")  # exists, for a parser that checks paths; a dry run never reads it
    extra = f"--num_workers 7 --weights {weights} --cache-dir {cache}".split()
    lines = dry_run(script, out, SEEDS="2", EPOCHS="5", EXTRA_ARGS=" ".join(extra))
    plan = PLAN.match(lines[0])
    assert plan, f"{script} does not print its plan first: {lines[0]!r}"
    cmds = commands(lines)
    trains = [c for c in cmds if c[1].endswith("/main.py")]
    evals = [c for c in cmds if c[1] == "scripts/evaluate.py"]
    tables = [c for c in cmds if c[1] == "scripts/make_tables.py"]
    assert len(trains) + len(evals) + len(tables) == len(cmds)
    assert int(plan[1]) == int(plan[3]) == len(trains) == len(evals) and int(plan[2]) == 0
    assert float(plan[4]) > 0 and plan[5] == "float32" and plan[6] == "5"
    assert len(tables) == (0 if script == "train_paper.sh" else 1)
    names = set()
    for train, evaluate in zip(trains, evals):
        memory = {"train_SNCA_CE/main.py": "mb", "train_SNCA_CE_MC/main.py": "mu"}[train[1]]
        args = get_args_parser(memory).parse_args(train[2:])
        # One naming scheme: <dataset>[-unseen]-<method>-<mb|mu>-seed<k> under OUT, whatever the script.
        split = "-unseen" if args.split == "unseen" else ""
        assert args.run_name == f"{args.dataset}{split}-{args.method}-{memory}-seed{args.seed}"
        assert args.out == str(out) and args.data == datasets(tmp_path / "datasets") and args.epochs == 5
        assert args.dataset in ("AID", "NWPU-RESISC45") and args.method in METHODS and args.seed in (0, 1)
        assert args.amp == "none"  # float32, as the authors trained, unless AMP or EXTRA_ARGS say otherwise
        # EXTRA_ARGS reach the training command, last, so that they win over the script's flags ...
        assert train[-len(extra):] == extra
        assert args.num_workers == 7 and args.weights == str(weights) and args.cache_dir == str(cache)
        # ... and its evaluation, of the run folder just trained.
        assert evaluate[-len(extra):] == extra
        evaluated = evaluate_parser().parse_args(evaluate[2:])
        assert evaluated.target == os.path.join(str(out), args.run_name)
        assert evaluated.num_workers == 7 and evaluated.cache_dir == str(cache)
        names.add(args.run_name)
    assert len(names) == len(trains)  # no run trained twice


def test_train_paper_runs_both_memories_on_both_datasets_and_shares_the_tables_runs(tmp_path):
    def names(script):
        return {get_args_parser("mu" if "MC" in c[1] else "mb").parse_args(c[2:]).run_name
                for c in commands(dry_run(script, tmp_path, SEEDS="1")) if c[1].endswith("/main.py")}
    trained = names("train_paper.sh")
    assert trained == {f"{d}-snca-ce-{m}-seed0" for d in ("AID", "NWPU-RESISC45") for m in ("mb", "mu")}
    assert trained < names("paper_table_knn.sh")  # the same folders: the tables reuse train_paper.sh's runs


def test_amp_and_extra_args_choose_mixed_precision(tmp_path):
    def plan_and_amp(**env):
        lines = dry_run("train_paper.sh", tmp_path, SEEDS="1", **env)
        trains = [c for c in commands(lines) if c[1].endswith("/main.py")]
        amps = {get_args_parser("mb").parse_known_args(c[2:])[0].amp for c in trains}
        return PLAN.match(lines[0]), amps
    fp32, amps = plan_and_amp()
    assert amps == {"none"}
    bf16, amps = plan_and_amp(AMP="bf16")
    assert amps == {"bf16"} and bf16[5] == "bf16 autocast"
    assert float(bf16[4]) < float(fp32[4])  # RESULTS.md: bf16 trains faster than float32 on the GPU
    _, amps = plan_and_amp(EXTRA_ARGS="--amp bf16")
    assert amps == {"bf16"}
    done = paper_script("train_paper.sh", tmp_path / "paper", check=False, DRY_RUN="1", AMP="fp64")
    assert done.returncode != 0 and "AMP=fp64" in done.stderr


def test_evaluated_runs_are_skipped_and_not_counted(tmp_path):
    done = tmp_path / "AID-snca-ce-mb-seed0" / "eval" / "test"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    lines = dry_run("train_paper.sh", tmp_path, SEEDS="1")
    plan = PLAN.match(lines[0])
    assert (plan[1], plan[2], plan[3]) == ("4", "1", "3")
    assert "= AID-snca-ce-mb-seed0: done" in "\n".join(lines)
    assert len([c for c in commands(lines) if c[1].endswith("/main.py")]) == 3


def test_every_command_is_checked_before_the_first_training(tmp_path):
    """Flags of training alone in EXTRA_ARGS, which also reaches evaluate.py, stop a script before anything runs,
    with evaluate.py's own one-line error; so does a DATA without the plan's dataset folders; DRY_RUN alike."""
    out = tmp_path / "paper"
    for dry in ("0", "1"):
        done = paper_script("paper_table_knn.sh", out, check=False, DRY_RUN=dry, SEEDS="1",
                            EXTRA_ARGS="--pretrained none --image-size 32 -b 16")
        assert done.returncode == 1 and not commands(done.stdout.splitlines()), done.stdout
        assert "unrecognized arguments: --pretrained none --image-size 32 -b 16" in done.stderr
        assert "TRAIN_ARGS" in done.stderr and not out.exists()
    (tmp_path / "aid_only" / "AID").mkdir(parents=True)
    done = paper_script("paper_table_knn.sh", out, check=False, DRY_RUN="1", SEEDS="1", DATA=str(tmp_path / "aid_only"))
    assert done.returncode == 1 and "holds no NWPU-RESISC45/" in done.stderr
    assert not commands(done.stdout.splitlines())
    done = paper_script("paper_table_knn.sh", out, check=False, DRY_RUN="1", SEEDS="1", RUNS="AID-*",
                        DATA=str(tmp_path / "aid_only"))
    assert done.returncode == 0 and len(commands(done.stdout.splitlines())) == 13  # 6 runs, 2 commands each; table


def test_train_args_reach_training_and_eval_args_evaluation(tmp_path):
    lines = dry_run("paper_table_unseen.sh", tmp_path / "paper", SEEDS="1", TRAIN_ARGS="--image-size 64 -b 32",
                    EVAL_ARGS="--batch-size 64 --tsne-points 10", EXTRA_ARGS="--num_workers 3")
    cmds = commands(lines)
    trains = [c for c in cmds if c[1].endswith("/main.py")]
    evals = [c for c in cmds if c[1] == "scripts/evaluate.py"]
    assert len(trains) == len(evals) == 12
    for train in trains:
        args = get_args_parser("mu" if "MC" in train[1] else "mb").parse_args(train[2:])
        assert (args.image_size, args.batch_size, args.num_workers, args.split) == (64, 32, 3, "unseen")
        assert "--tsne-points" not in train
    for evaluate in evals:
        args = evaluate_parser().parse_args(evaluate[2:])
        assert (args.batch_size, args.tsne_points, args.num_workers) == (64, 10, 3)


def test_the_estimate_follows_epochs_image_size_and_seeds(tmp_path):
    def hours(**env):
        plan = PLAN.match(dry_run("paper_table_knn.sh", tmp_path / "paper", **env)[0])
        assert plan, env
        return float(plan[4])
    base = hours(SEEDS="1", EPOCHS="100")
    assert base > 1  # two decimals: the ratios below within 1 %
    assert hours(SEEDS="2", EPOCHS="100") == pytest.approx(2 * base, rel=0.01)
    assert hours(SEEDS="1", EPOCHS="200") == pytest.approx(2 * base, rel=0.01)
    assert hours(SEEDS="1", EPOCHS="100", TRAIN_ARGS="--epochs 50") == pytest.approx(base / 2, rel=0.01)
    assert hours(SEEDS="1", EPOCHS="100", TRAIN_ARGS="--image-size 512") == pytest.approx(4 * base, rel=0.01)
    assert hours(SEEDS="1", EPOCHS="100", EXTRA_ARGS="--num_workers 2", TRAIN_ARGS="--image-size=128") == \
        pytest.approx(base / 4, rel=0.02)
    line = dry_run("paper_table_knn.sh", tmp_path / "paper", SEEDS="1", TRAIN_ARGS="--image-size 128")[0]
    assert "128 px" in line and "1 seed(s)" in line and "(S/256)^2" in line


@pytest.mark.slow
def test_a_paper_script_runs_end_to_end_on_a_tiny_layout(tmp_path):
    """paper_table_knn.sh on made-up AID/ and NWPU-RESISC45/ folders (3 classes of 10 images), one run of it
    (RUNS), 1 epoch at 32 px from scratch, training flags in TRAIN_ARGS: it trains, evaluates, and writes its table."""
    from conftest import make_image_tree

    for name in ("AID", "NWPU-RESISC45"):
        make_image_tree(str(tmp_path / "datasets" / name), classes=3, per_class=10, ext="jpg")
    out = tmp_path / "paper"
    done = paper_script("paper_table_knn.sh", out, check=False, SEEDS="1", EPOCHS="1",
                        RUNS="NWPU-RESISC45-snca-ce-mb-*",
                        TRAIN_ARGS="--pretrained none --image-size 32 -b 8 --lr 0.01", EVAL_ARGS="--tsne-points 3",
                        EXTRA_ARGS="--num_workers 0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checked 2 command(s): all pass" in done.stdout
    assert "it/s" not in done.stderr and "epoch 1/1  loss" in done.stdout  # a log: epoch lines, no progress bar
    assert (out / "NWPU-RESISC45-snca-ce-mb-seed0" / "eval" / "test" / "results.json").is_file()
    tables = (out / "tables" / "tables.md").read_text()
    assert "NWPU-RESISC45" in tables and "SNCA-CE (MB)" in tables
    header, timed = (line.split("\t") for line in (out / "wall_times.tsv").read_text().splitlines())
    assert header == ["run", "train_s", "eval_s"] and timed[0] == "NWPU-RESISC45-snca-ce-mb-seed0"
    assert int(timed[1]) > 0 and int(timed[2]) >= 0


def test_check_commands_runs_each_tool_in_its_check_mode_and_writes_nothing(tmp_path):
    """Shell-quoted lines, or NUL-separated arguments (any path): each command is its tool's --check-args."""
    check = os.path.join(REPO, "scripts", "check_commands.py")
    (tmp_path / "d é" / "AID").mkdir(parents=True)
    good = ["python3", "train_SNCA_CE_MC/main.py", "--data", str(tmp_path / "d é"), "--dataset", "AID", "--out",
            str(tmp_path / "runs")]
    bad = ["python3", "scripts/evaluate.py", str(tmp_path / "runs" / "x"), "--image-size", "32"]
    lines = subprocess.run([sys.executable, check], input=f"{shlex.join(good)}\n{shlex.join(bad)}\n", cwd=REPO,
                           capture_output=True, text=True)
    null = subprocess.run([sys.executable, check, "--null"], input="\0".join([*good, "", *bad, ""]) + "\0",
                          cwd=REPO, capture_output=True, text=True)
    for done in (lines, null):
        assert done.returncode == 1 and "checked 2 command(s): 1 fail" in done.stderr
        assert "scripts/evaluate.py: unrecognized arguments: --image-size 32 (1 command(s)" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["d é"]  # no run folder


def test_cpu_results_trains_and_evaluates_the_four_methods_at_its_stated_settings(tmp_path):
    out = tmp_path / "cpu"
    lines = dry_run("cpu_results.sh", out)
    assert lines[0] == "plan: 4 runs (0 already evaluated, 4 to train and evaluate)"  # no GPU-hours estimate
    assert "checked 8 command(s): all pass" in "\n".join(lines)
    cmds = commands(lines)
    trains = [c for c in cmds if c[1].endswith("/main.py")]
    evals = [c for c in cmds if c[1] == "scripts/evaluate.py"]
    assert len(trains) == len(evals) == 4 and cmds[-1] == ["python3", "scripts/make_tables.py", str(out)]
    runs = set()
    for train, evaluate in zip(trains, evals):
        memory = {"train_SNCA_CE/main.py": "mb", "train_SNCA_CE_MC/main.py": "mu"}[train[1]]
        args = get_args_parser(memory).parse_args(train[2:])
        # The settings its header states: from scratch, 64 px, batch 64, lr 0.01, 8 epochs, seed 0, on the CPU.
        assert (args.pretrained, args.image_size, args.batch_size, args.lr, args.epochs, args.seed, args.device) == (
            "none", 64, 64, 0.01, 8, 0, "cpu")
        assert args.data == str(tmp_path / "datasets") and args.dataset == "RSSCN7" and args.out == str(out)
        assert args.run_name == f"RSSCN7-{args.method}-{memory}-seed0"
        assert evaluate_parser().parse_args(evaluate[2:]).target == os.path.join(str(out), args.run_name)
        runs.add((memory, args.method))
    assert runs == {("mb", "snca-ce"), ("mu", "snca-ce"), ("mb", "d-cnn"), ("mb", "triplet")}
    assert not out.exists()
