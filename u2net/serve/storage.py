"""Files under the storage root of ``/remove-background/path``, reached through directory descriptors.

A path checked first and used later can be redirected in between (a folder swapped for a symbolic
link), so nothing here checks a path by name and then opens it: every component is opened relative
to the folder before it (``dir_fd``), with ``O_NOFOLLOW``, and a symbolic link anywhere is refused.
The output is written through the descriptor of its folder, held from the check to the rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from .errors import ApiError, mb, os_reason

NAME_MAX = 255  # bytes in one file name (ext4, XFS, btrfs, tmpfs ...)
# getattr: the module imports everywhere; the endpoint is refused where these flags are missing.
NOFOLLOW, CLOEXEC = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_CLOEXEC", 0)
OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | CLOEXEC
# O_NONBLOCK: opening a FIFO someone left under the root must not hang the worker (it is refused next).
OPEN_FILE = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | NOFOLLOW | CLOEXEC
OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
FileId = tuple[int, int]  # (st_dev, st_ino)


def supported() -> bool:
    """Whether this platform can open files relative to a folder without following links."""
    return hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd


def split_path(relative: str, what: str) -> tuple[str, ...]:
    """The components of a client's path relative to the root, checked as text (no file system
    access): 400 for an absolute or drive path, ``..``, a NUL, no name at all or a name too long."""
    shown = {"field": what, "path": relative}
    if "\x00" in relative:
        raise ApiError(400, f"{what}: invalid path", shown)
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or relative.startswith("\\"):
        raise ApiError(400, f"{what}: absolute paths are not allowed; give a path relative to the storage root", shown)
    if PureWindowsPath(relative).drive:
        raise ApiError(400, f"{what}: drive paths are not allowed; give a path relative to the storage root", shown)
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if ".." in parts:
        raise ApiError(400, f"{what}: '..' is not allowed in paths", shown)
    if not parts:
        raise ApiError(400, f"{what}: the path names no file", shown)
    if any(len(os.fsencode(part)) > NAME_MAX for part in parts):
        raise ApiError(400, f"{what}: a name in the path is longer than {NAME_MAX} bytes", {**shown, "max": NAME_MAX})
    return parts


def read_file(root: Path, parts: tuple[str, ...], what: str, max_bytes: int) -> tuple[bytes, FileId]:
    """The bytes of the regular file at ``parts`` under ``root`` and its identity; 404 if missing, 400
    for a link, a folder or anything but a plain file, 413 beyond ``max_bytes``."""
    folder, missing = walk(root, parts[:-1], what)
    try:
        if missing:
            raise FileNotFoundError
        fd = _open(parts[-1], OPEN_FILE, folder, what)
    except FileNotFoundError:
        raise ApiError(404, f"{what}: no such file under the storage root", {"path": "/".join(parts)}) from None
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a folder, FIFO, socket or device
        os.close(fd)
        raise ApiError(400, f"{what}: not a file", {"path": "/".join(parts)})
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = max(info.st_size, len(data))
        raise ApiError(
            413,
            f"{what}: the file is too large: {mb(size)}; the limit is {mb(max_bytes)}",
            {"size_bytes": size, "limit_bytes": max_bytes},
        )
    return data, (info.st_dev, info.st_ino)


def walk(root: Path, parts: tuple[str, ...] | list[str], what: str) -> tuple[int, list[str]]:
    """A descriptor of the deepest existing folder along ``parts`` (links refused), and the names
    below it that do not exist yet. The caller closes the descriptor."""
    fd = os.open(root, OPEN_DIR)
    for index, part in enumerate(parts):
        try:
            child = _open(part, OPEN_DIR, fd, what)
        except FileNotFoundError:
            return fd, list(parts[index:])
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd = child
    return fd, []


def _open(name: str, flags: int, dir_fd: int, what: str) -> int:
    """``os.open`` relative to ``dir_fd``; a missing name raises ``FileNotFoundError``, any other
    failure is a 400 that names no server path."""
    try:
        return os.open(name, flags, 0o666, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # Refused already; lstat only names the reason (a link to a folder opened with O_DIRECTORY is ENOTDIR).
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and _is_link(name, dir_fd):
            raise ApiError(
                400, f"{what}: '{name}' is a symbolic link; links are not followed under the storage root"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise ApiError(400, f"{what}: a parent of the path is a file") from None
        raise ApiError(400, f"{what}: cannot open the path ({os_reason(exc)})") from None


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class OutputFile:
    """The place of an output file: the deepest existing folder of its path is opened (no links
    followed) and held until :meth:`close`, so that whatever happens to the path by name meanwhile,
    :meth:`write` creates the missing folders and the file under that very folder."""

    def __init__(self, root: Path, parts: tuple[str, ...], what: str, source: FileId | None = None) -> None:
        self.name = parts[-1]
        self.what = what
        self.source = source
        self.fd, self.missing = walk(root, parts[:-1], what)
        try:
            if not self.missing:
                self._check(self.fd)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, folder: int) -> None:
        """400 if the name is a link, a folder or the source itself (a missing name is fine)."""
        try:
            info = os.stat(self.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise ApiError(
                400, f"{self.what}: '{self.name}' is a symbolic link; links under the storage root are not replaced"
            )
        if stat.S_ISDIR(info.st_mode):
            raise ApiError(400, f"{self.what}: is a folder")
        if (info.st_dev, info.st_ino) == self.source:
            raise ApiError(400, f"{self.what}: the output would overwrite the source image")

    def write(self, save: Callable[[IO[bytes]], None]) -> int:
        """``save(file)`` into a temporary file in the folder, synced, then renamed over the name: a
        reader never sees half a file and a failure leaves an old one as it was (and removes the
        folders made for it). Returns the file's size."""
        created: list[tuple[int, str]] = []
        with contextlib.ExitStack() as stack:
            try:
                folder = self.fd
                for part in self.missing:  # made and entered one by one, under the held folder
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=folder)
                        created.append((folder, part))
                    folder = _open(part, OPEN_DIR, folder, self.what)
                    stack.callback(os.close, folder)
                self._check(folder)
                return _replace(folder, self.name, save)
            except BaseException:
                for parent, name in reversed(created):
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=parent)
                raise


def _replace(folder: int, name: str, save: Callable[[IO[bytes]], None]) -> int:
    temp = f".u2net-{secrets.token_hex(8)}.tmp"  # hidden, unique, and short whatever the name
    fd = os.open(temp, OPEN_NEW, 0o666, dir_fd=folder)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces a link, never follows one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise
    return size
