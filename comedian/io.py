"""Writing outputs so that an interrupted or failed job leaves nothing that passes for complete."""

from __future__ import annotations

import contextlib
import os
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
