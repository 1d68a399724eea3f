"""The version of the package code behind a rule's results, as one digest (a job parameter).

Snakemake reruns a ``script:`` job when its script changes, not when a package module it calls
changes. So each rule that computes with the package carries the digest of the modules that compute
its results as a parameter, and Snakemake's params trigger reruns that rule's jobs (and what
follows from them) when one of them changes: editing the training loop retrains, editing the
metrics re-evaluates without retraining.

The digest is of what the code does, not how it is written: Python modules are hashed as parsed,
without comments and docstrings (``ast.unparse``), so a comment reruns nothing; other files (the
report's template) as bytes. A new Python version may unparse a module differently and so rerun
its stages once. Each rule names its modules (``workflow/rules``). Registries (heads, strategies,
augmentations, backbones) are deliberately not among them: adding an entry must not rerun the
grid; after changing what an entry does, its cells are rerun by removing their directories.
Parsing happens at planning time without importing anything (no torch), in milliseconds.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

DIGEST_CHARS = 16  # 64 bits: tells a few versions of a few files apart


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    is_docstring = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    # A body cannot be empty: a function that is only a docstring keeps a `pass`.
    return (body[1:] or [ast.Pass()]) if is_docstring else body


@functools.cache
def _normalised_python(text: str) -> str:
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = _without_docstring(node.body)
    return ast.unparse(tree)


def normalised_source(path: Path) -> bytes:
    """What a file contributes to a code version: a Python module's code without comments,
    docstrings or layout; any other file's bytes."""
    if path.suffix == ".py":
        return _normalised_python(path.read_text()).encode()
    return path.read_bytes()


def code_version(package_dir: Path, names: list[str] | tuple[str, ...]) -> str:
    """The digest of the files ``names`` (paths relative to ``package_dir``), their names included.

    A name that is no file is an error, so a renamed module cannot silently drop out of a rule's
    code version."""
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        path = package_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"code version: {path} is not a file")
        source = normalised_source(path)
        # Length-prefixed, so no two different file sets hash the same bytes.
        digest.update(f"{name}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:DIGEST_CHARS]
