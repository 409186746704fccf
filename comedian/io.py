"""Writing outputs so that an interrupted or failed job leaves nothing that passes for complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name starts with ``.`` and ends with ``.partial``, in the same directory, so the
    rename is atomic on POSIX file systems and a killed job leaves only a ``.partial`` file behind,
    which the next attempt overwrites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: str | Path, target: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``target`` (renames, same file system), replacing an existing
    folder or file; build ``tmp`` beside ``target`` under a temporary name, so that a failure before this
    call leaves no partial ``target``."""
    tmp, target = Path(tmp), Path(target)
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)
