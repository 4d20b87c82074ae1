"""Files on shared storage: written atomically, with the modes the process umask asks for.

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 / 0700 entries (they are meant to be private); a
file written there and renamed into place keeps that mode, so collaborators on shared storage
could not read a run's outputs. Everything camvid renames into place goes through these helpers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["current_umask", "file_mode", "dir_mode", "share_like_umask", "atomic_write_text", "atomic_write_bytes",
           "fsync_dir"]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere: set and restore at once (not thread-safe, but only ever a few microseconds).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (0644 under the usual umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new directory (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def share_like_umask(path: str | Path) -> Path:
    """chmod a ``mkstemp`` file or ``mkdtemp`` directory to what a plain create would have given."""
    path = Path(path)
    os.chmod(path, dir_mode() if path.is_dir() else file_mode())
    return path


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    The temporary file sits beside the target (same file system, so the rename is atomic) and gets
    the umask's mode before it is renamed. ``durable`` also fsyncs the file and its directory, for
    markers that must not survive a power cut without what they describe.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
