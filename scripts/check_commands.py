"""Check command lines of the project's tools before any of them runs: each line of standard input is one command,
``python3 SCRIPT FLAGS...`` quoted as the shell quotes it, and is run here as ``SCRIPT FLAGS... --check-args``
(the tool's own parser and checks, which write nothing), all in this one process.

    printf '%s\\n' "python3 train_SNCA_CE/main.py --data /datasets --dataset AID" | python3 scripts/check_commands.py
    printf '%s\\0' python3 scripts/evaluate.py runs/x ''  | python3 scripts/check_commands.py --null

With ``--null`` each argument ends in a NUL byte and each command in an empty argument (any path, as it is).

The paper scripts (scripts/paper_common.sh) check every training and evaluation command of their plan so, before
the first training. Prints each distinct error once, with the number of commands it stops and one of them;
exit status 1 when a command fails its check, else 0.
"""
import contextlib
import io
import os
import runpy
import shlex
import sys

MAX_SHOWN = 5  # distinct errors printed; the rest are counted


def check(argv):
    """The error line of ``argv`` (``python3 SCRIPT FLAGS...``) under ``--check-args``, or None when it passes."""
    script = argv[1] if len(argv) > 1 else ""
    if not script.endswith(".py") or not os.path.isfile(script):
        return f"{script or 'the command'}: no such script"
    saved, err = sys.argv, io.StringIO()
    sys.argv = [script, *argv[2:], "--check-args"]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
        if isinstance(stop.code, str):
            err.write(stop.code)
    finally:
        sys.argv = saved
    if not code:
        return None
    lines = err.getvalue().strip().splitlines()
    return lines[-1].removeprefix("error: ") if lines else f"exit status {code}"


def read_commands(null):
    """The commands of standard input: shell-quoted lines, or (``null``) NUL-terminated arguments, each command
    ended by an empty one."""
    if not null:
        return [shlex.split(line) for line in sys.stdin if line.strip()]
    commands, command = [], []
    for field in sys.stdin.buffer.read().split(b"\0"):
        if field:
            command.append(os.fsdecode(field))
        elif command:
            commands.append(command)
            command = []
    return commands


def main():
    commands = read_commands("--null" in sys.argv[1:])
    failed = {}
    for argv in commands:
        error = check(argv)
        if error is not None:
            failed.setdefault(f"{argv[1]}: {error}", []).append(argv)
    for message, argvs in list(failed.items())[:MAX_SHOWN]:
        print(f"error: {message} ({len(argvs)} command(s), e.g. {shlex.join(argvs[0][1:])[:120]})", file=sys.stderr)
    if len(failed) > MAX_SHOWN:
        print(f"error: and {len(failed) - MAX_SHOWN} more distinct errors", file=sys.stderr)
    bad = sum(map(len, failed.values()))
    print(f"checked {len(commands)} command(s): " + (f"{bad} fail" if bad else "all pass"),
          file=sys.stderr if bad else sys.stdout)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
