"""Helpers of the REST service's tests (test_serve, test_serve_hardening, test_one_door): clients of an app on
a known mask, remover doubles, pictures, requests and the checks of their answers."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from u2net.inference import BackgroundRemover  # noqa: E402
from u2net.serve import ServeSettings, create_app  # noqa: E402

from .conftest import FullSizePredictor  # noqa: E402

HOSTS = ["testserver"]  # the Host the test client sends


class RectPredictor(FullSizePredictor):
    """A known mask: probability 1 in a centred rectangle, 0 elsewhere."""

    def __init__(self) -> None:
        self.calls = 0

    def predict_batch(self, batch, sizes=None) -> list[np.ndarray]:
        self.calls += 1  # model runs: one per image (its views go in the same batch)
        return super().predict_batch(batch, sizes)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        prob = np.zeros((h, w), np.float32)
        prob[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1.0
        prob[h // 4 : 3 * h // 4, w // 4] = 0.3  # a soft edge column
        return prob


class RemoveOnly:
    """Base of the remover doubles that define ``remove`` alone: the service's ``cutout`` (output and
    mask) takes the mask from the output's alpha channel."""

    def cutout(self, image, options=None, matte=None) -> tuple[Image.Image, np.ndarray]:
        result = self.remove(image, options)
        bands = result.getbands() if isinstance(result, Image.Image) else ()
        return result, np.asarray(result.getchannel("A")) if "A" in bands else np.zeros((1, 1), np.uint8)


class SlowRemover(RemoveOnly):
    """Takes ``delay`` seconds per image."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def remove(self, image, options=None) -> Image.Image:
        time.sleep(self.delay)
        return Image.new("RGBA", image.size, (0, 0, 0, 0))


def _client(remover, raise_server_exceptions: bool = True, **settings) -> TestClient:
    app = create_app(remover, ServeSettings(warmup=False, **{"allowed_hosts": HOSTS, **settings}))
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


def _rect_client(**settings) -> tuple[TestClient, RectPredictor]:
    predictor = RectPredictor()
    return _client(BackgroundRemover(predictor), **settings), predictor


def _picture(w: int = 48, h: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width``×``height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _post(client: TestClient, data: bytes, name: str = "photo.png", **form) -> httpx.Response:
    return client.post("/remove-background", files={"file": (name, data, "image/png")}, data=form)


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image


def _assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    for word in words:
        assert word in body["error"], body
    return body


async def _asgi_post(app, path: str, body: bytes, content_type: str) -> tuple[int, bytes, int]:
    """POST ``body`` straight to the ASGI app in 1 KiB chunks; (status, answer, chunks the app read)."""
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.Event().wait()  # a client that stays connected

    async def send(message) -> None:
        sent.append(message)

    headers = [(b"host", b"testserver"), (b"content-type", content_type.encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), read


def _files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]
