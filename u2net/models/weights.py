"""Reading weights: official ``.pth`` files, our checkpoints, ONNX U²-Nets, and tags of published weights.

Building a model from a file alone (:func:`u2net.models.load_model`) is the factory's: it sits above this module.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .onnx_import import read_onnx_checkpoint
from .pretrained import PRETRAINED, _looks_like_html, download_weights

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def _resolve(path_or_tag: str | os.PathLike) -> Path:
    path = Path(path_or_tag).expanduser()
    if not path.exists() and str(path_or_tag) in PRETRAINED:
        return download_weights(str(path_or_tag))
    if not path.exists():
        tags = f" (or a pretrained tag: {', '.join(PRETRAINED)})" if len(path.parts) == 1 else ""
        raise FileNotFoundError(f"{path}: weights file not found{tags}")
    return path


def read_checkpoint(path_or_tag: str | os.PathLike) -> dict:
    """Load a weights file into a dict: our checkpoint as saved, an official ``.pth`` as ``{"model": sd}``.

    An ``.onnx`` file (ours, or rembg's u2net / u2netp / u2net_human_seg) is read back into a state dict:
    ``{"model": sd, "model_name": ...}`` (see :func:`u2net.models.onnx_import.read_onnx_checkpoint`).
    """
    path = _resolve(path_or_tag)
    if path.suffix.lower() == ".onnx":
        return read_onnx_checkpoint(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if _looks_like_html(head):
        raise ValueError(f"{path}: a web page, not a weights file (a failed download? delete it and fetch it again)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickle of objects: damaged or not weights at all
            raise ValueError(f"{path}: not a readable PyTorch weights file (not a weights-only pickle)") from None
        # torch's own message suggests weights_only=False, i.e. running code from the file: not here.
        raise ValueError(
            f"{path}: holds pickled Python objects, not just tensors (a whole model saved with torch.save(model)?); "
            "re-save its state_dict()"
        ) from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return {"model": obj["state_dict"]}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": dict(obj)}
    raise ValueError(f"{path}: holds neither a state dict nor a u2net checkpoint")


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` / ``_orig_mod.`` prefixes left by DataParallel, DDP or torch.compile."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Strictly load ``state_dict`` into ``model``, accepting wrapper prefixes and files saved before
    BatchNorm had ``num_batches_tracked`` (PyTorch 0.4, as the official u2net.pth was).

    Raises ``ValueError`` naming ``source`` and the first offending keys on any other mismatch.
    """
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = value.clone()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"{source}: does not fit model {name!r}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, path_or_tag: str | os.PathLike) -> nn.Module:
    """Load an official ``.pth``, one of our checkpoints, an ONNX U²-Net or a pretrained tag into ``model`` (strict)."""
    tag = PRETRAINED.get(str(path_or_tag)) if not Path(path_or_tag).expanduser().exists() else None
    name = getattr(model, "model_name", None)
    if tag is not None and name is not None and tag.architecture != name:
        raise ValueError(f"{path_or_tag} holds {tag.architecture} weights; this model is {name}")
    checkpoint = read_checkpoint(path_or_tag)
    load_state_dict(model, checkpoint["model"], source=str(path_or_tag))
    # The input size the weights were trained or validated at, where known: the trainer warns when a
    # fine-tuning run resizes to another (a silent 128² fine-tune of 320² weights scores far worse).
    size = (checkpoint.get("preprocessing") or {}).get("image_size") or (tag.input_size if tag else None)
    if size:
        model.weights_input_size = int(size)
    return model


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"u2net"`` or ``"u2netp"`` from a state dict's shapes (the official files carry no name)."""
    state_dict = clean_state_dict(state_dict)
    key = "stage1.rebnconv1.conv_s1.weight"
    if key not in state_dict:
        raise ValueError("not a U²-Net state dict (no stage1.rebnconv1.conv_s1.weight)")
    mid = state_dict[key].shape[0]
    return {32: "u2net", 16: "u2netp"}.get(mid) or _unknown(mid)


def _unknown(mid: int) -> str:
    raise ValueError(f"cannot tell the architecture: stage1 has {mid} middle channels (u2net 32, u2netp 16)")
