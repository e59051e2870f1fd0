"""Writing files safely: atomic replacement, and one-line errors for paths that cannot be written.

Write to a temporary file in the same folder, fsync it, rename it over the target,
fsync the folder.  Every checkpoint, adapter, metrics file and merged model goes
through here, so a reader (or a run killed mid-write) sees the old file or the new
one, and a full disk, a read-only file system or a missing permission is an
:class:`~aptune.errors.OutputError` naming the path and the reason, never a traceback.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aptune.errors import OutputError

TEMPORARY_SUFFIX = ".tmp"


def write_atomically(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then move the finished file to ``path``."""
    path = Path(path)
    make_folder(path.parent)
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _give_ordinary_mode(tmp, path)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    except Exception as exc:
        # torch.save (RuntimeError) and safetensors (SafetensorError) wrap a failed write in their own types
        if _looks_like_a_full_disk(exc) or _disk_is_full(path.parent):
            raise output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_atomically(path, write)


def write_json_atomically(path: str | Path, value: Any) -> Path:
    """Strict JSON (NaN and infinities become null, which every parser accepts), atomically."""
    return write_text_atomically(path, json.dumps(finite_json(value), indent=2) + "\n")


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p`` with a one-line error (a file in the way, no permission, a full disk)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: cannot create this folder: a file of that name is in the way") from None
    except OSError as exc:
        raise output_error(folder, exc) from None
    if not folder.is_dir():
        raise OutputError(f"{folder}: cannot create this folder: a file of that name is in the way")
    return folder


def output_error(path: str | Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "the file system is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.ENAMETOOLONG:
        reason = "the name is too long"
    elif exc.errno == errno.ENOTDIR:
        reason = "a part of the path is a file, not a folder"
    return OutputError(f"{path}: cannot write ({reason})")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed atomic write left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if candidate.is_file():
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass  # someone else's file or a read-only folder: leaving it is harmless
    return removed


def _looks_like_a_full_disk(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no space left" in text or "enospc" in text or "file write failed" in text


def _disk_is_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20  # under 1 MiB left: the write ran out of room


def _give_ordinary_mode(tmp: str, path: Path) -> None:
    """mkstemp makes a private (0600) file: give it the target's mode, or what open() would."""
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_process_umask()
        os.chmod(tmp, mode)
    except OSError:
        pass  # file systems without POSIX modes: the file is still written


_umask_cache: list[int] = []  # filled on the first write that needs it, then read from here
_umask_lock = threading.Lock()


def _process_umask() -> int:
    """The process umask, read once, on first use (not at import: reading it means setting it)."""
    if not _umask_cache:
        with _umask_lock:  # two threads must not both set it to 0 and race to put it back
            if not _umask_cache:
                mask = os.umask(0)
                os.umask(mask)
                _umask_cache.append(mask)
    return _umask_cache[0]


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
