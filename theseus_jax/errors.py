"""User errors: problems the user can fix (config, data, checkpoints, the workdir).

Every package raises a subclass of `UserError` for them; the command-line entry points
turn it into one line on stderr (`prog: error: <what, where, what to do>`) and exit
status 2, while any other exception is a bug and keeps its traceback. Set
THESEUS_TRACEBACK=1 (or `--verbosity=1` for launch.py) to see a user error's traceback
too. Every command line parses its arguments with `ArgumentParser`, whose refusals are such
a line too. This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn

TRACEBACK_ENV = "THESEUS_TRACEBACK"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's input; the message names the field or file:line and the fix."""


class CheckpointError(UserError, ValueError):
    """A model checkpoint folder that cannot be read as configured."""


class MissingCheckpoint(CheckpointError, FileNotFoundError):
    """A model checkpoint folder, or a file it needs, that does not exist."""


def show_tracebacks() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def run_cli(main: Callable[[], Any], prog: str, traceback: bool = False) -> int:
    """Runs `main()`; a `UserError` prints `prog: error: message` and returns status 2.

    Returns main's integer result (0 for None). With `traceback` (or THESEUS_TRACEBACK=1)
    a user error propagates with its traceback, as a bug would.
    """
    try:
        result = main()
    except UserError as err:
        if traceback or show_tracebacks():
            raise
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return int(result or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals (a missing or unknown option, a bad value) are one line like
    every user error, `prog: error: message; see --help`, exit 2: argparse's own prints the
    usage first, a second line a reader must not have to untangle. `prog` defaults to the
    `python -m module` the user typed (argparse's default is the file's name)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if not args and "prog" not in kwargs and spec is not None:
            kwargs["prog"] = f"python -m {spec.name}"
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)}; see --help\n")
