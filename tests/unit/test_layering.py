"""The import rules of the layout (DESIGN.md): checked on every file, so they cannot erode."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in files(package):
        for mod in imports(f):
            if any(mod == x or mod.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(REPO)} imports {mod}")
    return bad


def test_runtime_never_imports_the_daemon() -> None:
    assert files("runtime")
    assert violations("runtime", ("cri_shim", "grpc")) == []


def test_linux_and_windows_backends_are_independent() -> None:
    assert violations("runtime/linux", ("runtime.windows",)) == []
    assert violations("runtime/windows", ("runtime.linux",)) == [] if (REPO / "runtime/windows").exists() else True


def test_services_raise_domain_errors_not_grpc_codes() -> None:
    assert files("cri_shim/services")
    assert violations("cri_shim/services", ("grpc",)) == []


def test_the_check_itself_catches_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import grpc\nfrom cri_shim.errors import NotFound\n")
    assert imports(f) == {"grpc", "cri_shim.errors"}
