"""u2net: train, evaluate and ship U²-Net salient-object / background-removal models."""

import os

# albumentations looks for a newer release on PyPI when imported; a background remover must not touch
# the network (nor wait up to 2 s for it) unless asked to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .lazy import lazy_exports  # noqa: E402  (after the environment default)

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "load_model", "load_weights"]

# The model API, imported from .models on first use: `import u2net` (which every u2net module runs first) must
# not import torch, or ONNX Runtime inference and the `u2net` command would pay for it.
__getattr__, __dir__ = lazy_exports(
    __name__, dict.fromkeys(set(__all__) - {"__version__"}, "models"), ["models"], __all__
)
