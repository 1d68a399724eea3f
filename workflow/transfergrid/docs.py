"""The README's config reference, generated from the JSON schema so the two never disagree.

`python -m transfergrid.docs README.md` rewrites the block between the markers; a test checks
that the committed README matches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import load_schema

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type_of(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "object")
    return " or ".join(kind) if isinstance(kind, list) else kind


def _default_of(schema: dict) -> str:
    default = schema.get("default")
    if isinstance(default, dict) and not default:
        return ""
    return f"`{json.dumps(default)}`"


def _rows(schema: dict, prefix: str = ""):
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        yield name, sub
        yield from _rows(sub, f"{name}.")
        if isinstance(sub.get("additionalProperties"), dict):
            yield from _rows(sub["additionalProperties"], f"{name}.<name>.")
        if isinstance(sub.get("items"), dict):
            yield from _rows(sub["items"], f"{name}[].")


def config_reference(schema_path: Path = SCHEMA) -> str:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, sub in _rows(load_schema(schema_path)):
        description = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_of(sub)} | {_default_of(sub)} | {description} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def main(readme: str) -> None:
    path = Path(readme)
    path.write_text(replace_block(path.read_text(), config_reference()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "README.md")
