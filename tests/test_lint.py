"""The code passes the project's one linter (settings in pyproject.toml)."""
import subprocess
import sys

from conftest import REPO


def test_ruff():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", REPO], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
