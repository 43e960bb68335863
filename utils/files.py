"""File writing shared by every layer (datasets, checkpoints, logs, submissions)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

TMP_SUFFIX = ".tmp"  # what a write in progress is called; left behind only by a killed process


class WriteError(OSError):
    """A file could not be written (read-only directory, full disk, ...): the message names it and the free space."""


class _Recorded:
    """A file whose write errors are remembered: torch.save reports them as a RuntimeError of its own."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def free_space(path: Path) -> str:
    """The free space of the file system holding `path` (or its nearest existing parent), for error messages."""
    for folder in (path, *path.parents):
        if folder.exists():
            return f"{shutil.disk_usage(folder).free / 2 ** 20:,.0f} MiB free there"
    return "free space unknown"


def make_dir(path: str | os.PathLike) -> None:
    """os.makedirs(exist_ok=True), failing as a WriteError that names the path and the free space."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{path}: cannot create the directory ({e.strerror or e}); {free_space(Path(path))}") from e


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file and rename, so readers never see a half-written file. A failed write
    removes its temporary file and raises WriteError naming the path and the free space."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    recorded = None
    try:
        with open(tmp, "wb") as f:
            recorded = _Recorded(f)
            write(recorded)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        error = e if isinstance(e, OSError) else recorded and recorded.error
        if not error:
            raise
        raise WriteError(f"{path}: cannot write it ({error.strerror or error}); {free_space(path.parent)}") from e


def remove_leftovers(directory: str | os.PathLike) -> list[str]:
    """Delete the *.tmp files and directories a killed write or build left in `directory`; returns their names."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted(p for p in directory.iterdir() if p.name.endswith(TMP_SUFFIX))
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return [p.name for p in found]
