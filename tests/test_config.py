"""Config schema and validation: defaults everywhere, one-line errors naming the key."""

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transfergrid.config import (
    BUILTIN_NAMES,
    WELL_KNOWN_TORCHVISION,
    check_config_file,
    load_schema,
    one_line_config_errors,
    validate_config,
)
from transfergrid.errors import ConfigError
from transfergrid.grid import cell_settings, expand_cells, prepare_config
from transfergrid.settings import CellSettings

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
    assert config["grid"]["backbones"][0] == {"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]}


def test_empty_config_gets_all_defaults():
    config = validate_config({}, SCHEMA)
    assert config["split"] == {"val": 0.15, "test": 0.15, "seed": 0}
    assert config["train"]["schedule"] == {"name": "step", "step_size": 7, "gamma": 0.1, "warmup_epochs": 0}
    assert config["datasets"]["digits"]["on_corrupt"] == "fail"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["train"].update(epochs=0), "config key 'train.epochs'"),
        (lambda c: c["train"].setdefault("optimizer", {}).update(name="adam"), "'adam' is not one of ['sgd', 'adamw']"),
        (lambda c: c["train"].update(epoch=3), "allowed keys"),
        (lambda c: c["grid"].update(strategies=["full", "frozn"]), "grid.strategies[1]"),
        (lambda c: c["grid"].update(heads=["lineer"]), "valid names: ['gap', 'linear', 'logreg', 'mlp', 'svm']"),
        (lambda c: c["grid"].update(datasets=["nope"]), "grid.datasets[0]"),
        (lambda c: c["grid"]["backbones"].append({"name": "resnet19"}), "grid.backbones[2].name"),
        (lambda c: c["grid"]["backbones"][1].update(weights=["imagenet_pkg"]), "grid.backbones[1].weights[0]"),
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


# ----------------------------------------------------------------------------------------------
# Accepted as written, or as the integer it spells; the refused configs are in bad_configs.yaml


def test_integral_floats_become_integers_that_cells_count_with():
    config = default_config()
    config["train"].update(epochs=2.0, batch_size=16.0)
    config["grid"]["seeds"] = [1.0]
    config["split"]["seed"] = 1.0
    validate_config(config, SCHEMA)
    assert [type(v) for v in (config["train"]["epochs"], config["train"]["batch_size"])] == [int, int]
    assert [type(v) for v in (config["grid"]["seeds"][0], config["split"]["seed"])] == [int, int]
    settings = cell_settings(config, expand_cells(config)[0])
    assert (settings.epochs, settings.batch_size, settings.seed) == (2, 16, 1)
    assert [type(v) for v in (settings.epochs, settings.batch_size, settings.seed)] == [int, int, int]


def test_cell_settings_are_their_dict_and_back():
    config = default_config()
    config["grid"].update(strategies=["full", "frozen", "freeze:1", "two_phase", "gradual", "scratch"], heads=["mlp"])
    config["grid"]["lrs"] = [0.5, 1.0]
    validate_config(config, SCHEMA)
    for cell in expand_cells(config):
        settings = cell_settings(config, cell)
        assert settings.to_dict() == dataclasses.asdict(settings)
        assert CellSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_a_dataset_without_source_is_builtin():
    config = default_config()
    config["datasets"] = {"digits": {"name": "digits"}}
    config["grid"]["datasets"] = ["digits"]
    assert validate_config(config, SCHEMA)["datasets"]["digits"]["source"] == "builtin"


def test_freeze_depth_up_to_the_backbone_stage_count():
    config = default_config()
    config["grid"].update(strategies=["freeze:5"], backbones=[{"name": "resnet18", "weights": ["none"]}])
    validate_config(config, SCHEMA)
    config["grid"]["strategies"] = ["freeze:6"]
    with pytest.raises(ConfigError, match=r"'grid.strategies\[0\]': 'freeze:6' freezes 6 stages, backbone 'resnet18'"):
        validate_config(config, SCHEMA)


def test_unsafe_dataset_names_are_refused():
    for name in ("..", "my photos", "a/b", ".x", "-x"):
        config = default_config()
        config["datasets"][name] = {"source": "builtin", "name": "digits"}
        with pytest.raises(ConfigError, match=f"config key 'datasets': dataset name {re.escape(repr(name))}"):
            validate_config(config, SCHEMA)


def test_the_builtin_names_the_config_knows_are_the_registry():
    from transfergrid.sources import BUILTIN_DATASETS

    assert list(BUILTIN_NAMES) == sorted(BUILTIN_DATASETS)


def test_well_known_torchvision_names_are_usable_datasets():
    from transfergrid.sources.torchvision_datasets import _torchvision_class

    for name in WELL_KNOWN_TORCHVISION:
        _torchvision_class("x", name)  # DataError when torchvision has no such dataset


def test_dataset_sources_are_checked_only_where_the_workflow_starts(tmp_path):
    config = default_config()
    config["datasets"]["photos"] = {"source": "folder", "path": str(tmp_path / "missing")}
    config["grid"]["datasets"] = ["photos"]
    validate_config(copy.deepcopy(config), SCHEMA, check_files=False)
    with pytest.raises(ConfigError, match=r"config key 'datasets\.photos\.path': '.*missing' does not exist"):
        validate_config(config, SCHEMA)


def test_an_unused_dataset_entry_is_not_looked_for(tmp_path):
    config = default_config()
    config["datasets"]["elsewhere"] = {"source": "folder", "path": str(tmp_path / "on_another_machine")}
    validate_config(config, SCHEMA)


def test_a_folder_dataset_and_its_pretrain_classes_pass(tmp_path):
    for split, name in (("train", "cat"), ("train", "dog"), ("val", "cat")):
        (tmp_path / "pets" / split / name).mkdir(parents=True)
    config = default_config()
    config["datasets"]["pets"] = {"source": "folder", "path": str(tmp_path / "pets")}
    config["pretrain"] = {"pets2": {"dataset": "pets", "classes": ["dog", 0]}}
    config["grid"]["backbones"] = [{"name": "resnet18", "weights": ["none", "pretrain:pets2"]}]
    validate_config(config, SCHEMA)


def test_parsing_a_config_of_every_source_kind_imports_no_torch(tmp_path):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    config = {
        "datasets": {
            "digits": {"name": "digits"},
            "photos": {"source": "folder", "path": str(tmp_path / "photos")},
            "web": {"source": "url", "url": "https://example.org/a.zip", "sha256": "0" * 64},
            "fashion": {"source": "torchvision", "name": "FashionMNIST"},
        },
        "grid": {"datasets": ["digits", "photos", "web", "fashion"]},
    }
    code = (
        "import sys, json\n"
        "from transfergrid.grid import prepare_config\n"
        f"prepare_config(json.loads({json.dumps(json.dumps(config))}), {str(SCHEMA)!r})\n"
        "print(sorted(m for m in ['torch', 'torchvision', 'timm', 'pandas', 'sklearn'] if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "workflow")
    assert result.stdout.strip() == "[]", result.stderr


# ----------------------------------------------------------------------------------------------
# Left-out combinations, the config file Snakemake reads, and the one line


def test_left_out_combinations_get_one_note_per_reason(capsys):
    config = default_config()
    config["grid"].update(
        backbones=[{"name": "resnet18", "weights": ["none"]}],
        heads=["linear", "logreg"],
        strategies=["full", "frozen", "two_phase"],
        datasets=["digits"],
        fractions=[1.0],
        seeds=[0],
    )
    cells = prepare_config(config, SCHEMA)
    assert [(c.strategy, c.head) for c in cells] == [("full", "linear"), ("frozen", "linear"), ("frozen", "logreg")]
    assert capsys.readouterr().err.splitlines() == [
        "transfergrid: left out 2 cells: head 'logreg' needs strategy 'frozen'",
        "transfergrid: left out 1 cell: strategy 'two_phase' needs pretrained weights",
    ]
    prepare_config(config, SCHEMA, notes=False)
    assert capsys.readouterr().err == ""
    # The shipped grid pairs logreg with frozen cells only; it says so once.
    prepare_config(default_config(), SCHEMA, notes=True)
    assert capsys.readouterr().err == "transfergrid: left out 24 cells: head 'logreg' needs strategy 'frozen'\n"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"grid:\n  heads: [linear]  # caf\xe9\n", "byte 0xe9 on line 2 is not UTF-8 text"),
        (
            b"grid:\n  heads: [linear\n",
            "invalid YAML on line 3, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        (
            b"grid:\n\theads: [linear]\n",
            "invalid YAML on line 2, column 1: found character '\\t' that cannot start any token",
        ),
        (b"- digits\n", "expected a mapping of config keys, got list"),
        (b"", "expected a mapping of config keys, got NoneType"),
    ],
)
def test_a_config_file_snakemake_cannot_read_is_one_line(tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        check_config_file(path)
    assert str(error.value) == f"config file '{path}': {expected}"


def test_a_readable_or_missing_config_file_passes(tmp_path):
    check_config_file(ROOT / "config.yaml")
    check_config_file(tmp_path / "absent.yaml")  # Snakemake's to report (or a --configfile stands in)
    (tmp_path / "tabs.json").write_text('{\n\t"grid": {"seeds": [0]}\n}\n')  # JSON, though no YAML
    check_config_file(tmp_path / "tabs.json")


def test_a_config_error_is_one_line_on_stderr_and_exit_status_1(capsys):
    with pytest.raises(SystemExit) as exit_info, one_line_config_errors():
        raise ConfigError("config key 'train.epochs': must be at least 1,\n got 0")
    assert exit_info.value.code == 1
    assert capsys.readouterr() == ("", "transfergrid: config key 'train.epochs': must be at least 1, got 0\n")
    with pytest.raises(ValueError), one_line_config_errors():
        raise ValueError("a bug keeps its traceback")
