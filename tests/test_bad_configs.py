"""The corpus of refused configs (tests/bad_configs.yaml): each one is refused while Snakemake parses
the workflow, with exactly the line the corpus documents; a few of them through real Snakemake.

"Exactly one line" through Snakemake means: exit status 1, nothing on stdout, and on stderr the
line is the only one besides Snakemake's own start-up banner, printed before it reads the workflow:
"Using workflow specific profile profiles/default ..." (the workflow's profile, which the copy
has too; none with `--workflow-profile none`) and, with `--config` on its command line, "Config file
config.yaml is extended ...". The exit at parse time leaves no Snakemake report after the line.
"""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transfergrid.config import error_line
from transfergrid.errors import ConfigError
from transfergrid.grid import prepare_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CORPUS = yaml.safe_load((Path(__file__).parent / "bad_configs.yaml").read_text())
CASES = {case["title"]: case for case in CORPUS["cases"]}
SNAKEMAKE_BANNER = ("Using workflow specific profile ", "Config file config.yaml is extended ")

# The Snakefile change that gives a config file Snakemake cannot read (not UTF-8, not YAML) one
# line: Snakemake loads `configfile:` itself, before common.smk. The workflow copy gets it until
# the Snakefile has it.
CONFIG_FILE_CHECK = """
# Snakemake reads `configfile:` itself and reports a file that is not UTF-8 or not YAML in a
# traceback: check it first, for a one-line error.
sys.path.insert(0, f"{workflow.basedir}/workflow")  # the transfergrid package
from transfergrid.config import check_config_file, one_line_config_errors

with one_line_config_errors():
    check_config_file("config.yaml")

"""


def merged(base: dict, fragment: dict) -> dict:
    """``fragment`` over ``base``: mappings merge key by key, anything else replaces."""
    result = copy.deepcopy(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_scratch(directory: Path) -> None:
    """The corpus's `scratch` files (a name ending in / is an empty folder)."""
    for entry in CORPUS["scratch"]:
        path = directory / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not decoded at parse time")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    make_scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_corpus_is_large_and_each_case_names_a_key():
    assert len(CASES) == len(CORPUS["cases"]) >= 60  # titles are unique
    for case in CORPUS["cases"]:
        assert case["error"].startswith("transfergrid: config key '"), case["title"]


def test_the_base_config_runs(scratch):
    assert len(prepare_config(merged(CORPUS["base"], {}), SCHEMA)) == 2


@pytest.mark.parametrize("case", CORPUS["cases"], ids=list(CASES))
def test_bad_config_is_refused_at_parse_time_with_its_line(case, scratch, capsys):
    with pytest.raises(ConfigError) as error:
        prepare_config(merged(CORPUS["base"], case["config"]), SCHEMA)
    assert error_line(error.value) == case["error"]
    assert capsys.readouterr().err == ""  # no note before the error


# ----------------------------------------------------------------------------------------------
# Through real Snakemake: `snakemake -n` in a copy of the workflow


def copy_workflow(workdir: Path) -> None:
    shutil.copy(ROOT / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / folder, workdir / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    snakefile = workdir / "Snakefile"
    text = snakefile.read_text()
    if "check_config_file" not in text:
        text = "import sys\n" + text.replace(
            '\nconfigfile: "config.yaml"', CONFIG_FILE_CHECK + '\nconfigfile: "config.yaml"'
        )
        snakefile.write_text(text)


def dry_run(workdir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-n", "-s", str(workdir / "Snakefile")]
    command += ["--directory", str(workdir), "--cores", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=workdir)


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    copy_workflow(workdir)
    make_scratch(workdir)
    return workdir


def workflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(SNAKEMAKE_BANNER)]


def assert_exactly_one_line(result: subprocess.CompletedProcess, line: str, workdir: Path) -> None:
    assert (result.returncode, result.stdout, workflow_lines(result.stderr)) == (1, "", [line])
    assert result.stderr.endswith(line + "\n")  # nothing after it
    assert not (workdir / "results").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "title",
    [
        "unknown head",
        "YAML reads 1e9 (no dot) as a string",
        "a dataset name with a space",
        "folder that does not exist",
        "logreg with only the full strategy",
    ],
)
def test_snakemake_prints_exactly_the_line(title, workflow_copy):
    (workflow_copy / "config.yaml").write_text(yaml.safe_dump(merged(CORPUS["base"], CASES[title]["config"])))
    assert_exactly_one_line(dry_run(workflow_copy), CASES[title]["error"], workflow_copy)


@pytest.mark.e2e
def test_snakemake_prints_one_line_for_a_config_file_that_is_not_utf8(workflow_copy):
    (workflow_copy / "config.yaml").write_bytes(b"train:\n  epochs: 1  # caf\xe9\n")
    line = "transfergrid: config file 'config.yaml': byte 0xe9 on line 2 is not UTF-8 text"
    assert_exactly_one_line(dry_run(workflow_copy), line, workflow_copy)


@pytest.mark.e2e
def test_snakemake_notes_left_out_combinations_once_and_runs(workflow_copy):
    config = merged(CORPUS["base"], {"grid": {"heads": ["linear", "logreg"]}})
    (workflow_copy / "config.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(workflow_copy)
    assert result.returncode == 0, result.stderr
    note = "transfergrid: left out 1 cell: head 'logreg' needs strategy 'frozen'"
    assert result.stderr.count("transfergrid:") == 1 and workflow_lines(result.stderr)[0] == note
