"""u2net: train, evaluate and ship U²-Net salient-object / background-removal models."""

import os
from importlib import import_module

# albumentations looks for a newer release on PyPI when imported; a background remover must not touch
# the network (nor wait up to 2 s for it) unless asked to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "load_model", "load_weights"]

# The model API, imported from .models on first use: `import u2net` (which every u2net module runs first) must
# not import torch, or ONNX Runtime inference and the `u2net` command would pay for it.
_FROM_MODELS = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in _FROM_MODELS:
        return getattr(import_module(f"{__name__}.models"), name)
    if name == "models":  # an attribute once u2net was imported, as when this module imported it
        return import_module(f"{__name__}.models")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
