"""The paper scripts print their commands in dry-run mode, and those commands parse."""
import os
import shlex
import subprocess

from lib.args import get_args_parser

from conftest import REPO


def test_train_paper_dry_run_lists_both_methods_on_both_datasets():
    env = dict(os.environ, DATA="/datasets", DRY_RUN="1", SEED="3")
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_paper.sh")], env=env, capture_output=True,
                          text=True, check=True)
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 4
    seen = set()
    for command in commands:
        memory = "mb" if command[1] == "train_SNCA_CE/main.py" else "mu"
        args = get_args_parser(memory).parse_args(command[2:])
        assert args.data == "/datasets" and args.seed == 3 and args.imgEXT == "jpg" and args.epochs == 130
        seen.add((memory, args.dataset))
    assert seen == {(m, d) for m in ("mb", "mu") for d in ("AID", "NWPU-RESISC45")}
