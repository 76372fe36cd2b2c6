"""Our ONNX files: the metadata they carry, and the few graph and file helpers export and import share.

Metadata (``metadata_props``): ``model_name``, ``image_size``, ``mean``, ``std``, ``normalization``,
``interpolation`` (what :class:`u2net.inference.Predictor` reads), plus ``model_args``, ``u2net_version``,
``precision``, ``batchnorm`` and, from the export script, ``weights_sha256``. Non-string values are JSON;
strings are stored as they are. :func:`decode_metadata` decodes them.

Here, below both the exporter (:mod:`u2net.export`) and the importer (:mod:`u2net.models.onnx_import`), so that
each format rule has one definition.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import require_extra
from ..fileio import atomic_write

__all__ = [
    "STRING_KEYS",
    "decode_metadata",
    "proto_metadata",
    "read_onnx_metadata",
    "require_onnx",
    "set_metadata",
    "topological_nodes",
    "write_onnx",
]

# Metadata keys whose values are plain strings (never JSON-decoded, so a hash that looks like a number stays text).
STRING_KEYS = frozenset({"model_name", "normalization", "interpolation", "u2net_version", "weights_sha256"})


def require_onnx():
    """The ``onnx`` module, imported on first use (only export, int8 quantisation and import need it: running a file
    does not); :class:`~u2net.errors.MissingExtraError` naming the ``train`` extra when it is not installed."""
    require_extra("converting ONNX files (export, int8, import into PyTorch)", "train", onnx="onnx")
    import onnx

    return onnx


def _encode(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def set_metadata(proto, metadata: Mapping) -> None:
    """Replace the metadata of a ModelProto by ``metadata`` (``None`` values left out)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        if value is None:
            continue
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), _encode(value)


def decode_metadata(raw: Mapping[str, str]) -> dict:
    """Stored metadata strings -> values: JSON decoded, except :data:`STRING_KEYS` and what is not JSON."""
    meta = {}
    for key, value in raw.items():
        if key not in STRING_KEYS:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        meta[key] = value
    return meta


def proto_metadata(proto) -> dict:
    """The decoded metadata of a loaded ModelProto."""
    return decode_metadata({entry.key: entry.value for entry in proto.metadata_props})


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an ONNX file, JSON values decoded (``{}`` for files without any, like rembg's)."""
    return proto_metadata(require_onnx().load(str(path), load_external_data=False))


def write_onnx(proto, path: str | os.PathLike) -> Path:
    """Save a ModelProto to ``path`` atomically (no half-written file, ever) and return the path."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path


def topological_nodes(graph) -> list:
    """The graph's nodes with every node after the producers of its inputs (files are not always sorted)."""
    available = {""} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or an undefined input at node {rest[0].name!r}")
        pending = rest
    return ordered
