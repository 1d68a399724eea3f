"""Config validation: the JSON schema fills defaults and checks types and bounds, the registries
check names, the file system the paths jobs will read (torch-free unless a torchvision dataset that
is not well known is named). Each failure is a one-line ConfigError `config key '<key>': <problem>;
<what is allowed>`, raised as Snakemake parses the workflow (grid.prepare_config) and printed by
`one_line_config_errors`. Left to the job that obtains the data, as only the data can tell: pretrain
classes of builtin, url and torchvision sources (a folder's are its subfolders, checked here); a
download that fails or does not match its sha256, and what an archive holds; class folders without
images, images that do not decode (that reads every file); a torchvision root without the dataset;
the Debian package behind builtin `fashion_mnist_debian`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from .backbones.registry import check_weight_source, registered_names, resolve_backbone, stage_count
from .errors import ConfigError, DataError, one_line
from .heads import HEADS
from .naming import FILE_PREFIX, PRETRAIN_PREFIX, grid_weight_sources, is_safe_name
from .strategies import FreezeFirst, parse_strategy, strategy_names

SAFE_NAME_RULE = "letters, digits, '_', '.' and '-', not starting with '.' or '-'"
# The names of sources.builtin.BUILTIN_DATASETS, whose import pulls in pandas: parsing stays light
# for these, other names ask the registry itself (a test keeps the two equal).
BUILTIN_NAMES = ("digits", "fashion_mnist_debian")
# torchvision.datasets classes with a train or split argument in every torchvision since 0.13:
# accepted without importing torchvision (2-3 s and torch); other names import it to check.
WELL_KNOWN_TORCHVISION = (
    "CIFAR10", "CIFAR100", "DTD", "EMNIST", "FGVCAircraft", "FashionMNIST", "Flowers102", "Food101", "GTSRB",
    "KMNIST", "MNIST", "OxfordIIITPet", "QMNIST", "STL10", "SVHN", "StanfordCars", "USPS",
)  # fmt: skip
URL_SCHEMES = ("file", "http", "https")  # what downloads.download opens
SHA256 = re.compile(r"[0-9a-fA-F]{64}")  # as downloads.download reads it, surrounding blanks aside
# Keys of a `datasets` entry that only some source kinds read (every kind reads the others).
SOURCE_KEYS = {
    "builtin": ("name",), "folder": ("path",), "torchvision": ("name", "root", "download"),
    "url": ("url", "sha256", "subdir", "max_extract_bytes", "max_extract_members", "max_compression_ratio"),
}  # fmt: skip
REQUIRED_KEYS = {"builtin": ("name",), "folder": ("path",), "url": ("url", "sha256"), "torchvision": ("name",)}
# Lists where a repeated value is a mistake (a cell twice, an axis value that means nothing new).
UNIQUE_LISTS = (
    "grid.datasets", "grid.fractions", "grid.strategies", "grid.heads", "grid.seeds", "grid.lrs",
    "train.head_options.logreg.C", "resources.gpu_devices", "report.facet_by",
)  # fmt: skip
MESSAGE_PREFIX = "transfergrid: "
_KINDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false"}
_KINDS |= {"array": "a list", "object": "a mapping", "null": "null"}
_BOUNDS = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "above", "exclusiveMaximum": "below"}


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
    """A schema violation as one line naming the key (in jsonschema's words for rarer validators)."""
    path, instance, value = list(error.absolute_path), error.instance, error.validator_value
    where = key_path(path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = next(key for key in instance if key not in allowed)
        return f"config key '{key_path([*path, unknown])}': unknown key; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key '{where}': {instance!r} is not one of {list(value)}"
    if error.validator == "type":
        kinds = " or ".join(_KINDS[kind] for kind in (value if isinstance(value, list) else [value]))
        return f"config key '{where}': expected {kinds}, got {instance!r}"
    if error.validator in _BOUNDS:
        return f"config key '{where}': must be {_BOUNDS[error.validator]} {value}, got {instance!r}"
    if error.validator in ("minItems", "minProperties"):
        return f"config key '{where}': needs at least {value} {'entry' if value == 1 else 'entries'}, got {instance!r}"
    if error.validator == "minLength":
        return f"config key '{where}': must not be empty"
    return f"config key '{where}': {error.message}"


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _coerce_integers(instance: Any, schema: dict) -> Any:
    """JSON Schema counts 2.0 as an integer: make it the int 2, so no job meets a float for a count."""
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


def _check_unique(items: Iterable[tuple[str, Any]]) -> None:
    """(key, value) pairs: a value that comes again is a mistake, named by the key of the repeat."""
    first: dict[Any, str] = {}
    for where, value in items:
        if value in first:
            raise ConfigError(f"config key '{where}': {value!r} is already listed at {first[value]}")
        first[value] = where


def check_unique_lists(config: dict) -> None:
    """A value listed twice in a grid axis (or another list of distinct values) is a mistake: the
    same cells twice. So is a weight source listed twice for one backbone (the value is the pair)."""
    for path in UNIQUE_LISTS:
        values = config
        for key in path.split("."):
            values = values[key]
        _check_unique((f"{path}[{index}]", value) for index, value in enumerate(values or []))
    backbones = enumerate(config["grid"]["backbones"])
    _check_unique(
        (f"grid.backbones[{i}].weights[{j}]", (entry["name"], weights))
        for i, entry in backbones
        for j, weights in enumerate(entry["weights"])
    )
    for name, entry in config["pretrain"].items():
        _check_unique((f"pretrain.{name}.classes[{i}]", item) for i, item in enumerate(entry["classes"] or []))


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


def check_dataset_entries(config: dict, schema: dict) -> None:
    """Dataset names are path segments; each source kind reads its own keys (a key of another kind,
    such as `path` without `source: folder`, would be ignored), and needs some, well formed."""
    defaults = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    for name, spec in config["datasets"].items():
        where, source = f"config key 'datasets.{name}", spec["source"]
        if not isinstance(name, str) or not is_safe_name(name):
            raise ConfigError(f"config key 'datasets': dataset name {name!r} may hold only {SAFE_NAME_RULE}")
        for key, value in spec.items():
            readers = [kind for kind, keys in SOURCE_KEYS.items() if key in keys]
            if readers and source not in readers and value != defaults[key]["default"]:
                owners = " or ".join(map(repr, readers))
                raise ConfigError(f"{where}.{key}': only source {owners} reads it; this entry's source is {source!r}")
        for key in REQUIRED_KEYS[source]:
            if not spec.get(key):
                raise ConfigError(f"{where}.{key}' is required for source '{source}'")
        if source == "builtin" and spec["name"] not in BUILTIN_NAMES:
            from .sources.builtin import BUILTIN_DATASETS  # the registry itself, for a builtin added since

            if spec["name"] not in BUILTIN_DATASETS:
                raise ConfigError(f"{where}.name': unknown builtin {spec['name']!r}; valid: {sorted(BUILTIN_DATASETS)}")
        if source == "url":
            url = urllib.parse.urlsplit(spec["url"])
            scheme = url.scheme.lower()
            if scheme not in URL_SCHEMES or not (url.path if scheme == "file" else url.netloc):  # a host, or a file
                raise ConfigError(f"{where}.url': {spec['url']!r} is not an http://, https:// or file:// address")
            if not SHA256.fullmatch(spec["sha256"].strip()):
                raise ConfigError(f"{where}.sha256': expected 64 hex digits, got {spec['sha256']!r}")
            subdir = PurePosixPath(spec["subdir"] or ".")
            if subdir.is_absolute() or ".." in subdir.parts:
                raise ConfigError(f"{where}.subdir': {spec['subdir']!r} must be a relative path inside the archive")


def check_weight_sources(config: dict, schema: dict, check_files: bool = True) -> None:
    """`pretrain:<name>` must name a `pretrain` entry or a dataset, `file:<path>` an existing file
    (unless ``check_files`` is off: a cluster node re-reading the workflow needs no such file, the
    head node converted it). Each `pretrain:<dataset>` without an entry gets one, with the schema's
    defaults, so that every pretrain source is described in one place."""
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
        if not isinstance(name, str) or not is_safe_name(name):
            raise ConfigError(f"config key 'pretrain': pretrain name {name!r} may hold only {SAFE_NAME_RULE}")
        entry["dataset"] = entry["dataset"] or name
        if entry["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"config key 'pretrain.{name}.dataset': unknown dataset {entry['dataset']!r}; valid names: {datasets}"
            )


def _folder_classes(where: str, folder: Path, split_root: bool = True) -> list[str]:
    """The classes of a folder source as sources.folder finds them: the visible subfolders of its
    root, or of root/train when it holds train|val|test (as sources.common.visible_subdirs)."""
    shown = repr(str(folder))
    if not folder.is_dir():
        raise ConfigError(f"{where}: {shown} {'is a file, not a folder' if folder.exists() else 'does not exist'}")
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != "." and p.name != "__MACOSX")
    except OSError as error:
        raise ConfigError(f"{where}: folder {shown} cannot be read: {error.strerror}") from None
    if not names:
        raise ConfigError(f"{where}: folder {shown} holds no class subfolders (class/* or train/class/*)")
    if split_root and set(names) <= {"train", "val", "test"}:
        return _folder_classes(where, folder / "train", split_root=False)
    return names


def _check_torchvision(where: str, spec: dict) -> None:
    """The class name, by the job's own test unless it is well known (that imports torch; without
    torchvision here the job checks it, in its own environment), and a local root."""
    if spec["name"] not in WELL_KNOWN_TORCHVISION:
        try:
            from .sources.torchvision_datasets import _torchvision_class

            _torchvision_class("", spec["name"])
        except ImportError:
            pass
        except DataError:
            raise ConfigError(
                f"{where}.name': {spec['name']!r} is not a torchvision.datasets class with a train or split "
                f"argument; well-known ones: {list(WELL_KNOWN_TORCHVISION)}"
            ) from None
    root = Path(spec["root"] or ".").expanduser()
    if root.is_file() or not (root.exists() or spec["download"]):
        problem = "is a file, not a folder" if root.is_file() else "does not exist and download is false"
        raise ConfigError(f"{where}.root': {spec['root']!r} {problem}")


def check_dataset_sources(config: dict) -> None:
    """What the sources of the datasets jobs will read tell before anything is obtained: folders,
    file:// archives, torchvision names and roots, pretrain classes of a folder source."""
    pretrain = [w[len(PRETRAIN_PREFIX) :] for w in grid_weight_sources(config) if w.startswith(PRETRAIN_PREFIX)]
    used = dict.fromkeys([*config["grid"]["datasets"], *(config["pretrain"][name]["dataset"] for name in pretrain)])
    classes = {}
    for name in used:
        spec, where = config["datasets"][name], f"config key 'datasets.{name}"
        if spec["source"] == "folder":
            classes[name] = _folder_classes(f"{where}.path'", Path(spec["path"]).expanduser())
        elif spec["source"] == "url" and urllib.parse.urlsplit(spec["url"]).scheme.lower() == "file":
            path = urllib.request.url2pathname(urllib.parse.urlsplit(spec["url"]).path)
            if not Path(path).is_file():
                raise ConfigError(f"{where}.url': file {path!r} does not exist")
        elif spec["source"] == "torchvision":
            _check_torchvision(where, spec)
    for name in dict.fromkeys(pretrain):
        entry = config["pretrain"][name]
        names = classes.get(entry["dataset"])
        for index, item in enumerate((entry["classes"] or []) if names else []):
            if not (isinstance(item, int) and 0 <= item < len(names)) and str(item) not in names:
                raise ConfigError(
                    f"config key 'pretrain.{name}.classes[{index}]': unknown class {item!r}; classes of dataset "
                    f"{entry['dataset']!r}: {names} (or label indices 0..{len(names) - 1})"
                )


def validate_config(config: dict, schema_path: str | Path, check_files: bool = True) -> dict:
    """Validate and complete a Snakemake config in place; returns it for convenience. ``check_files``
    off skips what reads the disk or imports torchvision: a node re-reading the workflow to run one
    job needs neither, where the workflow started they were checked."""
    schema = load_schema(schema_path)
    apply_schema(config, schema)
    check_dataset_entries(config, schema)
    val, test = config["split"]["val"], config["split"]["test"]
    if val + test >= 1:
        raise ConfigError(f"config key 'split': val {val} + test {test} leaves nothing to train on; must sum below 1")
    check_unique_lists(config)
    check_grid_names(config)
    check_weight_sources(config, schema, check_files=check_files)
    if check_files:
        check_dataset_sources(config)
    return config


def check_config_file(path: str | Path) -> None:
    """What Snakemake's loader of `configfile:` (json, then yaml.FullLoader) fails on in several
    lines: no UTF-8, no YAML, no mapping. It runs before common.smk, so the Snakefile calls this
    first. A missing file is Snakemake's to report: a --configfile may stand in for it."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    try:
        loaded = json.loads(data.decode("utf-8"))  # as Snakemake: JSON first, then YAML
    except UnicodeDecodeError as error:
        line, byte = data[: error.start].count(b"\n") + 1, data[error.start]
        raise ConfigError(f"config file '{path}': byte 0x{byte:02x} on line {line} is not UTF-8 text") from None
    except ValueError:
        try:
            loaded = yaml.load(data.decode("utf-8"), Loader=yaml.FullLoader)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"invalid YAML on line {mark.line + 1}, column {mark.column + 1}" if mark else "invalid YAML"
            raise ConfigError(f"config file '{path}': {where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}': expected a mapping of config keys, got {type(loaded).__name__}")


def error_line(error: ConfigError) -> str:
    return MESSAGE_PREFIX + one_line(error)  # the one line a user reads for a bad config


@contextlib.contextmanager
def one_line_config_errors() -> Iterator[None]:
    """A ConfigError inside becomes its one line on stderr and exit status 1. Snakemake would report
    it in several lines (a header naming the .smk file, stack lines); SystemExit is no Exception, so
    it passes Snakemake's handlers and ends the process with nothing more printed."""
    try:
        yield
    except ConfigError as error:
        print(error_line(error), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
