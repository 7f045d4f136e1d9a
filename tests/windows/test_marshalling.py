"""Marshalling through real ctypes: the bindings call CFUNCTYPE fakes with the exact Windows signatures.

What this proves: strings go in as NUL-terminated UTF-16LE, out-pointers are
written and read back, every returned string is freed exactly once through the
injected allocator, int32 HRESULTs come back as 0x8XXXXXXX, structs are filled.
It does not prove the DLLs behave as documented (that needs Windows).
"""

from __future__ import annotations

import ctypes as C
import json
import uuid
from typing import Any

import pytest

from runtime.windows import _abi, hcs
from runtime.windows._marshal import guid_in, guid_out, read_wstr, take_wstr, wstr, wstr_in
from runtime.windows.layer_mount import LayerError, VmcomputeLayers
from runtime.windows.network import ComputeNetworkApi, HcnError, NamespaceManager
from runtime.windows.testing.fake_dll import Allocator, FakeDll, put, read_in
from runtime.windows.testing.fake_hcs import FakeHcs, s32

TEXT = "C:\\Прог räm\\😀 file"     # non-BMP characters become surrogate pairs in UTF-16


def test_wstr_is_nul_terminated_utf16le_and_refuses_embedded_nul() -> None:
    buf = wstr(TEXT)
    assert buf.raw == TEXT.encode("utf-16-le") + b"\0\0"
    assert read_wstr(C.addressof(buf)) == TEXT
    assert wstr_in(None) is None
    with pytest.raises(ValueError, match="NUL"):
        wstr("a\0b")


def test_take_wstr_frees_once_and_clears_the_slot() -> None:
    alloc = Allocator()
    slot = C.c_void_p(alloc.string(TEXT))
    assert take_wstr(slot, alloc.free) == TEXT
    assert slot.value is None and alloc.freed == 1 and alloc.outstanding() == 0
    assert take_wstr(slot, alloc.free) is None         # an empty slot frees nothing
    assert alloc.errors == []


def test_guid_round_trips_in_windows_byte_order() -> None:
    value = uuid.UUID("3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f")
    g = guid_in(value)
    assert (g.Data1, g.Data2, g.Data3) == (0x3A8C1F2E, 0x7D6B, 0x4C5A)
    assert bytes(g.Data4) == bytes.fromhex("9e8f0a1b2c3d4e5f")
    assert guid_out(g) == value


class Recorder:
    """A tiny computecore: records what arrives, returns scripted strings and HRESULTs."""

    def __init__(self) -> None:
        self.alloc = Allocator()
        self.seen: list[tuple[str, Any]] = []
        self.fail_with = 0

    def HcsCreateOperation(self, ctx: int | None, cb: int | None) -> int:
        return 0x77

    def HcsCloseOperation(self, op: int | None) -> None:
        self.seen.append(("close", op))

    def HcsCreateComputeSystem(self, id_p: int, doc_p: int, op: int, sd: int | None, out: Any) -> int:
        self.seen.append(("create", (read_in(id_p), read_in(doc_p), sd)))
        put(out, 0xABC)
        return s32(self.fail_with)

    def HcsGetOperationResult(self, op: int, slot: Any) -> int:
        put(slot, self.alloc.string(json.dumps({"Error": s32(self.fail_with), "ErrorMessage": "bad thing"})))
        return s32(self.fail_with)

    def HcsWaitForOperationResult(self, op: int, timeout: int, slot: Any) -> int:
        self.seen.append(("wait", timeout))
        put(slot, self.alloc.string("{}"))
        return 0

    def HcsCloseComputeSystem(self, h: int) -> None:
        self.seen.append(("close_system", h))

    def HcsCreateProcess(self, h: int, p: int, op: int, sd: int | None, out: Any) -> int:
        self.seen.append(("process", read_in(p)))
        put(out, 0xDEF)
        return 0

    def HcsWaitForOperationResultAndProcessInfo(self, op: int, timeout: int, info: Any, slot: Any) -> int:
        info.contents.ProcessId = 4242
        info.contents.StdInput = 0
        info.contents.StdOutput = 0x10
        info.contents.StdError = _abi.INVALID_HANDLE_VALUE
        return 0


def bound(impl: object) -> hcs.ComputeCoreApi:
    dll = FakeDll(impl, _abi.COMPUTECORE)
    hcs.bind(dll, _abi.COMPUTECORE)
    return hcs.ComputeCoreApi(dll, impl.alloc.free)  # type: ignore[attr-defined]


def test_create_system_passes_utf16_strings_and_returns_the_handle() -> None:
    r = Recorder()
    api = bound(r)
    handle = api.create_system(TEXT, '{"Owner": "ö"}', 1234)
    assert handle.value == 0xABC
    assert r.seen == [("create", (TEXT, '{"Owner": "ö"}', None)), ("wait", 1234), ("close", 0x77)]
    assert r.alloc.freed == 1 and r.alloc.outstanding() == 0 and r.alloc.errors == []


def test_a_negative_hresult_becomes_an_unsigned_hcs_error_with_the_result_document() -> None:
    r = Recorder()
    r.fail_with = _abi.HResult.ACCESS_DENIED
    api = bound(r)
    with pytest.raises(hcs.HcsError) as e:
        api.create_system("x", "{}")
    assert e.value.hr == 0x8037011B
    assert e.value.message == "HcsCreateComputeSystem failed with HCS_E_ACCESS_DENIED: bad thing"
    # The handle HCS handed out before failing is closed, the operation closed, the error string freed.
    assert ("close_system", 0xABC) in r.seen and ("close", 0x77) in r.seen
    assert r.alloc.outstanding() == 0 and r.alloc.errors == []


def test_create_process_reads_the_process_information_struct() -> None:
    r = Recorder()
    api = bound(r)
    info = api.create_process(hcs.SystemHandle(0xABC, "sys"), '{"CommandLine": "cmd"}')
    assert (info.pid, info.stdin, info.stdout, info.stderr) == (4242, None, 0x10, None)
    assert info.handle.value == 0xDEF


def test_the_fake_hcs_rejects_misuse_of_operations_with_documented_hresults(hcs_21h2: Any) -> None:
    fake = FakeHcs(hcs_21h2.errors)
    dll = FakeDll(fake, _abi.COMPUTECORE)
    hcs.bind(dll, _abi.COMPUTECORE)
    op = dll.HcsCreateOperation(None, None)
    slot = C.c_void_p()
    assert _abi.unsigned(dll.HcsWaitForOperationResult(op, 10, C.byref(slot))) == _abi.HResult.OPERATION_NOT_STARTED
    fake.delay("HcsEnumerateComputeSystems", 0.5)
    q = wstr("{}")
    assert dll.HcsEnumerateComputeSystems(q, op) == 0
    assert _abi.unsigned(dll.HcsEnumerateComputeSystems(q, op)) == _abi.HResult.OPERATION_ALREADY_STARTED
    assert _abi.unsigned(dll.HcsWaitForOperationResult(op, 10, C.byref(slot))) == _abi.HResult.OPERATION_TIMEOUT
    dll.HcsCloseOperation(op)
    assert fake.violations == [f"HcsCloseOperation: operation of HcsEnumerateComputeSystems closed while in flight"]
    fake.violations.clear()
    out = C.c_void_p()
    assert _abi.unsigned(dll.HcsOpenComputeSystem(wstr("nope"), _abi.GENERIC_ALL, C.byref(out))) == \
        _abi.HResult.SYSTEM_NOT_FOUND


def test_the_fake_hcs_rejects_a_document_with_a_misspelt_key(hcs_21h2: Any) -> None:
    fake = FakeHcs(hcs_21h2.errors)
    dll = FakeDll(fake, _abi.COMPUTECORE)
    hcs.bind(dll, _abi.COMPUTECORE)
    api = hcs.ComputeCoreApi(dll, fake.alloc.free)
    doc = {"Owner": "cri-shim", "SchemaVersion": {"Major": 2, "Minor": 1},
           "Container": {"Storage": {"Layers": [{"ID": "8c7f3a1e-2b4d-5e6f-9a0b-1c2d3e4f5a6b", "Path": "C:\\l"}],
                                     "Path": "\\\\?\\Volume{5b3c2a1d-0000-0000-0000-100000000000}\\"}}}
    with pytest.raises(hcs.HcsError, match="HCS_E_INVALID_JSON") as e:
        api.create_system("c", json.dumps(doc))
    assert "'ID' was unexpected" in (e.value.result_document or "")
    assert fake.violations and fake.problems() == fake.violations


class FakeHcnDll:
    """computenetwork.dll: GUIDs by reference, error records freed with CoTaskMemFree."""

    def __init__(self) -> None:
        self.alloc = Allocator()
        self.namespaces: dict[uuid.UUID, str] = {}
        self.closed = 0

    def HcnCreateNamespace(self, gp: Any, settings: int, handle: Any, record: Any) -> int:
        g = guid_out(gp.contents)
        if g in self.namespaces:
            put(record, self.alloc.string('{"Error": "exists"}'))
            return s32(0x803B000D)
        self.namespaces[g] = read_in(settings) or ""
        put(handle, 0x55)
        return 0

    def HcnOpenNamespace(self, gp: Any, handle: Any, record: Any) -> int:
        if guid_out(gp.contents) not in self.namespaces:
            put(record, self.alloc.string('{"Error": "not found"}'))
            return s32(0x803B000C)
        put(handle, 0x56)
        return 0

    def HcnQueryNamespaceProperties(self, h: int, q: int, props: Any, record: Any) -> int:
        put(props, self.alloc.string('{"Resources": []}'))
        return 0

    def HcnCloseNamespace(self, h: int) -> int:
        self.closed += 1
        return 0

    def HcnDeleteNamespace(self, gp: Any, record: Any) -> int:
        self.namespaces.pop(guid_out(gp.contents), None)
        return 0


def test_hcn_binding_passes_guids_by_reference_and_frees_error_records() -> None:
    impl = FakeHcnDll()
    dll = FakeDll(impl, _abi.COMPUTENETWORK)
    hcs.bind(dll, _abi.COMPUTENETWORK)
    api = ComputeNetworkApi(dll, impl.alloc.free)
    manager = NamespaceManager(api, "test")
    ns = manager.ensure("pod1")
    assert manager.ensure("pod1") == ns                       # idempotent: the namespace exists
    assert json.loads(impl.namespaces[uuid.UUID(ns)]) == {"SchemaVersion": {"Major": 2, "Minor": 0}}
    with pytest.raises(HcnError) as e:
        api.create_namespace(ns, "{}")
    assert e.value.hr == 0x803B000D and "exists" in e.value.message
    manager.delete(ns)
    manager.delete(ns)                                       # idempotent: gone is fine
    assert impl.namespaces == {}
    assert impl.closed == 3 and impl.alloc.outstanding() == 0 and impl.alloc.errors == []


class FakeVmcompute:
    def __init__(self, not_ready: int = 0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.not_ready = not_ready
        self.fail_prepare = False

    def _info(self, info: Any) -> tuple[int, str | None]:
        return info.contents.Flavour, read_in(info.contents.HomeDir)

    def ActivateLayer(self, info: Any, path: int) -> int:
        assert self._info(info) == (1, "")
        if self.not_ready:
            self.not_ready -= 1
            return s32(0x80070015)
        self.calls.append(("activate", read_in(path)))
        return 0

    def PrepareLayer(self, info: Any, path: int, descriptors: Any, count: int) -> int:
        parents = [(str(guid_out(descriptors[i].LayerId)), read_in(descriptors[i].Path), descriptors[i].Flags)
                   for i in range(count)]
        self.calls.append(("prepare", (read_in(path), parents)))
        return s32(0x80070005) if self.fail_prepare else 0

    def GetLayerMountPath(self, info: Any, path: int, length: Any, buf: int | None) -> int:
        volume = "\\\\?\\Volume{11111111-2222-3333-4444-555555555555}"
        if not buf:
            length[0] = len(volume) + 1
        else:
            raw = volume.encode("utf-16-le") + b"\0\0"
            C.memmove(buf, raw, len(raw))
        return 0

    def UnprepareLayer(self, info: Any, path: int) -> int:
        self.calls.append(("unprepare", read_in(path)))
        return 0

    def DeactivateLayer(self, info: Any, path: int) -> int:
        self.calls.append(("deactivate", read_in(path)))
        return 0

    def NameToGuid(self, name: int, g: Any) -> int:
        g.contents.Data1 = len(read_in(name) or "")
        return 0

    def ExpandSandboxSize(self, info: Any, path: int, size: int) -> int:
        self.calls.append(("expand", size))
        return 0


def mounter(impl: FakeVmcompute) -> VmcomputeLayers:
    dll = FakeDll(impl, _abi.VMCOMPUTE_LAYERS)
    hcs.bind(dll, _abi.VMCOMPUTE_LAYERS)
    return VmcomputeLayers(dll, sleep=lambda s: None)


def test_layer_mount_activates_prepares_and_reads_the_volume_path() -> None:
    impl = FakeVmcompute(not_ready=2)      # RS5: the first attempts race with the volume arrival
    m = mounter(impl)
    volume = m.mount("C:\\snap\\9", ["C:\\snap\\12", "C:\\snap\\3"])
    assert volume == "\\\\?\\Volume{11111111-2222-3333-4444-555555555555}\\"
    assert impl.calls == [
        ("activate", "C:\\snap\\9"),
        ("prepare", ("C:\\snap\\9", [("00000002-0000-0000-0000-000000000000", "C:\\snap\\12", 0),
                                     ("00000001-0000-0000-0000-000000000000", "C:\\snap\\3", 0)])),
    ]
    m.expand_scratch("C:\\snap\\9", 20 << 30)
    m.unmount("C:\\snap\\9")
    assert impl.calls[2:] == [("expand", 20 << 30), ("unprepare", "C:\\snap\\9"), ("deactivate", "C:\\snap\\9")]


def test_a_failed_prepare_deactivates_the_scratch_again() -> None:
    impl = FakeVmcompute()
    impl.fail_prepare = True
    with pytest.raises(LayerError, match="PrepareLayer"):
        mounter(impl).mount("C:\\snap\\9", ["C:\\snap\\3"])
    assert [c for c, _ in impl.calls] == ["activate", "prepare", "deactivate"]
