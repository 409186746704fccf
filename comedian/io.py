"""Writing outputs so that an interrupted or failed job leaves nothing that passes for complete."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comedian.errors import NoSpaceError

#: errno values of a write refused for lack of space (ENOSPC) or of quota (EDQUOT).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from or while handling) is a full disk or quota."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def no_space_message(path: Path, needed_bytes: int | None) -> str:
    """One line: the path, the bytes needed where known, the space left, and what became of the file."""
    sizes = [f"needs {_megabytes(needed_bytes)}"] if needed_bytes else []
    try:
        sizes.append(f"{_megabytes(shutil.disk_usage(path.parent).free)} free")
    except OSError:
        pass
    sizes_text = f" ({', '.join(sizes)})" if sizes else ""
    kept = "the previous file is kept" if path.exists() else "nothing was written"
    return (f"{path}: no space left / quota exceeded{sizes_text}; {kept}; free space or raise the quota, "
            "then rerun")


@contextlib.contextmanager
def atomic_path(path: str | Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name starts with ``.`` and ends with ``.partial``, in the same directory, so the
    rename is atomic on POSIX file systems and a killed job leaves only a ``.partial`` file behind,
    which the next attempt overwrites; an existing ``path`` stays as it was until the rename.

    A write that fails for lack of space or quota (ENOSPC, EDQUOT, also as the cause of another error) is a
    :class:`~comedian.errors.NoSpaceError`: one line naming ``path``, ``needed_bytes`` (the size of what
    was being written, when the caller knows it) and the space left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.unlink(missing_ok=True)
    except OSError as err:
        if is_no_space(err):
            raise NoSpaceError(no_space_message(path, needed_bytes)) from err
        raise
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_no_space(err):
            raise NoSpaceError(no_space_message(path, needed_bytes)) from err
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


class _SpaceAwareFile(io.FileIO):
    """The file HDF5 writes through (h5py's ``fileobj`` driver). After a write refused for lack of space
    or quota it discards every later write: HDF5 can then close its objects (it flushes metadata as they
    are freed) instead of failing again at each one, or crashing, and the caller gets the first error."""

    failed: BaseException | None = None

    def write(self, data: Any) -> int:
        if self.failed is not None:
            return len(memoryview(data))
        try:
            return super().write(data)
        except OSError as err:
            if err.errno in NO_SPACE_ERRNOS:
                self.failed = err
            raise


@contextlib.contextmanager
def atomic_h5(path: str | Path, needed_bytes: int | None = None) -> Iterator[Any]:
    """An ``h5py.File`` for writing on :func:`atomic_path`'s temporary file, closed before the rename; a
    full disk or quota is a :class:`NoSpaceError` like any other write (see :class:`_SpaceAwareFile`)."""
    import h5py

    with atomic_path(path, needed_bytes) as tmp, _SpaceAwareFile(tmp, "w+") as raw:
        h5 = h5py.File(raw, "w")
        try:
            yield h5
            h5.flush()
        except BaseException as err:
            h5.close()
            if raw.failed is not None and not is_no_space(err):
                raise raw.failed from err
            raise
        h5.close()
        if raw.failed is not None:
            raise raw.failed
