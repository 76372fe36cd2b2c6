"""Shared fixtures: a tiny synthetic dataset and the reference files of the original U²-Net."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


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
