"""Our checkpoint format, and any weights file read into it: :class:`Checkpoint` and :func:`load_checkpoint`.

A checkpoint file is a ``torch.save``\\ d dict of plain values (tensors, numbers, strings, lists, dicts: what
``torch.load(..., weights_only=True)`` accepts) whose keys are the fields of :class:`Checkpoint`, plus
``format_version``. Files without that key are version 0: the trainer's files from before it existed, with
the same keys, read as they are. A file of a newer version than :data:`FORMAT_VERSION` is refused.

:func:`load_checkpoint` also reads other weights into a ``Checkpoint`` (weights only, no training state):
official ``.pth`` files and bare state dicts, ONNX U²-Nets (see :mod:`u2net.models.onnx_import`) and pretrained
tags (downloaded on first use; the tag's :class:`~u2net.models.PretrainedCfg` gives the preprocessing).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..data.preprocessing import Preprocessing
from ..fileio import atomic_write
from .onnx_import import read_onnx_checkpoint
from .pretrained import PRETRAINED, PretrainedCfg, download_weights, looks_like_html, pretrained_tag
from .registry import model_factory
from .state_dict import check_state_dict, infer_architecture, load_state_dict

__all__ = ["FORMAT_VERSION", "Checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1  # 0: files without ``format_version`` (same keys); 1: the key added


@dataclass(eq=False)  # tensors have no plain ``==``: compare to_dict() entries instead
class Checkpoint:
    """A U²-Net's weights, what rebuilds and feeds the model, and (files the trainer wrote) the training state.

    ``model`` is the state dict; ``model_name`` and ``model_args`` rebuild the model (``None`` name: told by
    the weights' shapes). ``preprocessing`` is ``None`` where the weights do not say (official ``.pth`` files,
    rembg's ONNX files): inference then uses ``Preprocessing()``. The fields from ``config`` on are the
    trainer's (empty elsewhere); ``optimizer is None`` means there is nothing to resume. ``extra`` keeps keys
    this version does not know, written back as they were; ``source`` (not stored) names the file for messages.
    """

    model: dict[str, torch.Tensor]
    weights_source: str = "model"  # what ``model`` holds: the run's own weights, or best.pt's "ema" / "start"
    model_name: str | None = None
    model_args: dict = field(default_factory=dict)
    preprocessing: Preprocessing | None = None
    config: dict | None = None  # the run's resolved configuration
    trainer: dict | None = None  # its TrainerConfig, as a dict
    step: int = 0
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    best: float | None = None
    best_metrics: dict = field(default_factory=dict)
    best_source: str = ""
    initial_metrics: dict = field(default_factory=dict)
    ema: dict | None = None
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    optimizer: dict | None = None
    scaler: dict | None = None
    rng: dict | None = None
    extra: dict = field(default_factory=dict)
    source: str = "checkpoint"
    format_version: int = field(default=FORMAT_VERSION, init=False)  # in memory always the current format

    @property
    def has_training_state(self) -> bool:
        """Whether a run can resume from this checkpoint (the trainer wrote it)."""
        return self.optimizer is not None

    def check_training_state(self) -> None:
        """Refuse, in one line naming the file, training state no run can resume from (a damaged or hand-made
        file: a step of ``"abc"`` or -5, a history that is not a list ...), before anything of it is applied.
        The RNG states and the optimizer's moments are checked by the trainer, which knows the parameters."""
        problems = []
        for key in ("step", "epoch"):
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                problems.append(f"{key} {value!r} is not a whole number >= 0")
        if not _is_number(self.train_seconds) or not 0 <= self.train_seconds < math.inf:
            problems.append(f"train_seconds {self.train_seconds!r} is not a number of seconds >= 0")
        if self.best is not None and not _is_number(self.best):
            problems.append(f"best {self.best!r} is not a number")
        for key in ("metrics", "best_metrics", "initial_metrics"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or not all(_is_number(v) for v in value.values()):
                problems.append(f"{key} is not a dict of numbers")
        if not isinstance(self.history, list) or not all(isinstance(row, Mapping) for row in self.history):
            problems.append("history is not a list of dicts")
        optimizer = self.optimizer
        if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("state"), Mapping):
            problems.append("its optimizer state is not an optimizer's state_dict()")
        elif not isinstance(optimizer.get("param_groups"), list):
            problems.append("its optimizer state has no list of param_groups")
        for key in ("scaler", "rng", "ema"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), Mapping):
                problems.append(f"{key} is not a dict")
        if isinstance(self.ema, Mapping) and self.ema:
            updates = self.ema.get("updates")
            if not isinstance(self.ema.get("model"), Mapping) or not _is_int(updates) or updates < 0:
                problems.append("ema is not an EMA's state (weights under 'model', a count of 'updates' >= 0)")
        if problems:
            raise ValueError(f"{self.source}: cannot resume from it: {'; '.join(problems)}")

    def to_dict(self) -> dict:
        """What the file stores: a plain dict, ``preprocessing`` as a dict of lists (``weights_only`` loading)."""
        state = {key: value for key, value in self.extra.items() if key not in _STORED}
        for key in _STORED:
            state[key] = getattr(self, key)
        state["model"] = dict(self.model)
        state["preprocessing"] = self.preprocessing.to_dict() if self.preprocessing is not None else None
        return state

    @classmethod
    def from_dict(cls, state: Mapping, source: str = "checkpoint") -> Checkpoint:
        """A stored dict (any version up to :data:`FORMAT_VERSION`; ``{"model": state_dict}`` at least)."""
        version = state.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"{source}: format_version {version!r} is not a checkpoint format version")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: checkpoint format version {version}, newer than this u2net reads (up to "
                f"{FORMAT_VERSION}); upgrade u2net to load it"
            )
        if not isinstance(state.get("model"), Mapping):
            raise ValueError(f"{source}: holds no state dict under 'model'")
        known = {key: state[key] for key in _FIELDS if key in state and state[key] is not None}
        known["model"] = dict(known["model"])
        args = known.get("model_args") or {}
        if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
            raise ValueError(f"{source}: its model_args are not a dict of named arguments ({type(args).__name__})")
        known["model_args"] = dict(args)
        if "preprocessing" in known:
            try:
                known["preprocessing"] = Preprocessing.from_dict(known["preprocessing"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{source}: its stored preprocessing is not valid ({exc})") from None
        extra = {key: value for key, value in state.items() if key not in _STORED}
        return cls(**known, extra=extra, source=source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` with ``torch.save`` to a temporary file beside ``path``, then rename it over
        ``path``: a crash or Ctrl-C mid-write never leaves a truncated checkpoint."""
        with atomic_write(path) as f:
            torch.save(self.to_dict(), f)
        return Path(path)

    def build_model(self, map_location: str | torch.device = "cpu") -> nn.Module:
        """The model these weights belong to, rebuilt and loaded (strict), in eval mode on ``map_location``.

        The model is first built on the meta device (shapes, no memory) and compared with the weights: arguments
        that do not fit them (a few bytes asking for thousands of channels) fail here, before any allocation."""
        try:
            name = self.model_name or infer_architecture(self.model)
        except ValueError as exc:
            raise ValueError(f"{self.source}: {exc}") from None
        factory = model_factory(name)
        try:
            with torch.device("meta"):
                skeleton = factory(**self.model_args)
        except (TypeError, ValueError) as exc:  # bounds or keys of the arguments: see u2net.models.u2net
            raise ValueError(f"{self.source}: its model_args do not build a {name} ({exc})") from None
        check_state_dict(skeleton, self.model, source=self.source)
        model = factory(**self.model_args)  # the arguments now fit weights that exist: memory as the file's
        load_state_dict(model, self.model, source=self.source)
        return model.to(map_location).eval()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The stored keys: every field but ``extra`` and ``source``; all but ``format_version`` are read back as given.
_STORED = tuple(f.name for f in fields(Checkpoint) if f.name not in ("extra", "source"))
_FIELDS = tuple(key for key in _STORED if key != "format_version")


def pretrained_cfg_of(path_or_tag: str | os.PathLike) -> PretrainedCfg | None:
    """The catalogue entry when ``path_or_tag`` is a pretrained tag (:func:`~u2net.models.pretrained.pretrained_tag`:
    a tag means the tag even where a file of that name exists; ``./u2netp.duts`` names the file)."""
    tag = pretrained_tag(path_or_tag)
    return PRETRAINED[tag] if tag is not None else None


def resolve_weights(path_or_tag: str | os.PathLike) -> Path:
    """The file behind a path or a pretrained tag (the bundled file, the cache, or a download)."""
    tag = pretrained_tag(path_or_tag)
    if tag is not None:
        return download_weights(tag)
    path = Path(path_or_tag).expanduser()
    if not path.exists():
        tags = f" (or a pretrained tag: {', '.join(PRETRAINED)})" if len(path.parts) == 1 else ""
        raise FileNotFoundError(f"{path}: weights file not found{tags}")
    return path


def _read_torch_file(path: Path) -> dict:
    """A PyTorch weights file as a dict with ``"model"``: ours as saved, an official ``.pth`` as ``{"model": sd}``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if looks_like_html(head):
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


def load_checkpoint(path_or_tag: str | os.PathLike) -> Checkpoint:
    """Read a weights file (reading it once) or pretrained tag into a :class:`Checkpoint`.

    Our checkpoints as saved; official ``.pth`` files and bare state dicts as weights alone; ``.onnx`` files
    (ours, or rembg's u2net / u2netp / u2net_human_seg) imported back into a state dict, with the preprocessing
    their metadata names. A tag's preprocessing is its catalogue entry's. Raises ``FileNotFoundError`` or a
    ``ValueError`` naming the file.
    """
    path = resolve_weights(path_or_tag)
    state = read_onnx_checkpoint(path) if path.suffix.lower() == ".onnx" else _read_torch_file(path)
    checkpoint = Checkpoint.from_dict(state, source=str(path_or_tag))
    cfg = pretrained_cfg_of(path_or_tag)
    if cfg is not None:  # the catalogue says what these published weights expect
        checkpoint.preprocessing = cfg.preprocessing
    return checkpoint
