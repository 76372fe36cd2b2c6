"""State dicts: wrapper prefixes stripped, strict loading with clear errors, the architecture told by shapes."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


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
    model.load_state_dict(check_state_dict(model, state_dict, source), strict=True)


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """``state_dict`` cleaned (see :func:`load_state_dict`) when its keys and shapes are exactly ``model``'s;
    ``ValueError`` naming ``source`` otherwise. Compares shapes only, so ``model`` may be built on the meta
    device: a file's model arguments are checked against its weights before any real memory is taken."""
    state_dict = clean_state_dict(state_dict)
    odd = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise ValueError(f"{source}: its weights hold values that are not tensors ({', '.join(map(str, odd[:3]))})")
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
    return state_dict


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
