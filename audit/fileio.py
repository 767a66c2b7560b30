"""Crash-safe files: atomic writes and an exclusive lock file.

* :func:`atomic_write` writes through a temporary file in the target's folder, ``fsync`` s it and moves it
  into place with :func:`os.replace`, so a reader sees the old file or the new one, never a truncated one
  (a full disk, a kill, a power cut).
* :class:`FolderLock` is an ``O_CREAT | O_EXCL`` lock file holding the owner's pid, host and start time.
  A second process is refused with a message naming the owner; a lock left by a dead process on this host
  is detected and taken over (under a short-lived guard file, so two processes never both break it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from audit.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["FolderLock", "LockedError", "atomic_write", "atomic_write_text", "pid_alive"]

#: A guard file older than this (seconds) was left by a process killed while breaking a stale lock.
GUARD_STALE_S = 60.0


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file that then replaces ``path``.

    Parameters
    ----------
    path : path
        Target file; its folder must exist.
    write : callable
        Called once with an open handle (text, UTF-8, ``newline=""``; or binary when ``binary``).
    binary : bool
        Open the temporary file in binary mode.

    Raises
    ------
    OSError
        When writing fails (e.g. ``ENOSPC``); the message names the target, the temporary file is removed
        and an existing ``path`` is left untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = atomic_write(target, lambda fh: fh.write("a,b\\n"))
    >>> target.read_text()
    'a,b\\n'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockedError(UserError, RuntimeError):
    """The folder is locked by another (live, or not checkable) process."""


class FolderLock:
    """An exclusive lock file (``O_EXCL``) with the owner's pid, host and start time.

    Parameters
    ----------
    path : path
        The lock file; its folder must exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> lock_path = pathlib.Path(tempfile.mkdtemp()) / ".lock"
    >>> with FolderLock(lock_path):
    ...     lock_path.is_file()
    True
    >>> lock_path.exists()
    False
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._owner: dict[str, Any] | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over a stale one; raise :class:`LockedError` if another process holds it."""
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(3):
            if self._create(owner):
                self._owner = owner
                return
            holder = self._read()
            if not self._stale(holder):
                raise LockedError(self._describe(holder))
            self._break(holder)
        raise LockedError(f"{self.path}: could not take the lock (it changed hands repeatedly); try again")

    def release(self) -> None:
        """Remove the lock file if this process still owns it."""
        if self._owner is not None and self._read() == self._owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._owner = None

    def _create(self, owner: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(owner))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any] | None) -> bool:
        if holder == {}:  # vanished between our attempt and the read: just retry
            return True
        if not holder or holder.get("host") != socket.gethostname():
            return False  # unreadable, or another host: its pid cannot be checked from here
        pid = holder.get("pid")
        return isinstance(pid, int) and not pid_alive(pid)

    def _describe(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            return f"{self.path} exists but cannot be read; if no audit is running in this folder, delete it"
        return (
            f"run folder {self.path.parent} is in use by process {holder.get('pid')} on host {holder.get('host')} "
            f"(since {holder.get('started')}); wait for it, or if that run is gone delete {self.path}"
        )

    def _break(self, holder: dict[str, Any]) -> None:
        """Remove a stale lock under a guard file, re-checking that it is still the same stale lock."""
        if holder == {}:
            return
        guard = self.path.with_name(self.path.name + ".break")
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                guard.unlink()
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            time.sleep(0.05)  # someone else is breaking it; retry the create
            return
        os.close(fd)
        try:
            if self._read() == holder:
                logger.warning("taking over the lock of process %s on %s (no longer running): %s", holder.get("pid"), holder.get("host"), self.path)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()

