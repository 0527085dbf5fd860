"""``.npy`` files written around the page cache (``O_DIRECT``), appended block by block.

    with NpyWriter(path, (N, K), np.int32) as w:   # rows appended in order, N in all
        for block in blocks:
            w.write(block)                          # (n, K)
    save(path, array)                               # one array, as np.save writes it

Buffered writes (``np.save``) copy every byte into page-cache pages the kernel must first allocate; on a VM
whose idle memory goes back to the host, that was most of the prep's kernel time (docs/performance.md,
section 1). Here the bytes go from one reused, page-aligned staging buffer straight to the device: the
header is padded to :data:`ALIGN` bytes (a valid ``.npy``: ``np.load`` reads its length), the data is
written in whole aligned blocks and the file is cut to its exact size at the end. A file system without
``O_DIRECT`` (tmpfs, some network mounts) gets the same bytes through ordinary writes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: a multiple of the device's logical block size
STAGE = 8 << 20  # bytes of the staging buffer (a multiple of ALIGN)
# smaller arrays go through the page cache (np.save): for them the direct writes' latency costs more than the
# pages (a 3,000-event prep: 45 -> 93 ms with every array direct)
DIRECT_MIN = 32 << 20


def writes_direct(nbytes: int) -> bool:
    """Whether an array of ``nbytes`` is written with :class:`NpyWriter` (else ``np.save``)."""
    return nbytes >= DIRECT_MIN


def npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    """A format-1.0 ``.npy`` header of exactly :data:`ALIGN` bytes (spaces before its final newline)."""
    meta = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    text = repr(meta).encode("latin1")
    prefix = b"\x93NUMPY\x01\x00"
    body = ALIGN - len(prefix) - 2  # header text + padding + "\n", after the 2-byte length
    if len(text) + 1 > body:
        raise ValueError(f"npy header of shape {shape} longer than {ALIGN} bytes")
    return prefix + body.to_bytes(2, "little") + text + b" " * (body - len(text) - 1) + b"\n"


def open_direct(path: Path) -> tuple[int, bool]:
    """``path`` opened for writing (created, truncated): ``(fd, direct)``, ``O_DIRECT`` where supported."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as err:
            if err.errno != errno.EINVAL:  # a file system without O_DIRECT; any other error is the caller's
                raise
    return os.open(path, flags, 0o644), False


class NpyWriter:
    """The ``.npy`` file ``path`` of ``shape`` and ``dtype``, filled by :meth:`write` with rows in order.

    Two staging buffers: while one is written to the device (a background thread; ``os.write`` releases
    the GIL), the caller fills the other, so the prep computes while the disk writes.
    """

    def __init__(self, path: str | Path, shape: tuple, dtype) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self.rows = 0
        self.fd, self.direct = open_direct(self.path)
        self.bufs = [mmap.mmap(-1, STAGE) for _ in range(2)]  # page-aligned, reused for every block
        self.pending: list[Future | None] = [None, None]
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="npy-writer")
        self.current, self.fill = 0, ALIGN  # the buffer being filled, and its bytes staged
        self.stage[:ALIGN] = np.frombuffer(npy_header(self.shape, self.dtype), dtype=np.uint8)

    @property
    def stage(self) -> np.ndarray:
        return np.frombuffer(self.bufs[self.current], dtype=np.uint8)

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` ``(n, *shape[1:])`` (cast to the file's dtype)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path.name}: block {block.shape} does not fit rows {self.rows}.. of {self.shape}")
        data = block.reshape(-1).view(np.uint8)
        self.rows += len(block)
        while len(data):
            n = min(len(data), STAGE - self.fill)
            self.stage[self.fill:self.fill + n] = data[:n]
            self.fill, data = self.fill + n, data[n:]
            if self.fill == STAGE:
                self._flush(STAGE)

    def _flush(self, length: int) -> None:
        """Hand the current buffer's first ``length`` bytes to the writer thread; fill the other one next."""
        self.pending[self.current] = self.pool.submit(write_all, self.fd, self.bufs[self.current], length)
        self.current, self.fill = 1 - self.current, 0
        self._wait(self.current)

    def _wait(self, i: int) -> None:
        if self.pending[i] is not None:
            future, self.pending[i] = self.pending[i], None
            future.result()  # re-raises the write's OSError (a full disk) here

    def close(self) -> None:
        """Write what is staged (padded to :data:`ALIGN`, then cut off) and close; every row must be written."""
        if self.fd < 0:
            return
        try:
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path.name}: {self.rows} of {self.shape[0]} rows written")
            tail, pad = self.fill, -self.fill % ALIGN
            self.stage[tail:tail + pad] = 0
            self._flush(tail + pad)
            self._wait(1 - self.current)
            size = os.lseek(self.fd, 0, os.SEEK_CUR) - pad
            os.ftruncate(self.fd, size)
        finally:
            self._release()

    def _release(self) -> None:
        self.pool.shutdown(wait=True)
        os.close(self.fd)
        self.fd = -1
        for buf in self.bufs:
            buf.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.close()
        elif self.fd >= 0:  # failed: close without the row check, the caller removes the file
            self._release()


def write_all(fd: int, buf: mmap.mmap, length: int) -> None:
    """``buf[:length]`` written at ``fd``'s position (``os.write`` may write less than asked). A file that took
    ``O_DIRECT`` at open but refuses its writes (``EINVAL``: a device needing a larger alignment) is switched
    to ordinary writes."""
    with memoryview(buf) as view:
        done = 0
        while done < length:
            try:
                done += os.write(fd, view[done:length])
            except OSError as err:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                if err.errno != errno.EINVAL or not flags & getattr(os, "O_DIRECT", 0):
                    raise
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)


def save(path: str | Path, array: np.ndarray) -> None:
    """``array`` as the ``.npy`` file ``path``: from :data:`DIRECT_MIN` bytes with :class:`NpyWriter` (what
    ``np.save`` writes, bar the header's padding), below it with ``np.save``."""
    array = np.asarray(array)
    if not array.ndim or not writes_direct(array.nbytes):
        np.save(path, array)
        return
    with NpyWriter(path, array.shape, array.dtype) as w:
        step = max(1, STAGE // max(1, w.row_bytes))
        for start in range(0, len(array), step):
            w.write(array[start:start + step])


class OutputArrays:
    """The ``.npy`` arrays of a dataset being written into the folder ``tmp``, each as soon as it is ready.

    :meth:`writer` opens a file to append to (an ``Allocator`` of :func:`data_prep.transform.transform`: the
    histories); :meth:`save` queues whole arrays for a background thread, so they reach the disk while the
    prep computes the next ones; :meth:`finish` waits for all of it and returns the names written.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = Path(tmp)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="npy-save")
        self.writers: dict[str, NpyWriter] = {}
        self.saves: dict[str, Future] = {}

    def writer(self, name: str, shape: tuple, dtype) -> NpyWriter | np.ndarray:
        """The file's writer; an array to fill (saved by :meth:`save`) below :data:`DIRECT_MIN` bytes."""
        if not writes_direct(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))):
            return np.empty(shape, dtype=dtype)
        self.writers[name] = NpyWriter(self.tmp / f"{name}.npy", shape, dtype)
        return self.writers[name]

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        """Queue each array of ``arrays`` not written yet."""
        for name, arr in arrays.items():
            if name not in self.writers and name not in self.saves:
                self.saves[name] = self.pool.submit(save, self.tmp / f"{name}.npy", arr)

    def finish(self) -> set[str]:
        for w in self.writers.values():
            w.close()
        for future in self.saves.values():
            future.result()  # re-raises a write's OSError (a full disk)
        self.pool.shutdown()
        return set(self.writers) | set(self.saves)

    def __enter__(self) -> OutputArrays:
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is not None:  # failed: stop writing (the caller removes the folder)
            self.pool.shutdown(wait=True, cancel_futures=True)
            for w in self.writers.values():
                w.__exit__(kind, err, tb)
