"""data_prep.npy_writer: .npy files written around the page cache, block by block, read back by NumPy."""

from __future__ import annotations

import errno
import fcntl
import os

import numpy as np
import pytest

from data_prep import npy_writer
from data_prep.npy_writer import ALIGN, NpyWriter, OutputArrays, save


@pytest.fixture
def small_stage(monkeypatch):
    """Staging buffers of two aligned blocks, so a few KiB cross every buffer boundary; every array direct."""
    monkeypatch.setattr(npy_writer, "STAGE", 2 * ALIGN)
    monkeypatch.setattr(npy_writer, "DIRECT_MIN", 0)


@pytest.mark.parametrize("array", [
    np.arange(10), np.zeros((0, 5), dtype=np.int8), np.array([True, False]), np.array(3.5),
    np.arange(3 * 2048, dtype=np.int32).reshape(-1, 3),      # data ends on a staging-buffer boundary (with the header)
    np.random.default_rng(0).random((1001, 7)).astype(np.float32),
    np.random.default_rng(1).integers(-9, 9, size=(777, 20, 2)).astype(np.int8)])
def test_save_round_trips_through_numpy(array, tmp_path, small_stage):
    save(tmp_path / "a.npy", array)
    for back in (np.load(tmp_path / "a.npy"), np.load(tmp_path / "a.npy", mmap_mode="r")):
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    if array.ndim:  # the header is padded to ALIGN bytes, the file cut to its exact size
        assert os.path.getsize(tmp_path / "a.npy") == ALIGN + array.nbytes
        assert np.load(tmp_path / "a.npy", mmap_mode="r").offset == ALIGN


def test_small_arrays_are_what_np_save_writes(tmp_path):
    array = np.arange(1000, dtype=np.float32).reshape(-1, 10)
    save(tmp_path / "s.npy", array)
    np.save(tmp_path / "ref.npy", array)
    assert (tmp_path / "s.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_blocks_of_any_size_append_in_order(tmp_path, small_stage):
    rows = np.random.default_rng(2).integers(0, 1000, size=(500, 3)).astype(np.int64)
    with NpyWriter(tmp_path / "b.npy", rows.shape, np.int64) as w:
        for start, stop in [(0, 1), (1, 170), (170, 171), (171, 500)]:
            w.write(rows[start:stop].astype(np.int32))  # cast to the file's dtype
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), rows)


def test_wrong_row_counts_are_refused(tmp_path):
    w = NpyWriter(tmp_path / "c.npy", (4, 2), np.float32)
    with pytest.raises(ValueError, match=r"block \(3, 3\) does not fit"):
        w.write(np.zeros((3, 3)))
    w.write(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="does not fit rows 3.. of"):
        w.write(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="3 of 4 rows written"):
        w.close()


def test_a_file_system_without_o_direct_gets_the_same_bytes(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, mode=0o777):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    array = np.arange(5000, dtype=np.int16).reshape(-1, 5)
    with NpyWriter(tmp_path / "d.npy", array.shape, array.dtype) as w:
        w.write(array)
        assert not w.direct
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), array)


def test_a_file_refusing_o_direct_writes_is_written_buffered(tmp_path, monkeypatch, small_stage):
    real_write = os.write

    def refusing(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refusing)
    array = np.arange(10_000, dtype=np.int64).reshape(-1, 4)
    save(tmp_path / "e.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), array)


def test_a_failed_background_write_surfaces_at_finish(tmp_path, monkeypatch, small_stage):
    def full(fd, buf, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(npy_writer, "write_all", full)
    with pytest.raises(OSError, match="No space left"):
        with OutputArrays(tmp_path) as out:
            out.save({"a": np.arange(10)})
            out.finish()
