"""Shared fixtures and helpers: a tiny synthetic dataset and checkpoint, the reference files of the original
U²-Net, test doubles of a predictor, photos and folders of them as removal runs take them, and no network.

Test modules import the helpers from here (``from .conftest import ...``) or from a ``helpers_<topic>.py``
module; no test module imports another."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import


def run_python_json(code: str, *args: str, cwd: Path, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh Python (one thread, this checkout first on the path) with ``args``; its last line of
    output, parsed as JSON. Fails the test with the child's stderr if it exits with an error."""
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


TINY_PREPROCESSING = {"image_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def save_tiny_checkpoint(path: Path, seed: int = 0):
    """Save a random-weight U²-Net† validated at 64 px as one of our checkpoints; returns the model."""
    import torch

    import u2net

    torch.manual_seed(seed)
    model = u2net.create_model("u2netp")
    torch.save({"model": model.state_dict(), "model_name": "u2netp", "preprocessing": TINY_PREPROCESSING}, path)
    return model


def lively_u2netp(seed: int = 0):
    """U²-Net† with random weights, non-trivial BatchNorm statistics and output convolutions scaled so that
    the probabilities spread over (0, 1) instead of sitting at 0.5."""
    import torch

    import u2net

    torch.manual_seed(seed)
    model = u2net.create_model("u2netp")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        for name in ("side1", "side2", "side3", "side4", "side5", "side6", "outconv"):
            getattr(model, name).weight.mul_(10.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny U²-Net† checkpoint with random weights (64 px), shared by a test module."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def remover(checkpoint):
    """A background remover on the tiny checkpoint (PyTorch, CPU)."""
    from u2net.inference import BackgroundRemover, Predictor

    return BackgroundRemover(Predictor.from_path(checkpoint, device="cpu"))


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A 24 + 8 image synthetic set (64–96 px) in the DUTS layout."""
    from u2net.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    return generate_synthetic_dataset(root, num_train=24, num_val=8, seed=1, min_size=64, max_size=96, progress=False)


# Removal options that hand the model's map on as it is (one view, no sharpening): for tests of the plumbing
# around the map (exact alpha values, crops, composites), not of the default's test-time views.
PLAIN = {"views": 1, "sharpen": 1.0}


class FullSizePredictor:
    """Base of the test doubles for a predictor: a subclass's ``predict(rgb)`` gives the H×W map at the
    image's own size; the image (3×H×W, as a real model's input is laid out) is its own "preprocessed
    input", so that the remover's resize of the model's output back to the image's size leaves the map as
    it is.

    Like a real model, it sees the mirror image of a photo as the mirror image of what it sees in the photo
    (the remover's default averages both views), even where ``predict`` ignores the pixels: an input that is
    the mirror image of a photo it preprocessed gets ``predict(photo)`` mirrored."""

    def preprocess(self, rgb: np.ndarray, resize: str | None = None) -> np.ndarray:  # noqa: ARG002 - full size
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self._photos = getattr(self, "_photos", set()) | {rgb.tobytes()}
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def predict_batch(self, batch, sizes=None) -> list[np.ndarray]:
        photos = [np.ascontiguousarray(np.asarray(x).transpose(1, 2, 0)) for x in batch]
        probs = [np.asarray(self._predict_view(rgb), np.float32) for rgb in photos]
        assert all(prob.shape == rgb.shape[:2] for prob, rgb in zip(probs, photos))
        return probs

    def _predict_view(self, rgb: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(rgb[:, ::-1])
        if rgb.tobytes() not in getattr(self, "_photos", ()) and mirrored.tobytes() in getattr(self, "_photos", ()):
            return np.asarray(self.predict(mirrored))[:, ::-1]
        return self.predict(rgb)


# -- test doubles of a predictor ---------------------------------------------------------------
class FakePredictor(FullSizePredictor):
    """``predict`` gives ``fn(rgb)``: a known mask, checked to be at the image's size."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.seen: list[np.ndarray] = []

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        self.seen.append(rgb)
        prob = np.asarray(self.fn(rgb), np.float32)
        assert prob.shape == rgb.shape[:2]
        return prob


class RecordingPredictor(FullSizePredictor):
    """The red channel as the map; records the size of every batch and fails on request: on any batch
    holding an image whose top-left pixel is ``poison`` (red), or with ``interrupt_after`` batches done."""

    def __init__(self, poison: int | None = None, interrupt_after: int | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.poison, self.interrupt_after = poison, interrupt_after
        self.lock = threading.Lock()

    def predict_batch(self, batch, sizes=None) -> list[np.ndarray]:
        with self.lock:
            if self.interrupt_after is not None and len(self.batch_sizes) >= self.interrupt_after:
                raise KeyboardInterrupt
            self.batch_sizes.append(len(batch))
        if self.poison is not None and any(rgb[0, 0, 0] == self.poison for rgb in batch):
            raise RuntimeError("the model choked")
        return super().predict_batch(batch, sizes)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[..., 0] / 255.0


# -- photos, folders of them, and what a removal run writes ------------------------------------
def _picture(h=30, w=40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tree(root) -> None:
    """Three good images in nested folders, a truncated JPEG, a text file named .png, a .txt."""
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_picture(30, 40)).save(root / "a.jpg")
    Image.fromarray(_picture(24, 32)).convert("L").save(root / "sub" / "b.png")
    Image.fromarray(_picture(20, 20)).convert("RGBA").save(root / "sub" / "deeper" / "c.webp")
    Image.fromarray(_picture(64, 64)).save(root / "sub" / "full.jpg")
    data = (root / "sub" / "full.jpg").read_bytes()
    (root / "sub" / "full.jpg").unlink()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.png").write_text("not an image at all")
    (root / "readme.txt").write_text("ignored")


def _photo(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[0, 0, 0] = seed  # each image identifiable by its first pixel
    return rgb


def _folder(root, count: int, sizes=((24, 32),)) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        name = f"{i:02d}.png"
        Image.fromarray(_photo(i + 1, h, w)).save(root / name)
        names.append(name)
    return names


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _rows(table: Path) -> dict[str, tuple[str, str]]:
    """The QA table as {input file name: (confidence, flags)}."""
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {Path(row["input"]).name: (row["confidence"], row["flags"]) for row in csv.DictReader(f)}


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nnewpath 0 0 moveto 16 16 lineto stroke\n"


def _disc_photo(path: Path) -> Path:
    """A 64×48 photo: a red disc (the subject) on a light grey background."""
    image = Image.new("RGB", (64, 48), (225, 225, 225))
    ImageDraw.Draw(image).ellipse((18, 10, 46, 38), fill=(200, 30, 30))
    image.save(path)
    return path


# -- no network; photos to mine ----------------------------------------------------------------
class NetworkAccess(OSError):
    """Raised by the patched socket and urllib functions: a test tried to reach the network."""


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No network (sockets and urllib refuse) and an empty ``U2NET_HOME``; returns that folder."""

    def refuse(*args, **kwargs):
        raise NetworkAccess("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    home = tmp_path / "u2net_home"
    monkeypatch.setenv("U2NET_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six photos to mine: three clean discs on flat grey, three cluttered with noise and faint shapes."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.full((72, 96, 3), 128, np.uint8)
        if i >= 3:
            image = rng.integers(0, 256, image.shape, dtype=np.uint8)
        cv2.circle(image, (48, 36), 18, (250, 30, 30), -1)
        Image.fromarray(image).save(folder / f"p{i}.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder
