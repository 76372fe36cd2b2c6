"""Each removal option is declared once (:data:`u2net.inference.options.OPTION_SPECS`: bounds, help, the front
ends that expose it); the library's checks, the CLI's flags and the service's form fields and JSON members come
from it. These tests hold the library and both front ends to the declaration."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from u2net.cli import build_parser
from u2net.inference.options import FRONT_ENDS, OPTION_SPECS, RemovalOptions, front_end_specs

from .conftest import FullSizePredictor

BOUNDED = [spec for spec in OPTION_SPECS if spec.type in (int, float) and spec.choices is None and spec.low is not None]


def _remove_parser() -> argparse.ArgumentParser:
    (sub,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return sub.choices["remove"]


def _outside(spec) -> list[float]:
    """Values just outside the declared bounds (and NaN, which no bound admits)."""
    step = 1 if spec.type is int else 1e-3
    values = [spec.low if spec.open_low else spec.low - step]
    if spec.high is not None:
        values.append(spec.high + step)
    return values + ([float("nan")] if spec.type is float else [])


def test_every_option_is_declared_once_with_a_reason_for_each_front_end_left_out() -> None:
    names = [spec.name for spec in OPTION_SPECS]
    assert len(names) == len(set(names))
    assert set(names) == {field.name for field in dataclasses.fields(RemovalOptions)} | {"quality"}
    for spec in OPTION_SPECS:
        assert set(spec.fronts) <= set(FRONT_ENDS)
        assert spec.why or set(spec.fronts) == set(FRONT_ENDS), f"{spec.name}: say why a front end leaves it out"


@pytest.mark.parametrize("spec", BOUNDED, ids=lambda spec: spec.name)
def test_the_library_refuses_what_the_declaration_refuses(spec) -> None:
    for value in _outside(spec):
        with pytest.raises(ValueError, match=f"^{spec.name} must be "):
            RemovalOptions(**{spec.name: spec.type(value)})
    RemovalOptions(**{spec.name: spec.high if spec.high is not None else spec.low + 1})  # inside: accepted


def test_cli_flags_are_the_declaration() -> None:
    actions = {action.dest: action for action in _remove_parser()._actions}
    for spec in OPTION_SPECS:
        if "cli" not in spec.fronts:
            assert spec.name not in actions, f"{spec.name} is not the CLI's ({spec.why})"
            continue
        action = actions[spec.name]
        assert action.option_strings == [spec.cli_flag]
        assert action.help.replace("%%", "%").startswith(spec.help)
        assert action.default is None  # not given: the preset's value stands
        if spec.choices is not None:
            assert tuple(action.choices) == spec.choices


@pytest.mark.parametrize("spec", [spec for spec in BOUNDED if "cli" in spec.fronts], ids=lambda spec: spec.name)
def test_cli_refuses_values_outside_the_declared_bounds(spec, capsys) -> None:
    parser = _remove_parser()
    for value in _outside(spec):
        with pytest.raises(SystemExit):
            parser.parse_args(["in.png", "out.png", spec.cli_flag, str(value)])
        assert f"a value {spec.bounds_text()} expected" in capsys.readouterr().err
    inside = spec.high if spec.high is not None else spec.low + 1
    args = parser.parse_args(["in.png", "out.png", spec.cli_flag, str(inside)])
    assert getattr(args, spec.name) == inside


def _constraints(schema: dict) -> dict:
    """A field's JSON-schema constraints, from an ``anyOf`` of the type and null (an optional field) too."""
    merged = dict(schema)
    for option in schema.get("anyOf", []):
        merged.update(option)
    return merged


def _check_api_fields(properties: dict, what: str) -> None:
    api = front_end_specs("api")
    assert {name for name in properties} >= {spec.name for spec in api}, what
    assert not {spec.name for spec in OPTION_SPECS if "api" not in spec.fronts} & set(properties), what
    for spec in api:
        field = _constraints(properties[spec.name])
        assert field["description"].startswith(spec.help), (what, spec.name)
        assert field.get("default") is None
        if spec in BOUNDED:
            assert field.get("exclusiveMinimum" if spec.open_low else "minimum") == spec.low, (what, spec.name)
            assert field.get("maximum") == spec.high, (what, spec.name)


def test_api_form_fields_and_json_members_are_the_declaration() -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from u2net.inference import BackgroundRemover
    from u2net.serve import ServeSettings, create_app

    app = create_app(BackgroundRemover(FullSizePredictor()), ServeSettings(warmup=False))
    schemas = app.openapi()["components"]["schemas"]
    forms = [schema for name, schema in schemas.items() if name.startswith("Body_remove_background")]
    assert forms
    for form in forms:
        _check_api_fields(form["properties"], "form")
    _check_api_fields(schemas["PathRequest"]["properties"], "json")
