"""Closed-world validation of HCS and OCI documents against the official JSON schemas.

The published HCS schemas declare no `required` and no `additionalProperties:
false`, so plain validation would accept `ID` for `Id`. `ClosedWorld` closes
every object definition that lists `properties` before validating. Known
deviations of what production sends from the schema are allow-listed in
`KNOWN_DEVIATIONS`, each with its reason; nothing else is tolerated.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

# (definition, JSON path, reason): errors at exactly these places are accepted.
KNOWN_DEVIATIONS: tuple[tuple[str, str, str], ...] = (
    ("ModifySettingRequest", "$.Settings",
     "Container/Memory/SizeInMB takes a bare integer (hcsshim, HCS docs); the schema types Settings as object"),
)


def close_world(definitions: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(definitions)
    for d in out.values():
        if isinstance(d, dict) and "properties" in d and "additionalProperties" not in d:
            d["additionalProperties"] = False
    return out


class ClosedWorld:
    """Validate a document against one definition of a closed copy of a schema file."""

    def __init__(self, schema_file: str | Path) -> None:
        raw = json.loads(Path(schema_file).read_text())
        self.name = Path(schema_file).name
        self.definitions = close_world(raw["definitions"])

    def has(self, definition: str) -> bool:
        return definition in self.definitions

    def errors(self, definition: str, document: Any) -> list[str]:
        if definition not in self.definitions:
            raise KeyError(f"{self.name} has no definition {definition!r}")
        validator = Draft7Validator({"$ref": f"#/definitions/{definition}", "definitions": self.definitions})
        out = []
        for e in validator.iter_errors(document):
            path = e.json_path
            if any(d == definition and p == path for d, p, _ in KNOWN_DEVIATIONS):
                continue
            out.append(f"{definition} {path}: {e.message}")
        return out


def close_inline(node: Any) -> Any:
    """Close every object schema with `properties`, at any depth (OCI inlines its objects)."""
    if isinstance(node, dict):
        out = {k: close_inline(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and out.get("type") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [close_inline(v) for v in node]
    return node


# JSON paths in the OCI `windows` object where the published schema is known to be wrong.
OCI_KNOWN_DEVIATIONS: tuple[tuple[str, str], ...] = (
    ("$.resources.cpu.affinity",
     "config-windows.json types affinity as an object; config-windows.md and Go specs.Windows use [{mask, group}]"),
)


class OciWindowsSchema:
    """The OCI runtime-spec `config-windows.json` (the `windows` object of config.json), closed."""

    BASE = "https://cri-shim.invalid/oci/"

    def __init__(self, directory: str | Path) -> None:
        from referencing import Registry
        from referencing.jsonschema import DRAFT7

        d = Path(directory)
        resources = []
        for name in ("defs.json", "defs-windows.json", "config-windows.json"):
            doc = close_inline(json.loads((d / name).read_text()))
            resources.append((self.BASE + name, DRAFT7.create_resource(doc)))
        self._registry: Any = Registry().with_resources(resources)
        self._schema = {"$id": self.BASE + "windows", "allOf": [{"$ref": "config-windows.json#/windows"}]}

    def errors(self, windows_object: Any) -> list[str]:
        validator = Draft7Validator(self._schema, registry=self._registry)
        out = []
        for e in validator.iter_errors(windows_object):
            if any(e.json_path.startswith(p) for p, _ in OCI_KNOWN_DEVIATIONS):
                continue
            out.append(f"windows {e.json_path}: {e.message}")
        return out
