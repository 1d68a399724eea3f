"""Project-level checks: the README's config reference and the conda pins stay in sync."""

import ast
import re
import subprocess
import sys
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


# ----------------------------------------------------------------------------------------------
# Package structure: one reason to change per module


PACKAGE = ROOT / "workflow" / "transfergrid"
MAX_MODULE_LINES = 400


def package_modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (at any level, lazy imports included)."""
    modules = package_modules()
    graph = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {name for name in names if name in modules and name != module}
        graph[module] = targets
    return graph


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_package_module_is_over_400_lines():
    sizes = {module: len(path.read_text().splitlines()) for module, path in package_modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_snakemake_parses_the_workflow_without_torch():
    """What the rules import at parse time (common.smk and the rule files) must not pull in torch,
    torchvision, timm, pandas, scikit-learn or matplotlib: parsing stays fast on a 10,000-cell grid."""
    imported = set()
    for rule_file in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        for line in rule_file.read_text().splitlines():
            match = re.match(r"\s*from (transfergrid[\w.]*) import", line) or re.match(
                r"\s*import (transfergrid[\w.]*)", line
            )
            if match:
                imported.add(match.group(1))
    assert "transfergrid.config" in imported and "transfergrid.grid" in imported
    code = (
        "import sys, importlib\n"
        f"for name in {sorted(imported)!r}: importlib.import_module(name)\n"
        "from transfergrid.config import validate_config\n"
        "import yaml\n"
        f"config = validate_config(yaml.safe_load(open({str(ROOT / 'config.yaml')!r})), "
        f"{str(ROOT / 'workflow' / 'schemas' / 'config.schema.yaml')!r})\n"
        "from transfergrid.grid import expand_cells, cell_settings\n"
        "[cell_settings(config, cell) for cell in expand_cells(config)]\n"
        "heavy = ['torch', 'torchvision', 'timm', 'pandas', 'sklearn', 'matplotlib']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "workflow"
    )
    assert result.stdout.strip() == "[]"
