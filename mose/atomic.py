"""Output files written whole or not at all: a temp name unique to this process beside the target, then one rename.

    write_text("run/report.md", text, "report")
    write_file("run/predictions.parquet", "predictions", frame.write_parquet)   # any writer taking a file object
    with atomic_path("model.onnx", "exported model") as tmp:   # writers that need a path
        ...

A failed write raises :class:`~data_prep.errors.WriteError` ``cannot write <path> (<what>): <reason>``, which the
console scripts print as ``error: ...`` with exit status 2 (:func:`data_prep.errors.cli_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from data_prep.errors import WriteError


def temp_name(path: str | Path) -> Path:
    """``<dir>/.<name>.tmp-<pid>-<random>``: no two processes (or two writes in one) share it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; once the body has written it, it is synced and renamed over ``path``.

    On any error the temp file is removed, so ``path`` is the previous file or absent, never a partial one;
    an ``OSError`` comes out as :class:`WriteError` naming ``path`` and ``what`` was being written.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        _make_folder(path.parent)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # a full disk that only shows at write-back fails here, before the rename
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"cannot write {path} ({what}): {err.strerror or err}") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # left only when the body or the sync failed


def _make_folder(folder: Path) -> None:
    """``mkdir -p folder``; a file in the way is reported as such (``mkdir`` says "File exists")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next(p for p in (folder, *folder.parents) if p.exists())
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None


def write_text(path: str | Path, text: str, what: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_file(path: str | Path, what: str, dump: Callable[[BinaryIO], object]) -> Path:
    """``dump(buffer)`` into memory, then the bytes to ``path`` atomically (see :func:`atomic_path`).

    Writers such as Polars and ``torch.save`` report a full disk as their own error types; written from
    memory, a failed write is always an ``OSError`` (so a :class:`WriteError`), never a partial file.
    """
    buffer = io.BytesIO()
    dump(buffer)
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)
