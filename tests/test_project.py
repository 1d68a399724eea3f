"""Project-level checks: the README's config reference and the conda pins stay in sync."""

import re
from pathlib import Path

import yaml

from transfergrid.docs import BEGIN, END, config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_the_schema():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip()
    assert block == config_reference().strip(), "run: .venv/bin/python -m transfergrid.docs README.md"


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_conda_env_pip_pins_match_requirements_lock():
    pins = lock_pins()
    checked = 0
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for requirement in pip_section:
            name, version = re.split("==", requirement)
            assert pins[name.lower().replace("_", "-")] == version, f"{env_file.name}: {requirement}"
            checked += 1
    assert checked >= 15


def test_every_rule_has_a_log_and_a_conda_env():
    for rule_file in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = rule_file.read_text()
        for rule in re.split(r"\nrule ", text)[1:]:
            assert "log:" in rule and "conda:" in rule, f"{rule_file.name}: rule {rule.split(':')[0]}"
