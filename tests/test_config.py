"""Config schema and validation: defaults everywhere, one-line errors naming the key."""

import copy
from pathlib import Path

import pytest
import yaml

from transfergrid.config import load_schema, validate_config
from transfergrid.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def walk_properties(schema, where="config"):
    for key, sub in schema.get("properties", {}).items():
        yield f"{where}.{key}", sub
        yield from walk_properties(sub, f"{where}.{key}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from walk_properties(extra, f"{where}.<name>")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from walk_properties(items, f"{where}[]")


def test_every_schema_key_has_description_and_default():
    keys = list(walk_properties(load_schema(SCHEMA)))
    assert len(keys) > 30
    missing = [k for k, sub in keys if "description" not in sub or "default" not in sub]
    assert missing == []


def test_shipped_config_validates_and_gains_nothing_unknown():
    config = validate_config(default_config(), SCHEMA)
    assert config["grid"]["backbones"][1] == {"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]}


def test_empty_config_gets_all_defaults():
    config = validate_config({}, SCHEMA)
    assert config["split"] == {"val": 0.15, "test": 0.15, "seed": 0}
    assert config["train"]["schedule"] == {"name": "step", "step_size": 7, "gamma": 0.1, "warmup_epochs": 0}
    assert config["datasets"]["digits"]["on_corrupt"] == "fail"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["train"].update(epochs=0), "config key 'train.epochs'"),
        (lambda c: c["train"]["optimizer"].update(name="adam"), "'adam' is not one of ['sgd', 'adamw']"),
        (lambda c: c["train"].update(epoch=3), "allowed keys"),
        (lambda c: c["grid"].update(strategies=["full", "frozn"]), "grid.strategies[1]"),
        (lambda c: c["grid"].update(heads=["lineer"]), "valid names: ['gap', 'linear', 'logreg', 'mlp', 'svm']"),
        (lambda c: c["grid"].update(datasets=["nope"]), "grid.datasets[0]"),
        (lambda c: c["grid"]["backbones"].append({"name": "resnet19"}), "grid.backbones[2].name"),
        (lambda c: c["grid"]["backbones"][0].update(weights=["imagenet_pkg"]), "grid.backbones[0].weights[0]"),
        (lambda c: c["datasets"].update(web={"source": "url", "url": "http://x/y.zip"}), "datasets.web.sha256"),
        (lambda c: c["datasets"]["digits"].update(source="ftp"), "datasets.digits.source"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(edit, expected):
    config = default_config()
    edit(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_validation_does_not_touch_a_valid_config_beyond_defaults():
    config = default_config()
    before = copy.deepcopy(config)
    validate_config(config, SCHEMA)
    assert config["grid"] == {**before["grid"], "lrs": [1.0]}
