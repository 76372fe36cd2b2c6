"""Writing files so that nothing a user had is ever half-overwritten: temp file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed, synced and renamed
    over ``path``; on any error (Ctrl-C included) it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is shortened so that a target name near the file system's limit (255 bytes) still fits.
    stem = os.fsencode(path.name)[:150].decode(errors="ignore")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
