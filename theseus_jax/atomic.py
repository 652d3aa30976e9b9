"""Atomic publishing: every file or folder a run publishes appears whole or not at all.

Content goes to a hidden temporary name beside the target (same file system), is
flushed to disk, and is renamed over the target, so a kill at any moment leaves the old
version or the new one, never half a file. A folder is swapped with two renames; a kill
between them leaves the old folder under a backup name, which the next write of the
same folder (or `recover_dir`) puts back first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

from theseus_jax import faults


def _temporary(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open()` for writing, published at `path` when the block ends without an error."""
    path = Path(path)
    tmp = _temporary(path, "tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with open_atomic(path, "w", encoding=encoding) as f:
        f.write(text)


def save_figure(figure: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """`figure.savefig(path)` through a temporary file (the format follows the suffix)."""
    path = Path(path)
    with open_atomic(path, "wb") as f:
        figure.savefig(f, format=path.suffix.lstrip(".") or None, **kwargs)


def recover_dir(target: str | os.PathLike) -> None:
    """Undoes a folder swap cut short by a kill and removes stale staging folders."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    backups = sorted(target.parent.glob(f".{target.name}.old-*"))
    if not target.exists() and backups:
        backups[-1].rename(target)
        backups = backups[:-1]
    for leftover in backups + sorted(target.parent.glob(f".{target.name}.new-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def replace_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging folder; when the block succeeds it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    staging = _temporary(target, "new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        old = _temporary(target, "old")
        if target.exists():
            target.rename(old)
        faults.point("replace_dir")  # crash tests: a kill between the two renames
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        recover_dir(target)  # an error between the renames: the old folder goes back
        raise
