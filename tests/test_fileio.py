"""Atomic writes: the new file or the old one, never a torn one, with ordinary permissions."""

import os

import pytest

from aptune.fileio import write_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")

    def fails(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(target, fails)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_written_files_get_the_umask_mode_not_the_temporary_files_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "sub" / "a.bin", lambda tmp: open(tmp, "wb").write(b"new"))
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o644
