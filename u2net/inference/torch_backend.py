"""The PyTorch backend of :class:`~u2net.inference.Predictor`: its own module, so that the ONNX Runtime path
(the ``u2net`` command's default) never imports torch."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from ..device import autocast_context, pick_device, resolve_precision


class TorchBackend:
    """Runs a PyTorch U²-Net; returns probabilities of the fused output.

    Satisfies :class:`~u2net.inference.predictor.InferenceBackend`; ``device`` is where it runs.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        self.device: torch.device = pick_device(str(device)) if isinstance(device, str) else device
        self.precision: str = resolve_precision(precision, self.device)
        autocast_context(self.device, self.precision)  # an unusable precision fails here, not on every image
        self._autocast: Callable[[], AbstractContextManager] = lambda: autocast_context(self.device, self.precision)
        self.model = model.to(self.device).eval()
        self.fixed_size: int | None = None  # any input size
        self.max_batch: int | None = None  # any batch size

    @property
    def on_gpu(self) -> bool:
        """Whether it computes on a CUDA GPU."""
        return self.device.type == "cuda"

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N×3×S×S float32 normalised images -> N×S×S float32 probabilities."""
        x = torch.from_numpy(batch).to(self.device)
        with self._autocast():
            fused = self.model(x)[0]
        return torch.sigmoid(fused.float())[:, 0].cpu().numpy()
