"""Config validation: the JSON schema fills defaults and checks types; the registries check names.

Every failure is a ConfigError with one line that names the key and the allowed values, raised
while Snakemake parses the workflow, so nothing runs on a bad config. Torch-free.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .backbones.registry import check_weight_source, registered_names, resolve_backbone, stage_count
from .errors import ConfigError
from .heads import HEADS
from .naming import FILE_PREFIX, PRETRAIN_PREFIX, is_safe_name
from .strategies import FreezeFirst, parse_strategy, strategy_names

SAFE_NAME_RULE = "letters, digits, '_', '.' and '-', not starting with '.' or '-'"


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


def _coerce_integers(instance: Any, schema: dict) -> Any:
    """JSON Schema counts 2.0 as an integer; make it the int 2 so no job meets a float where it
    counts epochs or seeds."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds and isinstance(instance, float) and instance.is_integer():
        return int(instance)
    if isinstance(instance, dict):
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else {})
            instance[key] = _coerce_integers(value, sub)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        instance[:] = [_coerce_integers(item, schema["items"]) for item in instance]
    return instance


def apply_schema(config: dict, schema: dict) -> dict:
    """Fill defaults into ``config`` in place and raise ConfigError on the first violation."""
    errors = sorted(_DefaultingValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0]))
    return _coerce_integers(config, schema)


def _check_names(where: str, names: Iterable[str], valid: Iterable[str]) -> None:
    valid = sorted(valid)
    for index, name in enumerate(names):
        if name not in valid:
            raise ConfigError(f"config key '{where}[{index}]': unknown name {name!r}; valid names: {valid}")


def check_grid_names(config: dict) -> None:
    """Names in the grid must exist in the dataset table and in the package registries; a freeze
    depth must fit every backbone of the grid."""
    grid = config["grid"]
    _check_names("grid.datasets", grid["datasets"], config["datasets"])
    _check_names("grid.heads", grid["heads"], HEADS)
    strategies = {}
    for index, name in enumerate(grid["strategies"]):
        try:
            strategies[name] = parse_strategy(name)
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
                f"config key '{where}.name': unknown backbone {entry['name']!r}; registry names: "
                f"{registered_names()} (or any torchvision/timm classification model name)"
            ) from None
        for w_index, weights in enumerate(entry["weights"]):
            try:
                check_weight_source(spec, weights)
            except ValueError as exc:
                raise ConfigError(f"config key '{where}.weights[{w_index}]': {exc}") from None
        deepest = [(i, s) for i, s in enumerate(grid["strategies"]) if isinstance(strategies[s], FreezeFirst)]
        if deepest:
            stages = stage_count(spec)
            for s_index, name in deepest:
                if strategies[name].k > stages:
                    raise ConfigError(
                        f"config key 'grid.strategies[{s_index}]': {name!r} freezes {strategies[name].k} stages, "
                        f"backbone {entry['name']!r} has {stages} (freeze:0 .. freeze:{stages})"
                    )


def check_dataset_entries(config: dict) -> None:
    """Dataset names are path segments; each source kind needs its own keys."""
    required = {"builtin": ["name"], "folder": ["path"], "url": ["url", "sha256"], "torchvision": ["name"]}
    for name, spec in config["datasets"].items():
        if not is_safe_name(name):
            raise ConfigError(f"config key 'datasets.{name}': dataset names may hold only {SAFE_NAME_RULE}")
        for key in required[spec["source"]]:
            if not spec.get(key):
                raise ConfigError(f"config key 'datasets.{name}.{key}' is required for source '{spec['source']}'")


def check_weight_sources(config: dict, schema: dict, check_files: bool = True) -> None:
    """`pretrain:<name>` must name a `pretrain` entry or a dataset, `file:<path>` an existing file
    (unless ``check_files`` is off: a cluster node re-reading the workflow needs no such file, the
    head node converted it). Each `pretrain:<dataset>` without an entry gets one, with the schema's
    defaults, so that every pretrain source is described in one place.
    """
    datasets = sorted(config["datasets"])
    pretrain = config["pretrain"]
    for index, entry in enumerate(config["grid"]["backbones"]):
        for w_index, weights in enumerate(entry["weights"]):
            where = f"config key 'grid.backbones[{index}].weights[{w_index}]'"
            if weights.startswith(PRETRAIN_PREFIX):
                name = weights[len(PRETRAIN_PREFIX) :]
                if not is_safe_name(name):
                    raise ConfigError(f"{where}: {weights!r}: pretrain names may hold only {SAFE_NAME_RULE}")
                if name not in pretrain and name not in config["datasets"]:
                    valid = [PRETRAIN_PREFIX + n for n in sorted(set(pretrain) | set(datasets))]
                    raise ConfigError(
                        f"{where}: unknown pretrain source {name!r} (not in `pretrain` nor `datasets`); valid: {valid}"
                    )
                if name not in pretrain:
                    pretrain[name] = apply_schema({}, schema["properties"]["pretrain"]["additionalProperties"])
            elif weights.startswith(FILE_PREFIX) and check_files:
                path = Path(weights[len(FILE_PREFIX) :])
                if not path.is_file():
                    raise ConfigError(f"{where}: weights file {str(path)!r} does not exist")
    for name, entry in pretrain.items():
        if not is_safe_name(name):
            raise ConfigError(f"config key 'pretrain.{name}': pretrain names may hold only {SAFE_NAME_RULE}")
        entry["dataset"] = entry["dataset"] or name
        if entry["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"config key 'pretrain.{name}.dataset': unknown dataset {entry['dataset']!r}; valid names: {datasets}"
            )


def validate_config(config: dict, schema_path: str | Path, check_files: bool = True) -> dict:
    """Validate and complete a Snakemake config in place; returns it for convenience."""
    schema = load_schema(schema_path)
    apply_schema(config, schema)
    check_dataset_entries(config)
    check_grid_names(config)
    check_weight_sources(config, schema, check_files=check_files)
    return config
