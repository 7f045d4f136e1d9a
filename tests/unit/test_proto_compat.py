"""proto/runtime/v1/api.proto must be wire- and JSON-identical to upstream k8s.io/cri-api v0.37.2.

The upstream file comes from the Go module proxy (`go mod download`); both
files are compiled with grpcio-tools and their descriptors compared field by
field. Any difference fails with its exact path, e.g.
`message PodSandboxConfig / field log_directory: number 3 != 4`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
OURS = REPO / "proto" / "runtime" / "v1" / "api.proto"
UPSTREAM_MODULE = "k8s.io/cri-api@v0.37.2"


def upstream_proto() -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = subprocess.run([go, "mod", "download", "-json", UPSTREAM_MODULE], capture_output=True, text=True,
                         timeout=300, cwd=tempfile.gettempdir())
    assert out.returncode == 0, f"go mod download {UPSTREAM_MODULE} failed: {out.stderr or out.stdout}"
    return Path(json.loads(out.stdout)["Dir"]) / "pkg" / "apis" / "runtime" / "v1" / "api.proto"


def compile_proto(path: Path) -> descriptor_pb2.FileDescriptorProto:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        rc = protoc.main(["protoc", f"-I{path.parent}", f"--descriptor_set_out={out}", str(path)])
        assert rc == 0, f"protoc failed on {path}"
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _field_facts(f: descriptor_pb2.FieldDescriptorProto) -> dict[str, object]:
    return {"number": f.number, "type": f.type, "label": f.label, "type_name": f.type_name,
            "json_name": f.json_name, "deprecated": f.options.deprecated,
            "debug_redact": f.options.debug_redact, "proto3_optional": f.proto3_optional}


def _compare_enum(path: str, a: descriptor_pb2.EnumDescriptorProto, b: descriptor_pb2.EnumDescriptorProto,
                  diffs: list[str]) -> None:
    av, bv = {v.name: v.number for v in a.value}, {v.name: v.number for v in b.value}
    for name in sorted(av.keys() | bv.keys()):
        if av.get(name) != bv.get(name):
            diffs.append(f"{path} / value {name}: ours {av.get(name)} != upstream {bv.get(name)}")


def _compare_message(path: str, a: descriptor_pb2.DescriptorProto, b: descriptor_pb2.DescriptorProto,
                     diffs: list[str]) -> None:
    af, bf = {f.name: f for f in a.field}, {f.name: f for f in b.field}
    for name in sorted(af.keys() | bf.keys()):
        if name not in af or name not in bf:
            diffs.append(f"{path} / field {name}: {'missing in ours' if name not in af else 'not upstream'}")
            continue
        fa, fb = _field_facts(af[name]), _field_facts(bf[name])
        for key in fa:
            if fa[key] != fb[key]:
                diffs.append(f"{path} / field {name}: {key} ours {fa[key]!r} != upstream {fb[key]!r}")
    if [f.name for f in a.oneof_decl] != [f.name for f in b.oneof_decl]:
        diffs.append(f"{path}: oneofs differ")
    if a.options.map_entry != b.options.map_entry:
        diffs.append(f"{path}: map_entry differs")
    _compare_named(path, "message", a.nested_type, b.nested_type, _compare_message, diffs)
    _compare_named(path, "enum", a.enum_type, b.enum_type, _compare_enum, diffs)


def _compare_named(path: str, kind: str, a: object, b: object, compare: object, diffs: list[str]) -> None:
    am = {x.name: x for x in a}  # type: ignore[attr-defined]
    bm = {x.name: x for x in b}  # type: ignore[attr-defined]
    prefix = f"{path} / " if path else ""
    for name in sorted(am.keys() | bm.keys()):
        if name not in am or name not in bm:
            diffs.append(f"{prefix}{kind} {name}: {'missing in ours' if name not in am else 'not upstream'}")
        else:
            compare(f"{prefix}{kind} {name}", am[name], bm[name], diffs)  # type: ignore[operator]


def _compare_service(path: str, a: descriptor_pb2.ServiceDescriptorProto, b: descriptor_pb2.ServiceDescriptorProto,
                     diffs: list[str]) -> None:
    am, bm = {m.name: m for m in a.method}, {m.name: m for m in b.method}
    for name in sorted(am.keys() | bm.keys()):
        if name not in am or name not in bm:
            diffs.append(f"{path} / rpc {name}: {'missing in ours' if name not in am else 'not upstream'}")
            continue
        for key in ("input_type", "output_type", "client_streaming", "server_streaming"):
            va, vb = getattr(am[name], key), getattr(bm[name], key)
            if va != vb:
                diffs.append(f"{path} / rpc {name}: {key} ours {va!r} != upstream {vb!r}")


def compare(ours: descriptor_pb2.FileDescriptorProto, upstream: descriptor_pb2.FileDescriptorProto) -> list[str]:
    diffs: list[str] = []
    for key in ("package", "syntax"):
        if getattr(ours, key) != getattr(upstream, key):
            diffs.append(f"file: {key} ours {getattr(ours, key)!r} != upstream {getattr(upstream, key)!r}")
    if list(ours.dependency) != list(upstream.dependency):
        diffs.append(f"file: imports ours {list(ours.dependency)} != upstream {list(upstream.dependency)}")
    _compare_named("", "service", ours.service, upstream.service, _compare_service, diffs)
    _compare_named("", "message", ours.message_type, upstream.message_type, _compare_message, diffs)
    _compare_named("", "enum", ours.enum_type, upstream.enum_type, _compare_enum, diffs)
    return diffs


@pytest.fixture(scope="module")
def upstream() -> descriptor_pb2.FileDescriptorProto:
    return compile_proto(upstream_proto())


def test_proto_matches_upstream(upstream: descriptor_pb2.FileDescriptorProto) -> None:
    diffs = compare(compile_proto(OURS), upstream)
    assert not diffs, "proto differs from upstream:\n" + "\n".join(diffs)
    assert len(upstream.message_type) > 150 and len(upstream.service) == 2  # we compared the real thing


@pytest.mark.parametrize("edit, expected", [
    ("string log_directory = 3;", "message PodSandboxConfig / field log_directory: number"),
    ("bytes value = 2;", "message KeyValue / field value: type"),
    ("returns (stream ContainerEventResponse)", "service RuntimeService / rpc GetContainerEvents: server_streaming"),
    ("SIGNAL_SIGKILL = 13;", "enum Signal / value SIGNAL_SIGKILL"),
    ("repeated string mount_options = 11;", "message Mount / field mount_options: label"),
])
def test_comparison_catches_differences(upstream: descriptor_pb2.FileDescriptorProto, tmp_path: Path,
                                        edit: str, expected: str) -> None:
    """The comparator itself must fail on each kind of difference (a test that cannot fail is a defect)."""
    text = OURS.read_text()
    assert edit in text
    replacement = {
        "string log_directory = 3;": "string log_directory = 30;",
        "bytes value = 2;": "string value = 2;",
        "returns (stream ContainerEventResponse)": "returns (ContainerEventResponse)",
        "SIGNAL_SIGKILL = 13;": "SIGNAL_SIGKILL = 99;",
        "repeated string mount_options = 11;": "string mount_options = 11;",
    }[edit]
    mutated = tmp_path / "api.proto"
    mutated.write_text(text.replace(edit, replacement, 1))
    diffs = compare(compile_proto(mutated), upstream)
    assert any(d.startswith(expected) for d in diffs), diffs
