"""Every HCS document cri-shim builds, validated closed-world against the official schemas; parsers; quoting.

"Closed world": each object definition of the published schema gets
`additionalProperties: false` (runtime/windows/testing/schemas.py), so a
misspelt key fails; the only tolerated deviation is the bare-integer
`Settings` of Container/Memory/SizeInMB (KNOWN_DEVIATIONS).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.windows import ocimap
from runtime.windows import schema as S
from runtime.windows.cmdline import join_args, quote_arg, split_command_line
from runtime.windows.testing.schemas import KNOWN_DEVIATIONS, ClosedWorld

VOLUME = "\\\\?\\Volume{5b3c2a1d-0000-0000-0000-100000000000}\\"
LAYER = S.Layer("8c7f3a1e-2b4d-5e6f-9a0b-1c2d3e4f5a6b", "C:\\ProgramData\\cri-shim\\snapshots\\12")
SPEC: dict[str, Any] = {
    "process": {"args": ["cmd", "/c", "echo hi"], "cwd": "C:\\", "env": ["A=1"], "user": {"username": "ContainerUser"}},
    "hostname": "web-0",
    "mounts": [{"source": "C:\\cfg", "destination": "C:\\cfg", "options": ["ro"]},
               {"source": "\\\\.\\pipe\\docker_engine", "destination": "\\\\.\\pipe\\docker_engine"}],
    "windows": {"resources": {"cpu": {"maximum": 2500}, "memory": {"limit": 512 << 20}},
                "network": {"networkNamespace": "3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f",
                            "DNSSearchList": ["svc.cluster.local", "cluster.local"]},
                "devices": [{"id": "5B45201D-F2F2-4F3B-85BB-30FF1F953599", "idType": "class"}]},
}


def documents() -> list[tuple[str, Any]]:
    host = ocimap.HostInfo(4)
    uvm = ocimap.UtilityVmConfig()
    hosted = ocimap.hosted_document(SPEC, (LAYER,), "C:\\c\\1", host, "p@vm", uvm, owner="cri-shim")
    return [
        ("ComputeSystem", S.to_json(ocimap.container_document(SPEC, ocimap.MountedLayers((LAYER,), VOLUME), host,
                                                              owner="cri-shim"))),
        ("ComputeSystem", S.to_json(ocimap.uvm_document("C:\\base\\UtilityVM\\Files", "C:\\vm\\sandbox.vhdx", uvm,
                                                        owner="cri-shim"))),
        ("ComputeSystem", S.to_json(hosted)),
        ("HostedSystem", S.to_json(hosted)["HostedSystem"]),
        ("ProcessParameters", S.to_json(ocimap.process_parameters(SPEC["process"], stdin=True))),
        ("ProcessParameters", S.to_json(ocimap.process_parameters(
            dict(SPEC["process"], terminal=True, consoleSize={"height": 40, "width": 120}), stdin=True))),
        ("System_PropertyQuery", S.to_json(S.PropertyQuery((S.PropertyType.STATISTICS,)))),
        ("ProcessModifyRequest", S.to_json(S.ProcessModifyRequest.resize(40, 120))),
        ("ProcessModifyRequest", S.to_json(S.ProcessModifyRequest.close_stdin())),
        ("SignalProcessOptions", S.to_json(S.SignalProcessOptions(S.ProcessSignal.CTRL_SHUTDOWN))),
        ("LayerData", S.to_json(S.LayerData((LAYER,)))),
        ("Attachment", S.to_json(ocimap.scsi_attachment_request(0, 1, "C:\\s.vhdx", add=True))["Settings"]),
        ("VirtualSmbShare", S.to_json(ocimap.layer_share(LAYER))),
        ("NetworkAdapter", S.to_json(S.NetworkAdapter("5e3b7c1a-2d4f-4a6b-8c9d-0e1f2a3b4c5d", "00-15-5D-01-02-03"))),
    ] + [("ModifySettingRequest", S.to_json(r)) for r in ocimap.update_requests(
        {"memory": {"limit": 1 << 30}, "cpu": {"count": 2}}, host)]


@pytest.mark.parametrize("definition, document", documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_generated_document_is_valid_closed_world_against_21h2(hcs_21h2: ClosedWorld, definition: str,
                                                                     document: Any) -> None:
    assert hcs_21h2.errors(definition, document) == []


def test_the_process_isolated_document_matches_the_brief() -> None:
    doc = documents()[0][1]
    assert doc == {
        "Owner": "cri-shim", "SchemaVersion": {"Major": 2, "Minor": 1},
        "Container": {
            "GuestOs": {"HostName": "web-0"},
            "Storage": {"Layers": [{"Id": LAYER.id, "Path": LAYER.path}], "Path": VOLUME},
            "MappedDirectories": [{"HostPath": "C:\\cfg", "ContainerPath": "C:\\cfg", "ReadOnly": True}],
            "MappedPipes": [{"ContainerPipeName": "docker_engine", "HostPath": "\\\\.\\pipe\\docker_engine"}],
            "Memory": {"SizeInMB": 512},
            "Processor": {"Maximum": 2500},
            "Networking": {"Namespace": "3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f",
                           "DnsSearchList": "svc.cluster.local,cluster.local"},
            "RegistryChanges": {"AddValues": [{"Key": {"Hive": "System", "Name": "ControlSet001\\Control"},
                                               "Name": "WaitToKillServiceTimeout", "Type": "String",
                                               "StringValue": "2147483647"}]},
            "AssignedDevices": [{"Type": "ClassGuid", "InterfaceClassGuid": "5B45201D-F2F2-4F3B-85BB-30FF1F953599"}],
        }}
    # Omitted like Go's omitempty: ShouldTerminateOnLastHandleClosed is false (the daemon restarts, §5.9).
    assert "ShouldTerminateOnLastHandleClosed" not in doc


@pytest.mark.parametrize("path, value, fragment", [
    (("Container", "Processor", "Maximum"), "2500", "is not of type 'integer'"),
    (("Container", "Storage", "Layers", 0, "ID"), LAYER.id, "'ID' was unexpected"),
    (("Container", "Storage", "Layers", 0, "Id"), "not-a-guid", "does not match"),
    (("Container", "RegistryChanges", "AddValues", 0, "Type"), "STRING", "is not one of"),
    (("Container", "Memory", "SizeinMB"), 5, "'SizeinMB' was unexpected"),
])
def test_the_closed_world_check_catches_what_the_open_schema_misses(hcs_21h2: ClosedWorld, path: tuple[Any, ...],
                                                                    value: Any, fragment: str) -> None:
    doc = json.loads(json.dumps(documents()[0][1]))
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    errors = hcs_21h2.errors("ComputeSystem", doc)
    assert any(fragment in e for e in errors), errors


def test_the_only_allow_listed_deviation_is_the_bare_integer_memory_update(hcs_21h2: ClosedWorld) -> None:
    assert [d[:2] for d in KNOWN_DEVIATIONS] == [("ModifySettingRequest", "$.Settings")]
    bare = {"ResourcePath": "Container/Memory/SizeInMB", "RequestType": "Update", "Settings": 1024}
    assert hcs_21h2.errors("ModifySettingRequest", bare) == []
    assert hcs_21h2.errors("ModifySettingRequest", dict(bare, RequestType="update")) != []


def test_schema_objects_refuse_impossible_combinations() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        S.ContainerProcessor(count=1, maximum=100)
    with pytest.raises(ValueError, match="exactly one"):
        S.ComputeSystem(owner="x")
    with pytest.raises(ValueError, match="go together"):
        S.ComputeSystem(owner="x", hosted_system=S.HostedSystem(S.Container(S.Storage((), "C:\\"))))


def test_parsers_read_hcs_results_and_name_bad_fields() -> None:
    assert S.ProcessStatus.parse({"ProcessId": 4, "Exited": True, "ExitCode": 3221225786, "LastWaitResult": 0}) == \
        S.ProcessStatus(4, True, 0xC000013A, 0)
    assert S.SystemExitStatus.parse({"Status": -2143878902, "ExitType": "UnexpectedExit"}) == \
        S.SystemExitStatus(0x8037010A, "UnexpectedExit")
    err = S.ResultError.parse({"Error": -2143878899, "ErrorMessage": "bad json",
                               "ErrorEvents": [{"Message": "line 1"}, {"Provider": "x"}]})
    assert err == S.ResultError(0x8037010D, "bad json", ("line 1",))
    props = S.Properties.parse({"Id": "c", "State": "Running", "ProcessList": [{"ProcessId": 9}],
                                "Statistics": {"Processor": {"TotalRuntime100ns": 5}}})
    assert props.process_ids == (9,) and props.statistics == S.Statistics(total_runtime_100ns=5)
    with pytest.raises(ValueError, match="ExitCode: expected int"):
        S.ProcessStatus.parse({"ExitCode": "3"})
    with pytest.raises(ValueError, match="Exited: expected bool"):
        S.ProcessStatus.parse({"Exited": 1})
    with pytest.raises(ValueError, match="expected a JSON array"):
        S.parse_system_list({})


@pytest.mark.parametrize("args, line", [
    (["cmd", "/c", "echo hi"], 'cmd /c "echo hi"'),
    (["a b", ""], '"a b" ""'),
    (['say "hi"'], '"say \\"hi\\""'),
    (["C:\\path with space\\"], '"C:\\path with space\\\\"'),
    (["C:\\no\\space\\"], "C:\\no\\space\\"),
])
def test_windows_quoting_golden(args: list[str], line: str) -> None:
    assert join_args(args) == line
    assert split_command_line(line) == args


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))),
                min_size=1, max_size=6))
def test_quoting_round_trips_through_the_c_runtime_splitting_rules(args: list[str]) -> None:
    assert split_command_line(join_args(args)) == args
    assert all(quote_arg(a) for a in args)
