"""Resuming a run: read and check a checkpoint whole before anything of it is applied, then load the optimizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer

from ..models.checkpoint import Checkpoint, load_checkpoint
from .checkpoint import check_rng_state

_REGROUPED = "params.encoder_lr_scale the run was started with (0 freezes the encoder: another grouping)"


def read_resume_state(path: str | Path, module: nn.Module, optimizer: Optimizer) -> Checkpoint:
    """The checkpoint at ``path`` when a run training ``module`` with ``optimizer`` can resume from it; a
    ``ValueError`` naming the file and its first problem otherwise (the weights, the training counters, the
    optimizer's moments, the RNG states), so that a damaged file never starts a run (nor saves a ``last.pt``
    with step -5). The EMA's state is the trainer's :class:`~u2net.engine.selection.ModelSelection`'s to check."""
    from ..models.state_dict import check_state_dict

    state = load_checkpoint(path)
    if not state.has_training_state:
        raise ValueError(f"{path}: holds no training state; to fine-tune from weights use model.weights={path}")
    if state.weights_source != "model":  # best.pt holding the EMA's or the start's weights
        raise ValueError(
            f"{path}: holds the {state.weights_source} weights, not the run's own; resume from last.pt "
            f"beside it, or fine-tune from these with model.weights={path}"
        )
    state.check_training_state()
    check_state_dict(module, state.model, source=str(path))
    check_optimizer_state(state.optimizer, optimizer, path)
    if state.rng is not None:
        try:
            check_rng_state(state.rng)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot resume from it: {exc}") from None
    return state


def check_optimizer_state(saved: Mapping, optimizer: Optimizer, path: str | Path) -> None:
    """Refuse an optimizer state of another grouping of the parameters, or whose moments have other shapes
    than the parameters they belong to (``load_state_dict`` takes them, and the first step crashes)."""
    groups, own = saved["param_groups"], optimizer.param_groups
    sizes = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in groups]
    if sizes != [len(g["params"]) for g in own]:  # params.encoder_lr_scale 0 vs not: another grouping
        raise ValueError(
            f"{path}: its optimizer state does not fit this run's parameter groups (groups of {sizes} "
            f"parameters, this run's {[len(g['params']) for g in own]}); resume with the {_REGROUPED}"
        )
    params = {index: p for g, mine in zip(groups, own) for index, p in zip(g["params"], mine["params"])}
    for index, entry in saved["state"].items():
        param = params.get(index)
        if param is None or not isinstance(entry, Mapping):
            raise ValueError(f"{path}: its optimizer state has an entry {index!r} for no parameter of the run")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise ValueError(
                    f"{path}: its optimizer state does not fit the model: {key} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )


def load_optimizer_state(optimizer: Optimizer, state: Checkpoint, group_settings: Sequence[Mapping]) -> None:
    """Load ``state``'s optimizer state (its moments), then this run's ``group_settings`` over each group
    (rates before the schedule, weight decay, betas), so that resuming with other settings takes effect."""
    try:
        optimizer.load_state_dict(state.optimizer)
    except ValueError as exc:  # another grouping of the parameters (params.encoder_lr_scale 0 vs not)
        raise ValueError(
            f"{state.source}: its optimizer state does not fit this run's parameter groups ({exc}); resume with "
            f"the {_REGROUPED}"
        ) from None
    for group, settings in zip(optimizer.param_groups, group_settings):
        group.update(settings)
