"""Atomic writes: the new file or the old one, never a torn one, with ordinary permissions."""

import os

import pytest

from aptune import fileio
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


def _write(path, data):
    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data)

    return write_atomically(path, write)


def test_written_files_get_the_umask_mode_not_the_temporary_files_0600(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_umask_cache", [0o022])  # the umask, as if read on first use
    path = _write(tmp_path / "sub" / "a.bin", b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_replaced_file_keeps_the_mode_its_owner_gave_it(tmp_path):
    path = _write(tmp_path / "a.bin", b"old")
    os.chmod(path, 0o600)
    _write(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600


def test_the_umask_is_read_on_first_use_and_put_back(monkeypatch):
    monkeypatch.setattr(fileio, "_umask_cache", [])
    previous = os.umask(0o027)
    try:
        assert fileio._process_umask() == 0o027
        os.umask(0o077)  # read once: a later change is not seen, as before
        assert fileio._process_umask() == 0o027
        assert os.umask(0o027) == 0o077  # reading it left the process umask as it was
    finally:
        os.umask(previous)
