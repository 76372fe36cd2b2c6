"""Lazy package attributes (PEP 562): a package's public names imported from their submodules on first use.

The packages' ``__init__`` files use it so that importing one name (``from u2net.inference import Predictor``)
does not import every submodule, and with them torch and albumentations, which ONNX Runtime inference and the
``u2net`` command never need.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import import_module


def lazy_exports(
    package: str, sources: Mapping[str, str], submodules: Iterable[str], public: Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``sources`` maps each lazy name to the submodule
    defining it; ``submodules`` are reachable as attributes too (as when the package imported them all);
    ``public`` is its ``__all__``."""
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> object:
        if name in sources:
            return getattr(import_module(f"{package}.{sources[name]}"), name)
        if name in submodules:
            return import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
