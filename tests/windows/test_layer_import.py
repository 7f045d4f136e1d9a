"""The Windows layer importer (runtime/windows/layer_import.py) through real ctypes into CFUNCTYPE fakes.

The fakes (runtime/windows/testing/fake_files.py) stand in for kernel32, advapi32 and vmcompute, which exist only
on Windows; they run on real Linux files and record every call. What this proves: every file's BackupWrite
receives exactly the backup stream layer_tar produced (the same bytes the portable FolderWriter stores, which
test_layer_tar pins to the documented layout), in order, with the right security flag; the transport folder
ImportLayer is given has hcsshim's legacy layout; ImportLayer receives the layer, the staging folder and the
parents' descriptors in order; base layers are processed (and their utility VM); deletions, hard links and
directory times are applied after the import; failures leave no staging folder, handle or BackupWrite context
and name the call, the Win32 error or HRESULT and the path; a pull through the image store imports an image's
layers bottom-up with the parents' snapshot folders. What it cannot prove (windows_only below): that Windows
accepts these calls and bytes.
"""

from __future__ import annotations

import base64
import io
import shutil
import struct
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.errors import FailedPrecondition
from cri_shim.images import platform as image_platform
from cri_shim.images import windows_layers
from cri_shim.images.pull import LayeredUnpacker, PullSettings
from cri_shim.images.store import ImageStore
from cri_shim.store.db import MetadataStore
from runtime.base import RuntimeFailure, Unsupported
from runtime.windows import layer_tar as L
from runtime.windows.layer_folder import write_layer_folder
from runtime.windows.layer_import import STAGING_SUFFIX
from runtime.windows.testing.fake_files import FakeImportNode, fake_importer
from tests.harness import imagebuild as ib
from tests.harness.daemon import make_workdir
from tests.harness.registry import LocalRegistry
from tests.windows.test_image_layers import APP, BASE, RAWSD, entry, layer_tar, pull, windows_image

RAWSD_B64 = base64.b64encode(RAWSD).decode()
UVM_BASE = layer_tar(
    entry("Files", kind=tarfile.DIRTYPE),
    entry("Files/Windows", kind=tarfile.DIRTYPE, pax={"MSWINDOWS.fileattr": "16", "MSWINDOWS.rawsd": RAWSD_B64}),
    entry("Files/Windows/notepad.exe", b"MZ notepad"),
    entry("Files/Windows/notepad2.exe", kind=tarfile.LNKTYPE, link="Files/Windows/notepad.exe"),
    entry("UtilityVM", kind=tarfile.DIRTYPE),
    entry("UtilityVM/Files", kind=tarfile.DIRTYPE),
    entry("UtilityVM/Files/EFI/Microsoft/Boot/BCD", b"bcd store", pax={"MSWINDOWS.rawsd": RAWSD_B64}),
    entry("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", b"efi"),
)
MID_ENTRIES = (
    entry("Files/tools", kind=tarfile.DIRTYPE, pax={"MSWINDOWS.fileattr": "16"}),
    entry("Files/tools/a.exe", b"MZ a", pax={"MSWINDOWS.fileattr": "33", "MSWINDOWS.rawsd": RAWSD_B64}),
    entry("Files/tools/a.exe:stream", b"ads"),
    entry("Files/scratch.tmp", b"created and deleted in this layer"),
    entry("Files/.wh.scratch.tmp"),
    entry("Files/tools/a-link.exe", kind=tarfile.LNKTYPE, link="Files/tools/a.exe"),
    entry("Files/cmd-link.exe", kind=tarfile.LNKTYPE, link="Files/Windows/System32/cmd.exe"),   # in the base
    entry("Hives", kind=tarfile.DIRTYPE),
    entry("Hives/Software_Delta", b"regf mid", pax={"MSWINDOWS.rawsd": RAWSD_B64}),
)
MID = layer_tar(*MID_ENTRIES)


def streams(raw: bytes, tmp: Path) -> dict[str, bytes]:
    """layer_tar's backup stream of every file (the oracle): what FolderWriter stores, by Windows path."""
    out = tmp / "oracle"
    write_layer_folder(io.BytesIO(raw), out)
    return {"\\".join(p.relative_to(out).parts): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "tombstones.txt"}


@pytest.fixture
def node() -> Iterator[FakeImportNode]:
    n = fake_importer()
    yield n
    assert n.win32.leaks() == []


def folders(tmp: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp / name).mkdir()
        out.append(tmp / name)
    return out


def test_a_base_layer_is_restored_with_backupwrite_in_place_then_processed(node: FakeImportNode,
                                                                          tmp_path: Path) -> None:
    (base,) = folders(tmp_path, "base")
    assert node.importer.import_layer(io.BytesIO(BASE), base, ()) == 8
    expected = streams(BASE, tmp_path)
    for path, stream in expected.items():
        assert node.win32.backup_of(base.joinpath(*path.split("\\"))) == stream, path
    cmd = node.win32.backup_of(base / "Files" / "Windows" / "System32" / "cmd.exe")
    assert cmd.startswith(L.stream_header(L.BACKUP_SECURITY_DATA, len(RAWSD)) + RAWSD)   # security first, ADS last
    assert cmd.endswith(L.stream_header(L.BACKUP_ALTERNATE_DATA, 14, ":Zone.Identifier:$DATA") + b"[ZoneTransfer]")
    written = [h for h in node.win32.closed if h.backup_calls]
    assert {s for h in written for s in h.process_security} == {True}    # base layers restore security
    assert node.win32.basic_info[str(base / "Files/Windows/System32/cmd.exe")].FileAttributes == 32
    assert node.win32.privileges == ["SeBackupPrivilege", "SeRestorePrivilege"]
    assert node.vmcompute.calls == [("ProcessBaseImage", str(base))]
    assert node.vmcompute.imports == []
    assert (base / "blank.vhdx").exists()                  # what ProcessBaseImage makes (here: the fake)


def test_a_base_layer_with_a_utility_vm_backs_up_the_bcd_and_processes_the_utility_vm(
        node: FakeImportNode, tmp_path: Path) -> None:
    (base,) = folders(tmp_path, "base")
    node.importer.import_layer(io.BytesIO(UVM_BASE), base, ())
    bcd = (L.stream_header(L.BACKUP_SECURITY_DATA, len(RAWSD)) + RAWSD + L.stream_header(L.BACKUP_DATA, 9)
           + b"bcd store")
    assert node.win32.backup_of(base / "UtilityVM/Files/EFI/Microsoft/Boot/BCD") == bcd
    assert node.win32.backup_of(base / "bcd.bak") == bcd      # the copy kept before processing rewrites it
    assert [h.process_security for h in node.win32.closed if h.path == str(base / "bcd.bak")] == [{False}]
    assert node.vmcompute.calls == [("ProcessBaseImage", str(base)), ("ProcessUtilityImage", str(base / "UtilityVM"))]
    link, target = base / "Files/Windows/notepad2.exe", base / "Files/Windows/notepad.exe"
    assert link.stat().st_ino == target.stat().st_ino
    # a directory's own stream (its security descriptor) is restored too; its times and attributes are put back
    # after the entries below it were written
    assert node.win32.backup_of(base / "Files/Windows") == L.stream_header(L.BACKUP_SECURITY_DATA, len(RAWSD)) + RAWSD
    assert node.win32.basic_info[str(base / "Files/Windows")].FileAttributes == 16


def test_a_layer_over_parents_is_staged_in_the_transport_format_and_imported_with_its_parents_in_order(
        node: FakeImportNode, tmp_path: Path) -> None:
    base, app, mid = folders(tmp_path, "base", "app", "mid")
    node.importer.import_layer(io.BytesIO(BASE), base, ())
    node.importer.import_layer(io.BytesIO(APP), app, (base,))
    assert node.importer.import_layer(io.BytesIO(MID), mid, (app, base)) == 9

    call = node.vmcompute.imports[-1]
    assert call.layer == str(mid)
    assert call.staging == str(mid) + STAGING_SUFFIX and Path(call.staging).parent == mid.parent
    ids = {p: node.importer._native.layer_id(str(p)) for p in (app, base)}       # type: ignore[attr-defined]
    assert call.parents == [(ids[app], str(app), 0), (ids[base], str(base), 0)]   # immediate parent first
    assert call.parents_exist

    oracle = streams(layer_tar(*(e for e in MID_ENTRIES if e[0].name != "Files/cmd-link.exe")), tmp_path)
    attrs = struct.pack("<I", 33)
    assert call.staged["Files/tools/a.exe"] == attrs + oracle["Files\\tools\\a.exe"]     # attributes, raw stream
    assert call.staged["Files/tools.$wcidirs$"] == struct.pack("<I", 16)                # a directory's metadata
    assert "tools" in [Path(d).name for d in call.staged_dirs]
    assert node.win32.backup_of(Path(call.staging) / "Hives" / "Software_Delta") == oracle["Hives\\Software_Delta"]
    hive = [h for h in node.win32.closed if h.path == str(Path(call.staging) / "Hives" / "Software_Delta")]
    assert hive[0].process_security == {False}
    assert not any("link" in k for k in call.staged)          # hard links and deletions come after the import
    assert "Files/scratch.tmp" in call.staged
    # transport files carry times but attribute 0 ("unchanged"): the real attributes are the 4-byte prefix
    assert node.win32.basic_info[str(Path(call.staging) / "Files/tools/a.exe")].FileAttributes == 0

    assert not Path(call.staging).exists()
    assert not (mid / "Files" / "scratch.tmp").exists()                      # the whiteout, after the import
    assert (mid / "Files/tools/a-link.exe").stat().st_ino == (mid / "Files/tools/a.exe").stat().st_ino
    assert (mid / "Files/cmd-link.exe").stat().st_ino == (base / "Files/Windows/System32/cmd.exe").stat().st_ino
    assert [c for c, _ in node.vmcompute.calls] == ["ProcessBaseImage", "ImportLayer", "ImportLayer"]
    assert node.win32.privileges == ["SeBackupPrivilege", "SeRestorePrivilege"]    # enabled once per process


@pytest.mark.parametrize(("raw", "parents", "failing_call"), [
    (MID, 1, 1),          # over a parent: the hive, after the Files entries were staged
    (UVM_BASE, 0, 3),     # a base layer: the third file restored in place
], ids=["over-a-parent", "base-layer"])
def test_backupwrite_failing_mid_layer_leaves_no_staging_folder_handle_or_context(
        node: FakeImportNode, tmp_path: Path, raw: bytes, parents: int, failing_call: int) -> None:
    base, layer = folders(tmp_path, "base", "layer")
    node.importer.import_layer(io.BytesIO(BASE), base, ())
    node.win32.backup_write_calls = 0
    node.win32.fail_backup_write_at = failing_call
    with pytest.raises(RuntimeFailure) as e:
        node.importer.import_layer(io.BytesIO(raw), layer, (base,) if parents else ())
    assert e.value.message.startswith(f"importing the Windows layer {layer}")
    assert f"BackupWrite({layer}" in e.value.message and "failed with ERROR_DISK_FULL" in e.value.message
    assert node.vmcompute.imports == []                          # never imported half a layer
    assert [c for c, _ in node.vmcompute.calls] == ["ProcessBaseImage"]    # only the good base layer's
    assert not Path(str(layer) + STAGING_SUFFIX).exists()


def test_import_layer_failing_names_the_call_and_layer_and_removes_the_staging_folder(
        node: FakeImportNode, tmp_path: Path) -> None:
    base, mid = folders(tmp_path, "base", "mid")
    node.importer.import_layer(io.BytesIO(BASE), base, ())
    node.vmcompute.fail["ImportLayer"] = 0x80070005
    with pytest.raises(RuntimeFailure, match=rf"importing the Windows layer {mid} over 1 parent layers: "
                                             rf"ImportLayer\({mid}\) failed with 0x80070005"):
        node.importer.import_layer(io.BytesIO(MID), mid, (base,))
    assert not Path(str(mid) + STAGING_SUFFIX).exists()


def test_process_base_image_failing_is_reported_with_its_hresult(node: FakeImportNode, tmp_path: Path) -> None:
    (base,) = folders(tmp_path, "base")
    node.vmcompute.fail["ProcessBaseImage"] = 0x80370118
    with pytest.raises(RuntimeFailure, match=r"\(base layer\): ProcessBaseImage\(.*\) failed with "
                                             r"HCS_E_OPERATION_TIMEOUT"):
        node.importer.import_layer(io.BytesIO(BASE), base, ())


def test_without_backup_privileges_the_import_says_how_to_run_the_daemon(node: FakeImportNode,
                                                                        tmp_path: Path) -> None:
    node.win32.privilege_not_held = True
    with pytest.raises(RuntimeFailure, match="ERROR_NOT_ALL_ASSIGNED.*SYSTEM or an administrator"):
        node.importer.import_layer(io.BytesIO(BASE), folders(tmp_path, "base")[0], ())
    assert node.win32.closed == []                        # nothing was written


@pytest.mark.parametrize(("raw", "parents", "message"), [
    (layer_tar(entry("Files/j", kind=tarfile.SYMTYPE, link="C:\\elsewhere", pax={"MSWINDOWS.mountpoint": "1",
                                                                               "MSWINDOWS.fileattr": "16"}),
               entry("Files/j/escape.txt", b"through the junction")), 0, "below Files\\\\j, a link or junction"),
    (layer_tar(entry("Files/s", kind=tarfile.SYMTYPE, link="C:\\Windows"),
               entry("Files/l", kind=tarfile.LNKTYPE, link="Files/s/System32/config/SAM")), 0,
     "below Files\\\\s, a link or junction"),
    (layer_tar(entry("Files/j", kind=tarfile.SYMTYPE, link="C:\\elsewhere", pax={"MSWINDOWS.mountpoint": "1",
                                                                               "MSWINDOWS.fileattr": "16"}),
               entry("Files/j/.wh.x")), 1, "below Files\\\\j, a link or junction"),
    (layer_tar(entry("Files/a", b"x"), entry("Files/.wh.b")), 0, "a base layer cannot delete files"),
    (layer_tar(entry("UtilityVM/Files/x", b"x")), 1, "UtilityVM content outside the base layer"),
    (layer_tar(entry("Files/l", kind=tarfile.LNKTYPE, link="Files/nowhere")), 1, "neither in this layer nor"),
    (layer_tar(entry("Hives/.wh.System")), 1, "only files under Files/ can be deleted"),
    (layer_tar(entry("Files/a", b"x", pax={"MSWINDOWS.sd": "O:BAG:SY"})), 0, "MSWINDOWS.sd"),
    (layer_tar(entry("Files/big", bytes(300))), 1, "max_layer_bytes"),
])
def test_layers_the_importer_cannot_import_safely_are_refused_naming_the_entry(
        tmp_path: Path, raw: bytes, parents: int, message: str) -> None:
    node = fake_importer(max_bytes=256)
    base, layer = folders(tmp_path, "base", "layer")
    with pytest.raises(L.LayerFormatError, match=message):
        node.importer.import_layer(io.BytesIO(raw), layer, (base,) if parents else ())
    assert node.win32.leaks() == []
    assert not Path(str(layer) + STAGING_SUFFIX).exists()
    assert not (tmp_path / "elsewhere").exists()


def test_a_hard_link_never_follows_a_junction_in_a_parent_layer_out_of_it(node: FakeImportNode,
                                                                          tmp_path: Path) -> None:
    base, layer, outside = folders(tmp_path, "base", "layer", "outside")
    (outside / "secret").write_bytes(b"host file")
    (base / "Files").mkdir()
    (base / "Files" / "j").symlink_to(outside)          # what a junction in a parent layer folder looks like here
    raw = layer_tar(entry("Files/stolen", kind=tarfile.LNKTYPE, link="Files/j/secret"))
    with pytest.raises(L.LayerFormatError, match="'j' in .* is a link or junction; refusing to follow it"):
        node.importer.import_layer(io.BytesIO(raw), layer, (base,))
    assert (outside / "secret").stat().st_nlink == 1    # no second name for the host file
    assert not Path(str(layer) + STAGING_SUFFIX).exists()


# ---------------------------------------------------------------- through the image store


@pytest.fixture
def imported(registry: LocalRegistry) -> Iterator[tuple[ImageStore, FakeImportNode]]:
    """An image store whose Windows unpacker is the real importer bound to the fake DLLs (as on a Windows node)."""
    work = make_workdir("winimport")
    hosts = work / "hosts" / registry.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    node = fake_importer()
    unpack = windows_layers.unpacker(0, importer=node.importer)
    assert isinstance(unpack, LayeredUnpacker)
    db = MetadataStore.open(work / "meta.db")
    settings = PullSettings(config_path=str(work / "hosts"), platform=image_platform.parse("windows/amd64"))
    store = ImageStore(work / "root", db, settings, unpack)
    store.open()
    yield store, node
    store.close()
    db.close()
    assert node.win32.leaks() == []
    shutil.rmtree(work, ignore_errors=True)


def test_a_pull_imports_the_layers_bottom_up_with_their_parents_snapshot_folders(
        registry: LocalRegistry, imported: tuple[ImageStore, FakeImportNode]) -> None:
    store, node = imported
    ref = pull(registry, store, windows_image(BASE, APP, MID), "winimport/three")
    used = store.use(ref, "c1")
    base, app, mid = (Path(p) for p in used.layers)
    calls = node.vmcompute.imports
    assert [c.parents_exist for c in calls] == [True, True]
    assert [[p for _, p, _ in c.parents] for c in calls] == [[str(base)], [str(app), str(base)]]
    assert [Path(c.layer).parent for c in calls] == [store.snapshots.root] * 2       # imported, then committed
    assert [c for c, _ in node.vmcompute.calls] == ["ProcessBaseImage", "ImportLayer", "ImportLayer"]
    assert (base / "blank.vhdx").exists()
    assert (mid / "Files/cmd-link.exe").stat().st_ino == (base / "Files/Windows/System32/cmd.exe").stat().st_ino
    assert sorted(p.name for p in store.snapshots.root.iterdir()) == sorted(p.name for p in (base, app, mid))
    store.remove_user("c1")


def test_a_failing_import_fails_the_pull_naming_the_layer_and_leaves_nothing(
        registry: LocalRegistry, imported: tuple[ImageStore, FakeImportNode]) -> None:
    store, node = imported
    node.vmcompute.fail["ImportLayer"] = 0x80070070             # ERROR_DISK_FULL as an HRESULT
    image = windows_image(BASE, APP)
    with pytest.raises(FailedPrecondition) as e:
        pull(registry, store, image, "winimport/fails")
    app_digest = ib.sha256_digest(ib.gzip_bytes(APP))
    assert f"layer {app_digest}: cannot unpack: importing the Windows layer" in e.value.message
    assert "ImportLayer(" in e.value.message and "0x80070070" in e.value.message
    assert list(store.snapshots.root.iterdir()) == []           # no snapshot (the base was collected), no staging


def test_on_a_windows_node_the_store_imports_over_parents_and_loads_the_dlls_only_when_importing(
        tmp_path: Path) -> None:
    unpack = windows_layers.unpacker(0, windows_host=True)
    assert isinstance(unpack, LayeredUnpacker)                  # built without loading a DLL
    with pytest.raises(Unsupported, match="needs Windows Server 2022"):
        unpack.unpack(io.BytesIO(BASE), tmp_path, ())           # here (Linux) the first import needs the DLLs
    assert list(tmp_path.iterdir()) == []


@pytest.mark.windows_only
def test_the_importer_makes_layer_folders_a_real_node_mounts() -> None:
    """BackupWrite with backup privileges, ImportLayer of the transport folder, ProcessBaseImage (blank.vhdx),
    deletions after the import, renaming the imported folder to its chain id; then a container runs on it."""
    assert sys.platform == "win32"
    pytest.fail("needs a self-hosted Windows Server 2022 runner (tests/windows/test_real_node.py)")
