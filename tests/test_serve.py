"""The REST service: every endpoint, every limit (upload size, non-images, corrupt files, pixel bombs,
matting size and time, output size, batch size, timeouts, queue), path safety of the storage-root
endpoint and the Host check (the ``serve`` command: test_cli)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import multiprocessing
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import u2net  # noqa: E402
from u2net.inference import BackgroundRemover, RemovalOptions  # noqa: E402
from u2net.serve import ApiError, ServeSettings, create_app, default_allowed_hosts  # noqa: E402
from u2net.serve.matting import Matting  # noqa: E402

from .conftest import FullSizePredictor, lively_u2netp  # noqa: E402
from .helpers_serve import (  # noqa: E402
    HOSTS,
    RectPredictor,
    RemoveOnly,
    SlowRemover,
    _asgi_post,
    _assert_error,
    _client,
    _encode,
    _files,
    _image,
    _picture,
    _png_header,
    _post,
    _rect_client,
)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(remover) -> TestClient:
    return TestClient(create_app(remover, ServeSettings(warmup=False, allowed_hosts=HOSTS)))


# -- health, model info, docs, page ------------------------------------------------------------
def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["uptime_s"] >= 0
    assert body["workers"] == 2


def test_model_info(client, checkpoint):
    body = client.get("/model-info").json()
    assert body["name"] == "u2netp"
    assert body["parameters"] == sum(p.numel() for p in u2net.create_model("u2netp").parameters())
    assert body["input_size"] == 64
    assert body["backend"] == "pytorch"
    assert body["execution_providers"] == ["cpu"] and body["precision"] == "fp32"
    assert body["file"] == "tiny.pt"
    assert body["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert body["limits"] == {
        "max_upload_mb": 20.0,
        "max_pixels": 40_000_000,
        "max_matting_pixels": 250_000,
        "max_output_mb": 64.0,
        "max_batch": 10,
        "request_timeout_s": 60,
        "upload_timeout_s": 30,
    }


def test_create_app_from_a_path_loads_once_and_hashes_at_start_up(checkpoint):
    app = create_app(checkpoint, ServeSettings(device="cpu", warmup=False, allowed_hosts=HOSTS))
    service = app.state.service
    assert service.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with TestClient(app) as client:  # lifespan: the pool is shut down at the end
        first = _image(_post(client, _encode(_picture())))
        assert client.get("/model-info").json()["sha256"] == service.sha256
    assert first.size == (48, 40)
    assert service.pool._shutdown


def test_requests_pick_one_of_the_models_the_server_offers(checkpoint, tmp_path):
    # Two models with different weights: the choice must reach the model that makes the mask.
    other = tmp_path / "other.pt"
    torch.save({**torch.load(checkpoint, weights_only=False), "model": lively_u2netp(3).state_dict()}, other)
    settings = ServeSettings(device="cpu", warmup=False, allowed_hosts=HOSTS)
    app = create_app(checkpoint, settings, choices=[other, checkpoint])
    with TestClient(app) as client:
        info = client.get("/model-info").json()
        assert info["model"] == "tiny" and info["choices"] == ["tiny", "other"]
        photo = _encode(_picture(seed=4))
        default = np.asarray(_image(_post(client, photo, mask_only="true")))
        assert np.array_equal(default, np.asarray(_image(_post(client, photo, mask_only="true", model="tiny"))))
        chosen = np.asarray(_image(_post(client, photo, mask_only="true", model="other")))
        assert np.abs(chosen.astype(int) - default).mean() > 5
        _assert_error(_post(client, photo, model="u2net.duts"), 400, "unknown model 'u2net.duts'", "tiny, other")
        batch = client.post(
            "/batch-remove-background", files=[("files", ("a.png", photo, "image/png"))], data={"model": "nope"}
        )
        _assert_error(batch, 400, "unknown model 'nope'")


def test_docs_and_openapi(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/remove-background", "/batch-remove-background", "/remove-background/path", "/health", "/model-info"):
        assert path in paths


def test_web_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "static/app.js" in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert client.get(f"/{asset}").status_code == 200


def test_unknown_route_is_a_json_error(client):
    _assert_error(client.get("/nope"), 404)
    _assert_error(client.get("/remove-background"), 405)


# -- POST /remove-background -------------------------------------------------------------------
def test_remove_background_matches_the_remover(client, remover):
    rgb = _picture()
    image = _image(_post(client, _encode(rgb)))
    assert image.mode == "RGBA" and image.size == (48, 40)
    expected = remover.remove(rgb)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_remove_background_reports_size_and_name(client):
    response = _post(client, _encode(_picture(), "JPEG"), name="../../holiday photo.jpg")
    _image(response)
    assert response.headers["x-image-size"] == "48x40"
    assert response.headers["content-disposition"] == 'inline; filename="holiday_photo.png"'
    assert float(response.headers["x-processing-ms"]) > 0


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_remove_background_reads_common_formats(client, fmt):
    assert _image(_post(client, _encode(_picture(), fmt), name=f"x.{fmt.lower()}")).size == (48, 40)


def test_remove_background_options():
    client, _ = _rect_client()
    data = _encode(_picture(80, 60))
    soft = np.asarray(_image(_post(client, data, quality="fast")))  # one view, unsharpened: the map as it is
    assert soft.shape == (60, 80, 4) and set(np.unique(soft[..., 3])) == {0, 76, 255}
    default = np.asarray(_image(_post(client, data)))  # the soft column sharpened, the sure regions kept
    assert set(np.unique(default[..., 3])) == {0, 56, 255}

    mask = _image(_post(client, data, mask_only="true"))
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), default[..., 3])

    hard = np.asarray(_image(_post(client, data, mask_only="true", threshold="0.5")))
    assert set(np.unique(hard)) == {0, 255} and hard[30, 20] == 0 and hard[30, 21] == 255

    cropped = _image(_post(client, data, crop="true", padding="2"))
    assert cropped.size == (40 + 4, 30 + 4)

    white = _image(_post(client, data, bg_color="white"))
    assert white.mode == "RGB" and white.getpixel((0, 0)) == (255, 255, 255)

    translucent = _image(_post(client, data, bg_color="#ff000080"))
    assert translucent.mode == "RGBA" and translucent.getpixel((0, 0)) == (255, 0, 0, 128)
    assert _image(_post(client, data, bg_color="")).mode == "RGBA"  # an empty field (an HTML form's) is none

    cleaned = _image(_post(client, data, post_process="true", mask_only="true"))
    assert cleaned.size == (80, 60)


def test_remove_background_stretch_option():
    class FaintPredictor(FullSizePredictor):  # an unconfident map: 0.2 in the background, 0.6 in a rectangle
        def predict(self, rgb: np.ndarray) -> np.ndarray:
            prob = np.full(rgb.shape[:2], 0.2, np.float32)
            prob[10:20, 10:30] = 0.6
            return prob

    client = _client(BackgroundRemover(FaintPredictor()))
    data = _encode(_picture(40, 30))
    stretched = np.asarray(_image(_post(client, data, mask_only="true")))
    assert stretched.min() == 0 and stretched.max() == 255
    kept = np.asarray(_image(_post(client, data, mask_only="true", stretch="false", quality="fast")))
    assert set(np.unique(kept)) == {51, 153}


@pytest.mark.subprocess
def test_remove_background_alpha_matting_in_a_child_matches_the_remover():
    pytest.importorskip("pymatting")
    client, _ = _rect_client()
    matting = client.app.state.service.matting
    calls = []
    call = matting.call
    matting.call = lambda *args: calls.append(args) or call(*args)
    rgba = np.dstack([_picture(80, 60), np.full((60, 80), 255, np.uint8)])
    rgba[:6, :, 3] = 0  # the input's own transparency is kept
    for form, options in [
        ({}, RemovalOptions(alpha_matting=True)),
        ({"crop": "true", "bg_color": "white"}, RemovalOptions(alpha_matting=True, crop=True, bg_color="white")),
    ]:
        served = _image(_post(client, _encode(rgba), alpha_matting="true", **form))
        expected = BackgroundRemover(RectPredictor()).remove(rgba, options)  # matting in this process
        assert served.mode == expected.mode and served.size == expected.size
        assert np.abs(np.asarray(served, np.int16) - np.asarray(expected, np.int16)).max() <= 1
    assert len(calls) == 2 and matting.running == 0


class UnsurePredictor(FullSizePredictor):
    """A map sure only in two corners (foreground top left, background bottom right): alpha matting
    has nearly every pixel to solve, which takes seconds."""

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        prob = np.full((h, w), 0.5, np.float32)
        prob[: h // 5, : w // 5] = 1.0
        prob[-h // 5 :, -w // 5 :] = 0.0
        return prob


@pytest.mark.subprocess
def test_alpha_matting_is_killed_at_the_deadline():
    """A matting that outlives its request is killed at the timeout, so its worker is free at once
    for the next request instead of grinding on for nobody."""
    pytest.importorskip("pymatting")
    settings = ServeSettings(
        warmup=False, workers=1, request_timeout_s=1.5, max_matting_pixels=300_000, allowed_hosts=HOSTS
    )
    app = create_app(BackgroundRemover(UnsurePredictor()), settings)
    client = TestClient(app)
    matting = app.state.service.matting
    matting.call(os.getpid, (), time.monotonic() + 60)  # the forkserver is up: only the deadline counts below
    started = time.perf_counter()
    response = _post(client, _encode(_picture(500, 500)), alpha_matting="true")  # ~10 s of matting here
    _assert_error(response, 504, "timed out")
    assert _post(client, _encode(_picture(16, 16))).status_code == 200  # the only worker, free again
    assert time.perf_counter() - started < 5
    assert matting.running == 0


@pytest.mark.subprocess
def test_matting_call_runs_in_a_child_killed_at_its_deadline():
    matting = Matting()
    assert matting.call(os.getpid, (), time.monotonic() + 60) != os.getpid()
    started = time.perf_counter()
    with pytest.raises(ApiError) as late:
        matting.call(time.sleep, (30,), time.monotonic() + 0.5)
    assert late.value.status == 504 and time.perf_counter() - started < 3
    assert matting.running == 0
    assert not [p for p in multiprocessing.active_children() if p.name == "u2net-matting"]
    with pytest.raises(ApiError) as failed:
        matting.call(os.strerror, ("not a number",), time.monotonic() + 60)
    assert failed.value.status == 500 and "TypeError" in failed.value.message
    matting.close()
    with pytest.raises(ApiError) as closed:
        matting.call(os.getpid, (), time.monotonic() + 60)
    assert closed.value.status == 503


def test_alpha_matting_pixel_limit_413():
    pytest.importorskip("pymatting")
    client, predictor = _rect_client(max_matting_pixels=1000)
    data = _encode(_picture(48, 40))  # 1,920 pixels
    body = _assert_error(_post(client, data, alpha_matting="true"), 413, "alpha_matting", "1,000")
    assert body["detail"] == {"filename": "photo.png", "width": 48, "height": 40, "max_matting_pixels": 1000}
    assert predictor.calls == 0
    assert _post(client, data).status_code == 200  # the same image without matting
    batch = client.post("/batch-remove-background", files=_files(("big.png", data)), data={"alpha_matting": "true"})
    with zipfile.ZipFile(io.BytesIO(batch.content)) as archive:
        assert [(e["filename"], e["status"]) for e in json.loads(archive.read("errors.json"))] == [("big.png", 413)]
    assert predictor.calls == 1


def test_invalid_options_are_json_errors(client):
    data = _encode(_picture())
    body = _assert_error(_post(client, data, threshold="1.5"), 422, "threshold")
    assert body["detail"][0]["loc"] == ["body", "threshold"]
    _assert_error(_post(client, data, padding="-1"), 422, "padding")
    _assert_error(_post(client, data, crop="maybe"), 422, "crop")
    _assert_error(_post(client, data, bg_color="not-a-colour"), 400, "invalid colour")
    _assert_error(client.post("/remove-background", data={"threshold": "0.5"}), 422, "file")


# -- limits ------------------------------------------------------------------------------------
def test_upload_too_large_413():
    client, predictor = _rect_client(max_upload_mb=0.01)  # 10 KiB per image
    big = _encode(_picture(120, 120))  # ~43 KB of noise
    assert len(big) > 0.01 * 2**20
    body = _assert_error(_post(client, big), 413, "too large", "0.01 MB")
    assert body["detail"]["limit_bytes"] == int(0.01 * 2**20)
    assert predictor.calls == 0
    assert _post(client, _encode(_picture(20, 20))).status_code == 200  # small ones still work


def test_request_body_over_the_limit_is_refused_before_parsing():
    client, predictor = _rect_client(max_upload_mb=0.01)
    huge = b"\0" * (200 * 1024)  # more than one upload plus the form slack: Content-Length says so
    _assert_error(_post(client, huge), 413, "too large")

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(40):
            yield b"x" * 8192

    response = client.post(
        "/remove-background", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zzz"}
    )
    _assert_error(response, 413, "too large")
    _assert_error(client.post("/remove-background/path", content=b"{" + b" " * 70_000 + b"}"), 413)
    assert predictor.calls == 0


def test_not_an_image_415(client):
    _assert_error(_post(client, b"hello, I am text", name="notes.txt"), 415, "not an image")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    _assert_error(_post(client, eps, name="x.eps"), 415)  # PIL could read it, but not through the service
    _assert_error(_post(client, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", name="x.pdf"), 415)


def test_corrupt_image_400(client):
    data = _encode(_picture())
    _assert_error(_post(client, data[: len(data) // 2]), 400, "corrupt")
    _assert_error(_post(client, data[:40]), 400, "corrupt")  # a PNG signature, a cut header
    _assert_error(_post(client, b"\xff\xd8\xff\xe0" + b"\0" * 20, name="x.jpg"), 400, "corrupt")
    _assert_error(_post(client, _png_header(64, 64)), 400, "corrupt")
    _assert_error(_post(client, b""), 400, "empty")


def test_pixel_bomb_413_checked_before_decoding():
    client, predictor = _rect_client(max_pixels=1_000_000)
    body = _assert_error(_post(client, _png_header(3000, 3000)), 413, "too many pixels", "1,000,000")
    assert body["detail"] == {"filename": "photo.png", "width": 3000, "height": 3000, "max_pixels": 1_000_000}
    assert predictor.calls == 0
    assert _post(client, _encode(_picture(1000, 1000))).status_code == 200  # exactly at the limit


def test_pil_decompression_bomb_error_is_413():
    client, predictor = _rect_client(max_pixels=10**12)  # our own check passes: PIL's refuses
    _assert_error(_post(client, _png_header(100_000, 100_000)), 413, "too many pixels")
    assert predictor.calls == 0


def test_timeout_504():
    client = _client(SlowRemover(1.0), request_timeout_s=0.2)
    started = time.perf_counter()
    body = _assert_error(_post(client, _encode(_picture())), 504, "timed out")
    assert body["detail"] == {"timeout_s": 0.2}
    assert time.perf_counter() - started < 0.9


def test_busy_503_when_the_queue_is_full():
    app = create_app(SlowRemover(1.0), ServeSettings(workers=1, max_queue=0, warmup=False, allowed_hosts=HOSTS))
    service = app.state.service
    image = Image.new("RGB", (8, 8))
    (running,) = service._submit(
        service.cutout, [(image, "a.png", RemovalOptions(), service.deadline())], service.admit()
    )
    with pytest.raises(ApiError) as refused:
        service.admit()
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    busy = _post(TestClient(app), _encode(_picture()))
    _assert_error(busy, 503, "busy")
    assert busy.headers["retry-after"] == "1"
    running.result(timeout=5)
    assert service.pending == 0
    response = _post(TestClient(app), _encode(_picture()))
    assert response.status_code == 200  # free again


def test_busy_503_comes_before_the_upload_is_read():
    app = create_app(SlowRemover(0.0), ServeSettings(workers=1, max_queue=0, warmup=False, allowed_hosts=HOSTS))
    service = app.state.service
    form = httpx.Request("POST", "http://testserver/", files={"file": ("a.png", _encode(_picture()), "image/png")})
    body, content_type = form.read(), form.headers["content-type"]
    held = service.admit()  # the only slot is taken
    for path in ("/remove-background", "/batch-remove-background", "/remove-background/path"):
        status, answer, read = asyncio.run(_asgi_post(app, path, body, content_type))
        assert (status, read) == (503, 0), answer
        assert "busy" in json.loads(answer)["error"]
    held.close()
    status, answer, read = asyncio.run(_asgi_post(app, "/remove-background", body, content_type))
    assert status == 200 and read == -(-len(body) // 1024)
    assert Image.open(io.BytesIO(answer)).size == (48, 40)
    assert service.pending == 0


def test_output_size_limit_413(storage):
    root, _ = storage
    client, _ = _rect_client(max_output_mb=0.01, storage_root=root)  # 10 KiB of PNG per image
    noise, small = _encode(_picture(120, 120)), _encode(_picture(20, 20))  # cut-outs of ~40 KB and ~1.5 KB
    body = _assert_error(_post(client, noise), 413, "output limit", "0.01 MB")
    assert body["detail"] == {"filename": "photo.png", "max_output_bytes": int(0.01 * 2**20)}
    assert _post(client, small).status_code == 200
    batch = client.post("/batch-remove-background", files=_files(("big.png", noise), ("ok.png", small)))
    with zipfile.ZipFile(io.BytesIO(batch.content)) as archive:
        assert archive.namelist() == ["ok.png", "errors.json"]
        assert [(e["filename"], e["status"]) for e in json.loads(archive.read("errors.json"))] == [("big.png", 413)]
    (root / "in" / "noise.png").write_bytes(noise)
    request = {"sourceImagePath": "in/noise.png", "outputImagePath": "out/new/noise.png"}
    _assert_error(client.post("/remove-background/path", json=request), 413, "output limit")
    assert sorted(p.name for p in root.iterdir()) == ["in"]  # no file, no temporary, no folder made for it


def test_batch_zip_is_built_off_the_event_loop_and_streamed(monkeypatch):
    import tempfile

    import u2net.serve.routes as app_module

    built = {}
    zip_file = app_module.zip_file

    def recording(members, errors):
        try:
            asyncio.get_running_loop()
            built["on_loop"] = True
        except RuntimeError:
            built["on_loop"] = False
        built["result"] = zip_file(members, errors)
        return built["result"]

    monkeypatch.setattr(app_module, "zip_file", recording)
    client, _ = _rect_client()
    data = _encode(_picture(16, 16))
    response = client.post("/batch-remove-background", files=_files(("a.png", data), ("b.png", data)))
    assert response.status_code == 200 and built["on_loop"] is False
    spool, nbytes = built["result"]
    assert isinstance(spool, tempfile.SpooledTemporaryFile) and spool.closed  # sent from it, then closed
    assert int(response.headers["content-length"]) == nbytes == len(response.content)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.namelist() == ["a.png", "b.png", "errors.json"]


def test_inference_runs_off_the_event_loop():
    """While slow inferences run in the pool, /health answers at once; two workers run two at a time."""
    app = create_app(SlowRemover(0.6), ServeSettings(workers=2, warmup=False))
    data = _encode(_picture())

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:  # allowed by default
            files = {"file": ("a.png", data, "image/png")}
            started = time.perf_counter()
            slow = [asyncio.create_task(client.post("/remove-background", files=files)) for _ in range(2)]
            await asyncio.sleep(0.1)
            health = await client.get("/health")
            health_s = time.perf_counter() - started
            results = await asyncio.gather(*slow)
            return health, health_s, results, time.perf_counter() - started

    health, health_s, results, total_s = asyncio.run(scenario())
    assert health.status_code == 200 and health.json()["pending"] == 2
    assert health_s < 0.5
    assert [r.status_code for r in results] == [200, 200]
    assert total_s < 1.1  # in parallel, not one after the other (1.2 s)


def test_cors_headers_when_configured(remover):
    client = _client(remover, cors_origins=["http://example.com"])
    preflight = client.options(
        "/remove-background",
        headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://example.com"
    plain = _client(remover).get("/health", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in plain.headers


# -- POST /batch-remove-background -------------------------------------------------------------


def test_batch_returns_a_zip_with_an_error_list(client, remover):
    a, b = _picture(seed=1), _picture(32, 24, seed=2)
    response = client.post(
        "/batch-remove-background",
        files=_files(
            ("a.png", _encode(a)),
            ("notes.txt", b"not an image"),
            ("dir/b.jpg", _encode(b, "JPEG")),
            ("b.png", _encode(b)),
            ("broken.png", _encode(a)[:60]),
        ),
        data={"mask_only": "true"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["x-files-done"] == "3" and response.headers["x-files-failed"] == "2"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.namelist() == ["a.png", "b.png", "b-2.png", "errors.json"]
        errors = json.loads(archive.read("errors.json"))
        first = Image.open(io.BytesIO(archive.read("a.png")))
        assert first.mode == "L" and first.size == (48, 40)
        np.testing.assert_array_equal(np.asarray(first), remover.mask(a))
        assert Image.open(io.BytesIO(archive.read("b-2.png"))).size == (32, 24)
    assert [(e["index"], e["filename"], e["status"]) for e in errors] == [(1, "notes.txt", 415), (4, "broken.png", 400)]
    assert all(e["error"] for e in errors)


def test_batch_per_file_limits_are_listed():
    client, _ = _rect_client(max_upload_mb=0.01, max_pixels=1_000_000)
    response = client.post(
        "/batch-remove-background",
        files=_files(("ok.png", _encode(_picture(20, 20))), ("big.png", _encode(_picture(120, 120)))),
    )
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.namelist() == ["ok.png", "errors.json"]
        assert [e["status"] for e in json.loads(archive.read("errors.json"))] == [413]
    response = client.post("/batch-remove-background", files=_files(("bomb.png", _png_header(5000, 5000))))
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert [e["status"] for e in json.loads(archive.read("errors.json"))] == [413]


def test_batch_too_many_files_400():
    client, predictor = _rect_client(max_batch=2)
    data = _encode(_picture(16, 16))
    body = _assert_error(
        client.post("/batch-remove-background", files=_files(*[(f"{i}.png", data) for i in range(3)])),
        400,
        "too many files",
    )
    assert body["detail"] == {"files": 3, "max_batch": 2}
    assert predictor.calls == 0
    ok = client.post("/batch-remove-background", files=_files(("0.png", data), ("1.png", data)))
    assert ok.status_code == 200 and ok.headers["x-files-done"] == "2"


def test_batch_over_capacity_is_413_even_when_idle():
    client, predictor = _rect_client(workers=1, max_queue=1)  # 2 images admitted at once
    data = _encode(_picture(16, 16))
    response = client.post("/batch-remove-background", files=_files(*[(f"{i}.png", data) for i in range(3)]))
    body = _assert_error(response, 413, "at most 2")
    assert body["detail"] == {"files": 3, "capacity": 2}
    assert predictor.calls == 0
    ok = client.post("/batch-remove-background", files=_files(("0.png", data), ("1.png", data)))
    assert ok.status_code == 200 and ok.headers["x-files-done"] == "2"
    assert client.get("/model-info").json()["limits"]["max_batch"] == 2


def test_batch_timeout_504():
    client = _client(SlowRemover(1.0), request_timeout_s=0.2)
    data = _encode(_picture(16, 16))
    response = client.post("/batch-remove-background", files=_files(("a.png", data), ("b.png", data)))
    _assert_error(response, 504, "timed out")


def test_batch_needs_files(client):
    _assert_error(client.post("/batch-remove-background", data={"crop": "true"}), 422, "files")


# -- POST /remove-background/path --------------------------------------------------------------
@pytest.fixture()
def storage(tmp_path) -> tuple[Path, Path]:
    """(storage root with in/photo.png, a sibling folder outside it holding secret.png)."""
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "photo.png").write_bytes(_encode(_picture(40, 30)))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_encode(_picture(10, 10, seed=5)))
    return root, outside


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {
        str(p): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
        for folder in folders
        for p in sorted(folder.rglob("*"))
    }


def _path_client(root: Path, remover=None, **settings) -> TestClient:
    return _client(remover or BackgroundRemover(RectPredictor()), storage_root=root, **settings)


def test_path_endpoint_writes_the_cutout(storage):
    root, _ = storage
    client = _path_client(root)
    response = client.post(
        "/remove-background/path",
        json={"sourceImagePath": "in/photo.png", "outputImagePath": "out/new/photo.png", "threshold": 0.5},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sourceImagePath"] == "in/photo.png" and body["outputImagePath"] == "out/new/photo.png"
    assert (body["width"], body["height"]) == (40, 30)
    written = root / "out" / "new" / "photo.png"
    assert body["bytes"] == written.stat().st_size
    alpha = np.asarray(Image.open(written))[..., 3]
    assert set(np.unique(alpha)) == {0, 255}  # the threshold was applied
    assert not [p for p in written.parent.iterdir() if p.name != "photo.png"]  # no temporary files left


def test_path_endpoint_replaces_an_output_atomically(storage):
    root, _ = storage
    client = _path_client(root)
    target = root / "out.png"
    target.write_bytes(b"old")
    ok = client.post("/remove-background/path", json={"sourceImagePath": "in/photo.png", "outputImagePath": "out.png"})
    assert ok.status_code == 200
    assert Image.open(target).size == (40, 30)

    class FailingImage:  # writes half a file, then fails
        size = (40, 30)

        def save(self, f, **kwargs):
            f.write(b"\x89PNG half")
            raise OSError("disk full")

    class FailingRemover(RemoveOnly):
        def remove(self, image, options=None):
            return FailingImage()

    before = target.read_bytes()
    client = _path_client(root, FailingRemover())
    failed = client.post(
        "/remove-background/path", json={"sourceImagePath": "in/photo.png", "outputImagePath": "out.png"}
    )
    _assert_error(failed, 500, "cannot write the output (disk full)")
    assert target.read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["in", "out.png"]


@pytest.mark.parametrize(
    ("source", "output", "words"),
    [
        ("../outside/secret.png", "x.png", ("sourceImagePath", "..")),
        ("in/../../outside/secret.png", "x.png", ("..",)),
        ("in/photo.png", "../outside/evil.png", ("outputImagePath", "..")),
        ("in/photo.png", "in/../../evil.png", ("..",)),
        ("in\\..\\..\\outside\\secret.png", "x.png", ("..",)),
        ("/etc/passwd", "x.png", ("absolute",)),
        ("in/photo.png", "OUTSIDE/evil.png", ("outputImagePath", "absolute")),
        ("C:\\Windows\\win.ini", "x.png", ("sourceImagePath",)),
        ("\\\\server\\share\\a.png", "x.png", ("absolute",)),
        ("in/photo.png", "in/photo.png", ("overwrite",)),
        ("in/photo.png", "out.jpg", ("png",)),
        ("in", "x.png", ("not a file",)),
        ("in/photo.png", "in", ("png",)),
        ("in/photo.png", "in/photo.png/x.png", ("outputImagePath", "a parent of the path is a file")),
        ("in/photo.png/x.png", "x.png", ("sourceImagePath", "a parent of the path is a file")),
        ("in/photo.png", "in/./", ("png",)),
        ("./", "x.png", ("names no file",)),
        ("in/photo.png\x00.txt", "x.png", ("invalid",)),
    ],
)
def test_path_endpoint_refuses_unsafe_paths(storage, source, output, words):
    root, outside = storage
    output = output.replace("OUTSIDE", str(outside))  # an absolute path into the folder beside the root
    before = _snapshot(root, outside)
    body = _assert_error(
        _path_client(root).post("/remove-background/path", json={"sourceImagePath": source, "outputImagePath": output}),
        400,
        *words,
    )
    assert body["error"]
    assert _snapshot(root, outside) == before  # nothing written anywhere
    assert not (root.parent / "evil.png").exists()


def test_path_endpoint_refuses_symlinks(storage):
    """No symbolic link is followed or replaced under the root, whether it leads out or not."""
    root, outside = storage
    (root / "link-dir").symlink_to(outside, target_is_directory=True)
    (root / "link-file.png").symlink_to(outside / "secret.png")
    (root / "dangling.png").symlink_to(outside / "created.png")
    (root / "in" / "inside-link.png").symlink_to(root / "in" / "photo.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    before = _snapshot(root, outside)
    client = _path_client(root)
    for source, output in [
        ("link-dir/secret.png", "x.png"),  # a folder link out
        ("link-file.png", "x.png"),  # a file link out
        ("in/inside-link.png", "x.png"),  # a link that stays inside
        ("loop.png", "x.png"),
        ("in/photo.png", "link-dir/evil.png"),  # writing through a folder link out
        ("in/photo.png", "link-file.png"),  # replacing a link to a file outside
        ("in/photo.png", "dangling.png"),  # a dangling link would create a file outside
        ("in/photo.png", "link-dir/new/deeper.png"),
        ("in/photo.png", "loop.png"),
    ]:
        response = client.post("/remove-background/path", json={"sourceImagePath": source, "outputImagePath": output})
        body = _assert_error(response, 400, "symbolic link")
        assert str(root) not in body["error"]  # no server paths in messages
    assert _snapshot(root, outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]


class GatedRemover(RemoveOnly):
    """Holds its first call until ``release`` is set, keeping the only worker busy meanwhile."""

    def __init__(self) -> None:
        self.inner = BackgroundRemover(RectPredictor())
        self.busy = threading.Event()
        self.release = threading.Event()

    def remove(self, image, options=None):
        if not self.busy.is_set():
            self.busy.set()
            self.release.wait(10)
        return self.inner.remove(image, options)


@pytest.mark.parametrize("side", ["source", "output"])
def test_path_endpoint_symlink_swapped_in_while_queued_cannot_escape(storage, side):
    """The check-then-use race: the request is accepted and queued, then a symbolic link out of the
    root replaces the source (read side) or the output's folder (write side) before a worker runs it."""
    root, outside = storage
    (root / "out").mkdir()
    remover = GatedRemover()
    app = create_app(remover, ServeSettings(warmup=False, workers=1, storage_root=root, allowed_hosts=HOSTS))
    pool = app.state.service.pool

    def swap() -> None:
        if side == "source":
            (root / "in" / "photo.png").unlink()
            (root / "in" / "photo.png").symlink_to(outside / "secret.png")
        else:
            (root / "out").rename(root / "out-old")
            (root / "out").symlink_to(outside, target_is_directory=True)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            files = {"file": ("a.png", _encode(_picture(8, 8)), "image/png")}
            blocker = asyncio.create_task(client.post("/remove-background", files=files))
            while not remover.busy.is_set():
                await asyncio.sleep(0.01)
            body = {"sourceImagePath": "in/photo.png", "outputImagePath": "out/cut.png"}
            queued = asyncio.create_task(client.post("/remove-background/path", json=body))
            while pool._work_queue.qsize() < 1:  # accepted, checked as far as the loop checks, waiting
                await asyncio.sleep(0.01)
            swap()
            remover.release.set()
            return await blocker, await queued

    blocked, response = asyncio.run(scenario())
    assert blocked.status_code == 200
    _assert_error(response, 400, "symbolic link")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]  # nothing written outside
    assert not list(root.rglob("cut.png"))


def test_path_endpoint_holds_the_output_folder_it_checked(storage):
    """Renaming the output's folder while the model runs moves the result with it: the write goes to
    the folder that was checked (by descriptor), never to whatever has its name by then."""
    root, outside = storage
    (root / "out").mkdir()

    class Swapping(RemoveOnly):
        def remove(self, image, options=None):
            (root / "out").rename(root / "out-old")
            (root / "out").symlink_to(outside, target_is_directory=True)
            return BackgroundRemover(RectPredictor()).remove(image, options)

    body = {"sourceImagePath": "in/photo.png", "outputImagePath": "out/new/cut.png"}
    response = _path_client(root, Swapping()).post("/remove-background/path", json=body)
    assert response.status_code == 200, response.text
    assert Image.open(root / "out-old" / "new" / "cut.png").size == (40, 30)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]


def test_path_endpoint_long_name_is_400(storage):
    root, _ = storage
    client = _path_client(root)
    for source, output, field in [
        ("in/photo.png", "a" * 300 + ".png", "outputImagePath"),
        ("in/photo.png", "out/" + "é" * 130 + ".png", "outputImagePath"),  # 264 bytes in UTF-8
        ("b" * 300 + ".png", "x.png", "sourceImagePath"),
    ]:
        response = client.post("/remove-background/path", json={"sourceImagePath": source, "outputImagePath": output})
        body = _assert_error(response, 400, field, "longer than 255 bytes")
        assert body["detail"]["max"] == 255
    assert sorted(p.name for p in root.iterdir()) == ["in"]


def test_path_endpoint_errors(storage):
    root, _ = storage
    client = _path_client(root, max_pixels=100)
    (root / "notes.txt").write_text("hello")
    (root / "bomb.png").write_bytes(_png_header(5000, 5000))
    post = lambda **body: client.post("/remove-background/path", json=body)  # noqa: E731
    _assert_error(post(sourceImagePath="missing.png", outputImagePath="x.png"), 404, "no such file")
    _assert_error(post(sourceImagePath="notes.txt", outputImagePath="x.png"), 415)
    _assert_error(post(sourceImagePath="bomb.png", outputImagePath="x.png"), 413, "too many pixels")
    _assert_error(post(sourceImagePath="in/photo.png", outputImagePath="x.png", threshold=2), 422, "threshold")
    _assert_error(post(sourceImagePath="in/photo.png"), 422, "outputImagePath")
    _assert_error(post(sourceImagePath="in/photo.png", outputImagePath="x.png", extra=1), 422)
    _assert_error(post(sourceImagePath="", outputImagePath="x.png"), 422)
    assert not (root / "x.png").exists()
    small = _path_client(root, max_upload_mb=0.0001)
    response = small.post(
        "/remove-background/path", json={"sourceImagePath": "in/photo.png", "outputImagePath": "x.png"}
    )
    _assert_error(response, 413, "too large")


def test_path_endpoint_timeout_writes_nothing(storage):
    root, _ = storage
    client = _path_client(root, SlowRemover(0.6), request_timeout_s=0.2)
    body = {"sourceImagePath": "in/photo.png", "outputImagePath": "late.png"}
    _assert_error(client.post("/remove-background/path", json=body), 504, "timed out")
    time.sleep(0.8)  # the inference finished meanwhile: its client was told 504, so it is not written
    assert sorted(p.name for p in root.iterdir()) == ["in"]


def test_path_endpoint_disabled_without_a_storage_root(client):
    response = client.post("/remove-background/path", json={"sourceImagePath": "a.png", "outputImagePath": "b.png"})
    _assert_error(response, 501, "--storage-root")


def test_storage_root_must_be_a_folder(tmp_path, remover):
    with pytest.raises(ValueError, match="not a folder"):
        create_app(remover, ServeSettings(storage_root=tmp_path / "missing", warmup=False))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="workers"):
        ServeSettings(workers=0)
    with pytest.raises(ValueError, match="max_queue"):
        ServeSettings(max_queue=-1)
    for name in ("max_matting_pixels", "max_output_mb"):
        with pytest.raises(ValueError, match=name):
            ServeSettings(**{name: 0})
    for hosts, words in [(["example.com:8000"], "without a port"), (["a*.example.com"], "'*.example.com'")]:
        with pytest.raises(ValueError, match=words):
            ServeSettings(allowed_hosts=hosts)
    with pytest.raises(ValueError, match="a list"):
        ServeSettings(allowed_hosts="example.com")
    with pytest.raises(ValueError, match="empty"):
        ServeSettings(allowed_hosts=[])
    assert ServeSettings(allowed_hosts=["Example.COM", "::1", "[0:0::1]", "*.lan"]).allowed_hosts == [
        "example.com",
        "[::1]",
        "*.lan",
    ]


def test_host_header_must_be_allowed(remover):
    """Against DNS rebinding: by default only the loopback names are answered; others get 400."""
    strict = TestClient(create_app(remover, ServeSettings(warmup=False)))
    for host, status in [
        ("localhost", 200),
        ("LocalHost:8000", 200),
        ("127.0.0.1:8000", 200),
        ("[::1]:8000", 200),
        ("evil.example", 400),
        ("localhost.evil.example", 400),
        ("0.0.0.0:8000", 400),
        ("testserver", 400),
    ]:
        assert strict.get("/health", headers={"host": host}).status_code == status, host
    refused = strict.post("/remove-background", headers={"host": "evil.example"}, files={"file": ("a.png", b"x")})
    assert refused.status_code == 400 and refused.text == "Invalid host header"
    wider = TestClient(create_app(remover, ServeSettings(warmup=False, allowed_hosts=["api.example.com", "*.lan"])))
    for host, status in [("api.example.com", 200), ("box.lan:8000", 200), ("localhost", 400), ("evil.example", 400)]:
        assert wider.get("/health", headers={"host": host}).status_code == status, host
    anyone = TestClient(create_app(remover, ServeSettings(warmup=False, allowed_hosts=["*"])))
    assert anyone.get("/health", headers={"host": "evil.example"}).status_code == 200


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1", "localhost", "[::1]"]),
        ("localhost", ["localhost", "127.0.0.1", "[::1]"]),
        ("::1", ["[::1]", "localhost", "127.0.0.1"]),
        ("127.0.0.2", ["127.0.0.2", "localhost", "127.0.0.1", "[::1]"]),
        ("0.0.0.0", ["localhost", "127.0.0.1", "[::1]"]),  # 0.0.0.0 itself is no name to answer
        ("::", ["localhost", "127.0.0.1", "[::1]"]),
        ("192.168.1.5", ["192.168.1.5"]),
        ("fe80::1", ["[fe80::1]"]),
        ("Box.LAN", ["box.lan"]),
    ],
)
def test_default_allowed_hosts(bind, expected):
    assert default_allowed_hosts(bind) == expected


# -- the worker pool, QA headers, quality presets ----------------------------------------------


def test_pool_threads_are_bounded(remover):
    """However many requests arrive at once, inference runs in at most ``workers`` threads, never on
    the event loop's, and concurrent requests on the shared model get exactly their own results."""
    seen: set[str] = set()

    class Recording(RemoveOnly):
        def remove(self, image, options=None):
            seen.add(threading.current_thread().name)
            return remover.remove(image, options)

    app = create_app(Recording(), ServeSettings(workers=2, warmup=False, allowed_hosts=HOSTS))
    client = TestClient(app)
    pictures = [_picture(32 + 4 * i, 24 + 2 * i, seed=i) for i in range(6)]
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        results[i] = _post(client, _encode(pictures[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, picture in enumerate(pictures):
        np.testing.assert_array_equal(np.asarray(_image(results[i])), np.asarray(remover.remove(picture)))
    assert 1 <= len(seen) <= 2 and all(name.startswith("u2net-serve") for name in seen)
    assert app.state.service.pending == 0


def test_each_cutout_carries_its_confidence_and_qa_flags() -> None:
    client, _ = _rect_client()
    response = _post(client, _encode(_picture(80, 60)))
    _image(response)
    # RectPredictor: a centred rectangle with one soft column, so a confident mask with no flag.
    assert response.headers["X-QA-Flags"] == "ok"
    assert 0.9 < float(response.headers["X-Confidence"]) < 1.0
    blank = _client(BackgroundRemover(type("Blank", (FullSizePredictor,), {"predict": _zeros})()))
    flagged = _post(blank, _encode(_picture(80, 60)), mask_only="true")
    assert flagged.headers["X-QA-Flags"] == "empty" and float(flagged.headers["X-Confidence"]) == 0.0


def _zeros(self, rgb: np.ndarray) -> np.ndarray:
    return np.zeros(rgb.shape[:2], np.float32)


def test_quality_presets_are_form_fields() -> None:
    client, _ = _rect_client()
    for quality in ("fast", "balanced", "best"):
        assert _image(_post(client, _encode(_picture(80, 60)), quality=quality)).size == (80, 60)
    refused = _post(client, _encode(_picture(80, 60)), quality="ultra")
    assert refused.status_code == 400 and "quality must be one of" in refused.json()["error"]
