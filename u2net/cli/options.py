"""The removal options as command-line flags, generated from their one declaration
(:data:`~u2net.inference.options.OPTION_SPECS`): the flag's name, type, bounds, choices and help come from there.
Every flag defaults to "not given" (``None``), so that the ``--quality`` preset's value stands unless one is."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import one_line
from ..inference.options import DEFAULT_QUALITY, EXCLUSIVE, QUALITY_PRESETS, OptionSpec, RemovalOptions, parse_color
from .common import UsageError, number_in, shown

PRESET_FIELDS = frozenset(name for preset in QUALITY_PRESETS.values() for name in preset)


def color(text: str) -> tuple[int, ...]:
    """An argparse type: a colour (see :func:`~u2net.inference.options.parse_color`)."""
    try:
        return parse_color(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# How the CLI reads the values that are not plain numbers or choices.
CLI_TYPES = {"bg_color": color, "bg_image": Path}


def help_text(spec: OptionSpec, default: object) -> str:
    """The declaration's help, with the default where it says something (argparse's % escaped)."""
    if spec.name == "quality":
        note = f" (default {DEFAULT_QUALITY})"
    elif spec.name in PRESET_FIELDS:
        note = " (default: the preset's)"
    elif default is None or isinstance(default, bool):
        note = ""
    else:
        note = f" (default {default})"
    return (spec.help + note).replace("%", "%%")


def add_option_arguments(group: argparse._ArgumentGroup, specs: list[OptionSpec]) -> None:
    """A flag for each of ``specs``: ``--name`` (or the declaration's ``flag``); a switch for booleans (``--no-x``
    for those on by default); the declared choices, or a number within the declared bounds."""
    defaults = RemovalOptions()
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for names in EXCLUSIVE:  # one argparse group per set: argparse then refuses two of them with both names
        shared = group.add_mutually_exclusive_group()
        exclusive.update(dict.fromkeys(names, shared))
    for spec in specs:
        default = getattr(defaults, spec.name, None)
        kwargs: dict = {"dest": spec.name, "default": None, "help": help_text(spec, default)}
        if spec.type is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif spec.choices is not None:
            kwargs.update(type=spec.type, choices=spec.choices)
        else:
            kwargs.update(type=CLI_TYPES.get(spec.name) or number_in(spec), metavar=spec.metavar)
        exclusive.get(spec.name, group).add_argument(spec.cli_flag, **kwargs)


def option_values(args: argparse.Namespace, specs: list[OptionSpec]) -> dict[str, object]:
    """The values of ``specs``' flags (``None``: not given), the background image decoded."""
    values = {spec.name: getattr(args, spec.name) for spec in specs}
    if values.get("bg_image") is not None:
        values["bg_image"] = background_image(values["bg_image"])
    return values


def background_image(path: Path):
    """The decoded --bg-image: read once, here, so that a bad file is one usage error, not a failure of every
    image."""
    from ..data.io import read_image

    if not path.is_file():
        raise UsageError(f"{shown(path)}: background image not found")
    try:
        return read_image(path)
    except Exception as exc:
        raise UsageError(f"{shown(path)}: cannot read the background image: {shown(one_line(exc))}") from None
