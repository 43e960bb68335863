"""How a command ends on bad input. The code below the entry points raises FileNotFoundError or ValueError whose
message names the file, record or key and what is wrong (WriteError: a full disk or an unwritable directory); every
command-line entry point turns these into one line `error: <message>` on stderr and exit status 1, never a
traceback."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from utils.files import WriteError

BAD_INPUT = (FileNotFoundError, ValueError, WriteError)


@contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Bad input raised in the block ends the program with `error: ...` and status 1 (a SystemExit, so a test that
    calls a main() reads the line as its code)."""
    try:
        yield
    except BAD_INPUT as e:
        sys.exit(f"error: {e}")


def output_directory(value: str) -> str:
    """argparse `type=` of an option naming a directory to write into: a path that is an existing file is a usage
    error (status 2) before any work, which argparse reports with the option's name."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value}: exists and is not a directory")
    return value
