"""Files on disk, written safely and read as untrusted input.

Writing: every file goes to a temporary name that carries this package's mark and the writer's process id
(``.<name>.classim-<pid>.tmp``), is flushed to disk and renamed; an epoch's folder is built under a marked name
(``.<name>.classim-<pid>.partial``) and renamed whole. So a reader never sees half a file or half an epoch, and the
clean-up after a crash (:func:`remove_leftovers`) can tell this package's leftovers from a user's files and from a
live process's work: it removes only marked names of processes that no longer run.

A run folder is held by one process at a time: :class:`RunLock` (an ``flock`` on ``.classim.lock``, released by the
kernel when the process dies, so a crash leaves no stale lock).

Reading: :func:`read_regular`, :func:`read_json` and :func:`read_npy` open regular files only (no FIFO, device or
symbolic link: ``O_NOFOLLOW | O_NONBLOCK``), check sizes before allocating (an ``.npy`` header must agree with the
file's size), and turn every failure into a :class:`UnsafeFile` (a ``ValueError``) with one line of text.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "LOCK_NAME",
    "RunBusy",
    "RunLock",
    "UnsafeFile",
    "atomic_write",
    "fsync_dir",
    "partial_name",
    "read_json",
    "read_npy",
    "read_regular",
    "remove_leftovers",
    "safe_dirs",
]

LOCK_NAME = ".classim.lock"
#: The most a JSON file of a run may hold (a summary at 100,000 classes is a few MB).
JSON_MAX_BYTES = 512 * 2**20
_TMP = re.compile(r"^\..+\.classim-(\d+)\.tmp$")
_PARTIAL = re.compile(r"^\..+\.classim-(\d+)\.partial$")


class UnsafeFile(ValueError):  # noqa: N818 (reads as what it is: a file that is unsafe)
    """A file of a run that cannot be read safely: not a regular file, too large, or inconsistent."""


class RunBusy(RuntimeError):  # noqa: N818 (a state, not an error of the caller)
    """Another live process holds the run folder."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.classim-{os.getpid()}.tmp")


def partial_name(path: Path) -> Path:
    """The marked name an epoch folder is built under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.classim-{os.getpid()}.partial")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (bytes, or a function that writes into the file) to ``path`` and flush it to disk."""
    with open(path, "wb") as fh:
        if isinstance(data, bytes):
            fh.write(data)
        else:
            data(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: Path, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a marked temporary name, flushed to disk, then renamed.

    A reader never sees half a file. On an error (a full disk) the temporary file is removed and the error raised;
    a crash leaves at most the marked temporary file, which :func:`remove_leftovers` removes.
    """
    tmp = _tmp_name(path)
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: the caller holds the run's lock, so no thread of ours is writing there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def safe_dirs(folders: Iterable[Path]) -> list[Path]:
    """The folders that exist and are real folders (not symbolic links)."""
    return [f for f in folders if f.is_dir() and not f.is_symlink()]


def remove_leftovers(folders: Iterable[Path]) -> list[Path]:
    """Remove this package's temporary files and unfinished epoch folders in ``folders`` (not below), and return them.

    Only marked names (``.x.classim-<pid>.tmp``, ``.x.classim-<pid>.partial``) whose process no longer runs are
    removed: a user's files, other names and a live process's work are never touched.
    """
    removed = []
    for folder in safe_dirs(folders):
        for child in folder.iterdir():
            match = _TMP.match(child.name) or _PARTIAL.match(child.name)
            if match is None or _alive(int(match.group(1))):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


class RunLock:
    """An exclusive hold on a run folder by this process: ``flock`` on ``<folder>/.classim.lock``.

    The kernel releases it when the process ends, however it ends. Where ``fcntl`` is missing (Windows) the lock file
    is written but nothing is locked.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (creating the folder), or raise.

        Raises:
            RunBusy: if another live process (or another object of this one) holds it.
            OSError: if the folder or the lock file cannot be created.
        """
        if self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunBusy(f"{path} is not a regular file")
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    raise RunBusy(_holder(fd)) from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let the folder go (the lock file stays: it is this package's own, and tells the last holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {int(info['pid'])} on {str(info['host'])[:64]}, since {str(info['since'])[:32]}"
    except Exception:
        return "another process"


# ----------------------------------------------------------------------------------------------- reading


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (never a FIFO, a device or a symbolic link).

    Raises:
        FileNotFoundError: if it does not exist.
        UnsafeFile: if it is not a regular file, is larger than ``max_bytes``, or cannot be read.
    """
    fd = _open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(max_bytes + 1)


def _open_regular(path: Path, max_bytes: int) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFile(f"{path.name} is a symbolic link; a run's files must be regular files") from None
        raise UnsafeFile(f"{path.name} cannot be read: {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path.name} is not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise UnsafeFile(f"{path.name} holds {info.st_size} bytes, more than the {max_bytes} allowed")
    return fd


def read_json(path: Path, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """A JSON file, read as untrusted input (see :func:`read_regular`; nesting too deep is an error too)."""
    data = read_regular(path, max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise UnsafeFile(f"{path.name} is nested too deeply to be a file of this package") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFile(f"{path.name} is not valid JSON ({err})") from None


def read_npy(path: Path, max_bytes: int = 2**40) -> np.ndarray:
    """An ``.npy`` file of numbers, read as untrusted input: its header must agree with the file's size.

    Raises:
        FileNotFoundError: if it does not exist.
        UnsafeFile: if it is not a regular file, its header is damaged, its dtype is not numeric, or its size does
            not match its header (checked before any allocation).
    """
    fd = _open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unknown .npy version {version}")
        except Exception as err:  # numpy's header parser: ValueError mostly, but any damage must read as one
            raise UnsafeFile(f"{path.name} is not a valid .npy file ({type(err).__name__}: {err})") from None
        if dtype.hasobject or dtype.kind not in "biuf":
            raise UnsafeFile(f"{path.name} holds {dtype}, not numbers")
        count = int(np.prod(shape, dtype=np.float64)) if shape else 1
        expected = fh.tell() + count * dtype.itemsize
        if expected != size:
            raise UnsafeFile(
                f"{path.name} claims a {dtype} array of shape {tuple(shape)} ({expected} bytes) but holds {size} bytes"
            )
        array = np.empty(count, dtype=dtype)
        got = fh.readinto(array.data.cast("B")) if count else 0
    if got != count * dtype.itemsize:
        raise UnsafeFile(f"{path.name} ended early: {got} of {count * dtype.itemsize} bytes")
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
