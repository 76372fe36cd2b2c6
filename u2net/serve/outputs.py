"""What the service sends back: PNGs bounded in size, kept in memory only up to a few MB (then in a
temporary file), zipped for a batch and streamed, so that no answer is ever built whole in memory;
and every error, as JSON ``{"error": message, "detail": data}``."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

from fastapi.encoders import jsonable_encoder
from PIL import Image
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, StreamingResponse

from ..inference.batch import PNG_COMPRESS_LEVEL
from ..inference.qa import MaskQuality
from .errors import MB, ApiError, mb

SPOOL_BYTES = 4 * MB  # an output larger than this goes to a temporary file (unlinked: nothing is left behind)
CHUNK = 256 * 1024


class Png(NamedTuple):
    file: IO[bytes]  # positioned at its start
    nbytes: int
    size: tuple[int, int]
    quality: MaskQuality | None = None  # the mask's confidence and QA flags


class _TooLarge(Exception):
    pass


class _Capped:
    """A write-only view of ``file`` that refuses to grow past ``limit`` bytes. It has no ``fileno``,
    so PIL cannot write around the count, straight to the descriptor."""

    def __init__(self, file: IO[bytes], limit: int) -> None:
        self.file = file
        self.limit = limit
        self.written = 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise _TooLarge
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def save_png(image: Image.Image, file: IO[bytes], limit: int, name: str) -> None:
    """Encode ``image`` as a PNG into ``file``; 413 as soon as the encoding passes ``limit`` bytes."""
    try:
        image.save(_Capped(file, limit), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    except _TooLarge:
        raise ApiError(
            413,
            f"{name}: the result is too large: its PNG passes the output limit of {mb(limit)} "
            "(send a smaller image, or use crop or mask_only)",
            {"filename": name, "max_output_bytes": limit},
        ) from None


def png_file(image: Image.Image, limit: int, name: str) -> Png:
    """``image`` as a PNG of at most ``limit`` bytes, spooled."""
    spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - handed on open, closed by its reader
    try:
        save_png(image, spool, limit, name)
    except BaseException:
        spool.close()
        raise
    nbytes = spool.tell()
    spool.seek(0)
    return Png(spool, nbytes, image.size)


def zip_file(members: list[tuple[str, Png]], errors: list[dict]) -> tuple[IO[bytes], int]:
    """A stored (uncompressed: PNGs are compressed already) zip of the PNGs and ``errors.json``,
    spooled, and its size; the PNGs' files are closed. Blocking: run it off the event loop."""
    spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - handed on open, closed by its reader
    try:
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as archive:
            for arcname, png in members:
                with archive.open(arcname, "w", force_zip64=png.nbytes >= zipfile.ZIP64_LIMIT) as member:
                    shutil.copyfileobj(png.file, member, CHUNK)
            archive.writestr("errors.json", json.dumps(errors, indent=2, ensure_ascii=False))
    except BaseException:
        spool.close()
        raise
    finally:
        for _, png in members:
            png.file.close()
    nbytes = spool.seek(0, 2)
    spool.seek(0)
    return spool, nbytes


def stream(file: IO[bytes], nbytes: int, media_type: str, headers: dict[str, str]) -> StreamingResponse:
    """``file`` (from where it stands) as the response body, read chunk by chunk in a thread and
    closed once sent."""
    return StreamingResponse(
        _chunks(file),
        media_type=media_type,
        headers={**headers, "Content-Length": str(nbytes)},
        background=BackgroundTask(file.close),
    )


def error_response(
    status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers)


def _chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk
