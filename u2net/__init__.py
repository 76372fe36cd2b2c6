"""u2net: train, evaluate and ship U²-Net salient-object / background-removal models."""

import os

# albumentations looks for a newer release on PyPI when imported; a background remover must not touch
# the network (nor wait up to 2 s for it) unless asked to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .models import create_model, list_models, list_pretrained, load_model, load_weights

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "load_model", "load_weights"]
