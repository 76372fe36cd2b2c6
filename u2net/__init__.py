"""u2net: train, evaluate and ship U²-Net salient-object / background-removal models."""

from .models import create_model, list_models, list_pretrained, load_model, load_weights

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "load_model", "load_weights"]
