"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one.

Write to a temporary file in the same folder, fsync it, rename it over the target,
fsync the folder.  Every checkpoint, adapter and merged model goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then move the finished file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _give_ordinary_mode(tmp, path)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _give_ordinary_mode(tmp: str, path: Path) -> None:
    """mkstemp makes a private (0600) file: give it the target's mode, or what open() would."""
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
    except OSError:
        pass  # file systems without POSIX modes: the file is still written


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_safetensors_atomically(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
