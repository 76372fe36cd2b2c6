"""Writing files so that nothing a user had is ever half-overwritten: temp file, then rename.

Temporary files are named ``.<name>.<8 random characters>.u2net.tmp`` beside their target. One left
behind by a killed process (``kill -9``, power loss) is removed by a later write to the same folder
once it is :data:`STALE_TEMP_AGE_S` old (by modification time): only regular files (never links or
folders) with exactly that naming, only in the folder being written to, each folder looked at no more
than once every :data:`TEMP_RESCAN_S` per process.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".u2net.tmp"
# mkstemp's random part is 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"\..*\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX), re.DOTALL)
# A write in progress modifies its file far more often than this (downloads time out after 60 s of silence).
STALE_TEMP_AGE_S = 30 * 60
TEMP_RESCAN_S = 5 * 60

_scanned: dict[str, float] = {}  # folder -> time.monotonic() of its last clean-up in this process
_scanned_lock = threading.Lock()


def _proc_umask() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    # The portable way to read the umask is to set it, which races with other threads: done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _proc_umask()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _umask_by_setting()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux ≥ 4.7), so it is
    safe from any thread; elsewhere the umask the process had when this module was imported."""
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def clean_stale_temp_files(folder: str | os.PathLike, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` (not below it) whose last
    modification is more than ``max_age_s`` ago; returns what was removed. Errors are ignored: the
    clean-up must never make a write fail."""
    removed = []
    cutoff = time.time() - max_age_s
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not _TEMP_NAME.fullmatch(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
                except OSError:  # gone already (another process cleaning), or not ours to remove
                    continue
    except OSError:
        pass
    return removed


def _clean_once_in_a_while(folder: Path) -> None:
    key = os.fspath(folder.absolute())
    now = time.monotonic()
    with _scanned_lock:
        last = _scanned.get(key)
        if last is not None and now - last < TEMP_RESCAN_S:
            return
        _scanned[key] = now
    clean_stale_temp_files(folder)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed, synced and renamed
    over ``path``; on any error (Ctrl-C included) it is removed and ``path`` is left as it was.

    The result gets the permissions a plain ``open()`` would give a new file (0666 less the umask),
    and the process umask is never changed, so concurrent writes from threads are safe."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once_in_a_while(path.parent)
    # The name is shortened so that a target name near the file system's limit (255 bytes) still fits.
    stem = os.fsencode(path.name)[:150].decode(errors="ignore")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            # mkstemp makes the file private (0600); set the mode on the descriptor, never via the umask.
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            else:  # Windows before Python 3.13
                os.chmod(tmp_name, 0o666 & ~current_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def folder_write_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (created where missing, as :func:`atomic_write` does), on one
    line naming the folder at fault; ``None`` when they can.

    The nearest existing folder is tried by creating and removing a temporary file of our naming: unlike
    ``os.access``, that also sees a read-only file system, ACLs and root's limits. Checking before a long job
    starts turns a failure of every write at its end into one message at its start."""
    existing = Path(folder)
    # os.path's tests, unlike Path's, answer False rather than raise where a parent cannot be searched.
    while not os.path.exists(existing) and existing.parent != existing:
        existing = existing.parent
    if not os.path.isdir(existing):
        return f"{existing}: exists and is not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check.", suffix=TEMP_SUFFIX, dir=existing)
    except OSError as exc:
        return f"{existing}: cannot create files there ({exc.strerror or type(exc).__name__})"
    os.close(fd)
    with contextlib.suppress(OSError):  # a leftover is a stale temp file of ours, removed by a later write
        os.unlink(name)
    return None


# What a spreadsheet reads as the start of a formula (OWASP's "CSV injection" list), and the quote that escapes
# it: a cell of ours beginning so is a file or dataset name, never a number (ours are never negative).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value: object) -> object:
    """``value`` as a CSV cell that a spreadsheet shows as text: a string that would start a formula (a file named
    ``=HYPERLINK(...).png``), or starts with the escaping quote itself, gets a leading ``'`` (so that reading the
    cell back, one leading quote dropped, is exact); anything else is kept."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_image(path: str | os.PathLike, array, format: str | None = None) -> Path:
    """Atomically save a uint8 array (H×W, H×W×3 or H×W×4) as an image; format from the suffix."""
    from PIL import Image

    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format=format or (path.suffix.lstrip(".").upper().replace("JPG", "JPEG")))
    return path
