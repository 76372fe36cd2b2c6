"""Hardening of the REST service (issue 24): slow uploads cannot hold the pool (408), a batch's body holds
a slot per upload's worth of bytes (503 / 413), the CORS headers expose the QA headers, float images with
NaN are a 400, a batch's internal failures do not leak their text, and unknown form fields are refused."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


from u2net.serve import ServeSettings, create_app  # noqa: E402

from .helpers_serve import (  # noqa: E402
    HOSTS,
    RemoveOnly,
    SlowRemover,
    _asgi_post,
    _assert_error,
    _client,
    _encode,
    _files,
    _picture,
    _post,
    _rect_client,
)


# -- helpers -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _server(app) -> Iterator[int]:
    """``app`` under uvicorn in a thread, on a free loopback port (yielded)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        assert thread.is_alive() and time.monotonic() - started < 10, "the server did not start"
        time.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def _slow_upload(port: int) -> socket.socket:
    """A client that announces a 1 MB upload and sends only its first bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (
        "POST /remove-background HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000000\r\n\r\n"
        '--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    )
    sock.sendall(head.encode())
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, bool]:
    """All the server sends on ``sock`` until it closes it (within 3 s), and whether it did."""
    sock.settimeout(3)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    return data, True


def _form(*items: tuple[str, bytes]) -> tuple[bytes, str]:
    """A batch's multipart body and its content type."""
    request = httpx.Request("POST", "http://testserver/", files=_files(*items))
    return request.read(), request.headers["content-type"]


# -- H1: slow uploads --------------------------------------------------------------------------
def test_slow_uploads_get_408_and_free_their_slots():
    """Clients that trickle their bodies hold the whole pool only until the upload deadline: then they
    get 408 (connection closed), the pool is free again and other clients are served."""
    settings = ServeSettings(workers=1, max_queue=1, upload_timeout_s=1.0, warmup=False)
    app = create_app(SlowRemover(0.0), settings)
    with _server(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        slow = [_slow_upload(port) for _ in range(2)]  # as many as the pool has slots
        for _ in range(3):  # a byte now and then: trickling does not extend the deadline
            time.sleep(0.2)
            for sock in slow:
                sock.sendall(b"x")
        assert client.get("/health").json()["pending"] == 2
        busy = client.post("/remove-background", files={"file": ("b.png", _encode(_picture()), "image/png")})
        assert busy.status_code == 503
        for sock in slow:
            data, closed = _answer(sock)
            sock.close()
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
            body = json.loads(data.split(b"\r\n\r\n", 1)[1])
            assert body == {
                "error": "the upload took too long: a request body must arrive within 1 s",
                "detail": {"upload_timeout_s": 1.0},
            }
            assert closed  # the rest of the body is never read: no further request on that connection
        assert client.get("/health").json()["pending"] == 0
        served = client.post("/remove-background", files={"file": ("b.png", _encode(_picture()), "image/png")})
        assert served.status_code == 200, served.text
        assert client.get("/health").json()["pending"] == 0


def test_the_upload_deadline_does_not_cover_the_work_after_the_body():
    """Once the body is in, the request may run past the upload deadline (inference, and the wait for a
    disconnect while the answer streams)."""
    app = create_app(SlowRemover(0.5), ServeSettings(upload_timeout_s=0.2, warmup=False, allowed_hosts=HOSTS))
    form = httpx.Request("POST", "http://testserver/", files={"file": ("a.png", _encode(_picture()), "image/png")})
    status, answer, _ = asyncio.run(_asgi_post(app, "/remove-background", form.read(), form.headers["content-type"]))
    assert status == 200, answer
    assert Image.open(io.BytesIO(answer)).size == (48, 40)
    assert app.state.service.pending == 0


def test_upload_timeout_is_a_setting_an_option_and_a_reported_limit(remover):
    assert ServeSettings().upload_timeout_s == 30
    with pytest.raises(ValueError, match="upload_timeout_s must be > 0"):
        ServeSettings(upload_timeout_s=0)
    from u2net.cli.serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).upload_timeout_s == 30
    assert parser.parse_args(["--upload-timeout", "5"]).upload_timeout_s == 5
    limits = _client(remover, upload_timeout_s=7).get("/model-info").json()["limits"]
    assert limits["upload_timeout_s"] == 7


# -- M1: a batch's body holds a slot per upload's worth ----------------------------------------
def test_batch_body_outgrowing_the_free_slots_is_503_mid_stream():
    """Three noise PNGs of ~43 KB with a 0.05 MB upload limit: two uploads' worth of body (beyond the
    form slack). With one slot free, the batch is refused 503 as its body streams in, not read to its
    end; with its Content-Length, before it is read."""
    client, predictor = _rect_client(workers=1, max_queue=2, max_upload_mb=0.05)  # capacity 3
    app = client.app
    service = app.state.service
    items = [(f"{i}.png", _encode(_picture(120, 120, seed=i))) for i in range(3)]
    body, content_type = _form(*items)
    held = service.admit()  # other requests hold 2 of the 3 slots
    held.need(2)

    status, answer, read = asyncio.run(_asgi_post(app, "/batch-remove-background", body, content_type))
    assert status == 503 and "busy" in json.loads(answer)["error"], answer
    assert read < -(-len(body) // 1024)  # the rest was not read
    assert service.pending == 2

    busy = client.post("/batch-remove-background", files=_files(*items))  # Content-Length: refused up front
    _assert_error(busy, 503, "busy")
    assert busy.headers["retry-after"] == "1"
    assert predictor.calls == 0 and service.pending == 2

    held.close()
    ok = client.post("/batch-remove-background", files=_files(*items))
    assert ok.status_code == 200 and ok.headers["x-files-done"] == "3", ok.text
    assert service.pending == 0


def test_batch_body_beyond_the_pool_is_413_before_it_is_read():
    """With capacity 2, a batch body over two uploads' worth (plus the form slack) could never be
    admitted: 413, even when each file is listed on its own (it used to be spooled whole first)."""
    client, predictor = _rect_client(workers=1, max_queue=1, max_upload_mb=0.05)
    service = client.app.state.service
    large = [(f"{i}.bin", b"\0" * 90_000) for i in range(2)]  # two files, each over the per-file limit
    body = _assert_error(client.post("/batch-remove-background", files=_files(*large)), 413, "too large")
    assert body["detail"]["limit_bytes"] == 2 * int(0.05 * 2**20) + 64 * 1024
    form, content_type = _form(*large)  # no Content-Length: cut off while it streams in
    status, answer, read = asyncio.run(_asgi_post(client.app, "/batch-remove-background", form, content_type))
    assert status == 413 and read < -(-len(form) // 1024), answer
    assert predictor.calls == 0 and service.pending == 0
    pictures = [(f"{i}.png", _encode(_picture(seed=i))) for i in range(2)]
    ok = client.post("/batch-remove-background", files=_files(*pictures))
    assert ok.status_code == 200 and ok.headers["x-files-done"] == "2"
    assert service.pending == 0


# -- L1: CORS ----------------------------------------------------------------------------------
def test_cors_exposes_the_qa_headers(remover):
    client = _client(remover, cors_origins=["http://example.com"])
    files = {"file": ("a.png", _encode(_picture()), "image/png")}
    response = client.post("/remove-background", files=files, headers={"Origin": "http://example.com"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://example.com"
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-confidence", "x-qa-flags", "x-image-size"} <= exposed


# -- L2: clean errors --------------------------------------------------------------------------
def _nan_tiff() -> bytes:
    pixels = np.full((20, 24), np.nan, np.float32)
    pixels[5:10, 5:10] = 0.5
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def test_float_image_with_nan_is_400_naming_the_file():
    client, _ = _rect_client()
    body = _assert_error(_post(client, _nan_tiff(), name="nan.tif"), 400, "nan.tif", "NaN")
    assert "\n" not in body["error"] and body["detail"] == {"filename": "nan.tif"}
    response = client.post("/batch-remove-background", files=_files(("nan.tif", _nan_tiff())))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        (error,) = json.loads(archive.read("errors.json"))
    assert error["status"] == 400 and error["error"].startswith("nan.tif: ") and "NaN" in error["error"]


def test_batch_internal_failure_is_reported_without_its_text():
    class Broken(RemoveOnly):
        def remove(self, image, options=None):
            raise RuntimeError("cannot open /srv/secret/weights.bin")

    client = _client(Broken())
    response = client.post("/batch-remove-background", files=_files(("a.png", _encode(_picture()))))
    assert response.status_code == 200 and response.headers["x-files-failed"] == "1"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        errors = json.loads(archive.read("errors.json"))
    assert errors == [{"index": 0, "filename": "a.png", "status": 500, "error": "internal error (RuntimeError)"}]


# -- L3: unknown form fields -------------------------------------------------------------------
def test_unknown_form_fields_are_refused():
    client, predictor = _rect_client()
    data = _encode(_picture(16, 16))
    body = _assert_error(_post(client, data, treshold="0.5"), 422, "'treshold'")
    assert body["detail"] == {"field": "treshold"}
    batch = client.post("/batch-remove-background", files=_files(("a.png", data)), data={"colour": "red"})
    _assert_error(batch, 422, "'colour'")
    wrong = client.post("/batch-remove-background", files=_files(("a.png", data)) + [("file", ("b.png", data, "x"))])
    _assert_error(wrong, 422, "'file'")  # the single endpoint's file field
    assert predictor.calls == 0
    known = {"mask_only": "true", "crop": "false", "quality": "fast", "model": "", "threshold": "0.5"}
    assert _post(client, data, **known).status_code == 200
    ok = client.post("/batch-remove-background", files=_files(("a.png", data)), data=known)
    assert ok.status_code == 200 and ok.headers["x-files-done"] == "1"


# -- quality=soft (issue 25) -------------------------------------------------------------------
def test_quality_soft_is_served_like_the_library_and_refused_without_pymatting(monkeypatch):
    pytest.importorskip("pymatting")
    from u2net.inference import BackgroundRemover, RemovalOptions

    from .helpers_serve import RectPredictor, _image

    client, _ = _rect_client()
    picture = _picture(80, 60)
    served = np.asarray(_image(_post(client, _encode(picture), quality="soft", mask_only="true")))
    expected = BackgroundRemover(RectPredictor()).remove(picture, RemovalOptions.preset("soft", mask_only=True))
    np.testing.assert_array_equal(served, np.asarray(expected))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pymatting" else real(name, *a))
    _assert_error(_post(client, _encode(picture), quality="soft"), 400, "quality soft", "pymatting")
