"""The one exception type for bad user input (paths, flags, files).

Entry points print it as a single line (``error: ...``) instead of a traceback.
"""


class InputError(Exception):
    """A problem with what the user gave us: a path, a flag, a file."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    An exception raised inside a DataLoader worker comes back with the worker's traceback in its
    message; the last line holds the original message.
    """
    text = str(error).strip()
    last = text.splitlines()[-1] if text else type(error).__name__
    return last.split(f"{InputError.__name__}: ", 1)[-1]
