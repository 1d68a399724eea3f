"""Config validation: the JSON schema fills defaults and checks types; the registries check names.

Every failure is a ConfigError with one line that names the key and the allowed values, raised
while Snakemake parses the workflow, so nothing runs on a bad config.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError


def _with_defaults(validator_class):
    """A jsonschema validator that writes each property's `default` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft7Validator)


def key_path(parts: Iterable[Any]) -> str:
    """`['grid', 'seeds', 1]` -> `grid.seeds[1]`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "enum":
        return f"config key '{where}': {error.instance!r} is not one of {list(error.validator_value)}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"config key '{where}': {error.message}; allowed keys: {allowed}"
    return f"config key '{where}': {error.message}"


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def apply_schema(config: dict, schema: dict) -> dict:
    """Fill defaults into ``config`` in place and raise ConfigError on the first violation."""
    errors = sorted(_DefaultingValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0]))
    return config


def _check_names(where: str, names: Iterable[str], valid: Iterable[str]) -> None:
    valid = sorted(valid)
    for index, name in enumerate(names):
        if name not in valid:
            raise ConfigError(f"config key '{where}[{index}]': unknown name {name!r}; valid names: {valid}")


def check_grid_names(config: dict) -> None:
    """Names in the grid must exist in the dataset table and in the package registries."""
    from .backbones import BACKBONES, check_weight_source, resolve_backbone
    from .heads import HEADS
    from .strategies import parse_strategy, strategy_names

    grid = config["grid"]
    _check_names("grid.datasets", grid["datasets"], config["datasets"])
    _check_names("grid.heads", grid["heads"], HEADS)
    for index, name in enumerate(grid["strategies"]):
        try:
            parse_strategy(name)
        except ValueError as exc:
            raise ConfigError(
                f"config key 'grid.strategies[{index}]': {exc}; valid names: {strategy_names()}"
            ) from None
    for index, entry in enumerate(grid["backbones"]):
        where = f"grid.backbones[{index}]"
        try:
            spec = resolve_backbone(entry["name"])
        except KeyError:
            raise ConfigError(
                f"config key '{where}.name': unknown backbone {entry['name']!r}; registry names: {sorted(BACKBONES)} "
                "(or any torchvision/timm classification model name)"
            ) from None
        for w_index, weights in enumerate(entry["weights"]):
            try:
                check_weight_source(spec, weights)
            except ValueError as exc:
                raise ConfigError(f"config key '{where}.weights[{w_index}]': {exc}") from None


def check_dataset_entries(config: dict) -> None:
    """Each source kind needs its own keys; say which one is missing."""
    required = {"builtin": ["name"], "folder": ["path"], "url": ["url", "sha256"], "torchvision": ["name"]}
    for name, spec in config["datasets"].items():
        for key in required[spec["source"]]:
            if not spec.get(key):
                raise ConfigError(f"config key 'datasets.{name}.{key}' is required for source '{spec['source']}'")


def validate_config(config: dict, schema_path: str | Path, check_files: bool = True) -> dict:
    """Validate and complete a Snakemake config in place; returns it for convenience."""
    from .weights import check_weight_sources

    apply_schema(config, load_schema(schema_path))
    check_dataset_entries(config)
    check_grid_names(config)
    check_weight_sources(config, check_files=check_files)
    return config
