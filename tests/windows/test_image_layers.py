"""Windows image layers in the image store: pulled from a real local registry, imported through the layer tar parser.

The store of a node that pulls windows/* images (`images.platform`, or a Windows host) unpacks each layer with
`cri_shim.images.windows_layers` instead of the Linux overlay unpacker: runtime/windows/layer_tar.py parses the
Windows layout (Files/, Hives/, MSWINDOWS PAX records, alternate data streams, whiteouts) into the portable
`FolderWriter`, and each snapshot directory becomes the layer folder the Windows backend is given. What only a
Windows node does (runtime/windows/layer_import.py: BackupWrite + vmcompute ImportLayer / ProcessBaseImage, tested
against fakes in test_layer_import.py) is windows_only below.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim import config as config_mod
from cri_shim import windows_mapping
from cri_shim.api import api_pb2 as pb
from cri_shim.errors import FailedPrecondition
from cri_shim.images import store as image_store
from cri_shim.images import windows_layers
from cri_shim.images.store import ImageStore
from cri_shim.store.db import MetadataStore
from runtime.base import WindowsSandboxSpec
from runtime.windows import layer_tar as L
from tests.harness import imagebuild as ib
from tests.harness.daemon import make_workdir, toml
from tests.harness.registry import LocalRegistry
from tests.windows.test_layer_tar import entry, make_tar

RAWSD = b"\x01\x00\x04\x80" + bytes(16)   # a (minimal) self-relative security descriptor header
WINDOWS = ib.Platform(os="windows", architecture="amd64")


def layer_tar(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    return make_tar(*entries).getvalue()


def windows_image(*layers: bytes, platform: ib.Platform = WINDOWS) -> ib.Image:
    """A single-platform OCI image of already-built (Windows layout) layer tars, gzip-compressed."""
    blobs = [ib.Blob(ib.OCI_LAYER + "+gzip", ib.gzip_bytes(raw)) for raw in layers]
    config_doc = ib.ImageConfig(entrypoint=("cmd.exe", "/c", "ping -t localhost"), env=("PATH=C:\\Windows",),
                                working_dir="C:\\app", platform=platform).json([ib.sha256_digest(r) for r in layers])
    config = ib.Blob(ib.OCI_CONFIG, ib.canonical_json(config_doc))
    top = ib.Blob(ib.OCI_MANIFEST, ib.canonical_json({"schemaVersion": 2, "mediaType": ib.OCI_MANIFEST,
                                                      "config": config.descriptor(),
                                                      "layers": [b.descriptor() for b in blobs]}))
    return ib.Image(top, {b.digest: b for b in (config, *blobs, top)}, platform)


BASE = layer_tar(
    entry("Files", kind=tarfile.DIRTYPE),
    # Real base layers give directories a security descriptor too: its stream is not a file's content.
    entry("Files/Windows", kind=tarfile.DIRTYPE, pax={"MSWINDOWS.rawsd": base64.b64encode(RAWSD).decode()}),
    entry("Files/Windows/System32", kind=tarfile.DIRTYPE),
    entry("Files/Windows/System32/cmd.exe", b"MZ cmd", pax={"MSWINDOWS.fileattr": "32",
                                                             "MSWINDOWS.rawsd": base64.b64encode(RAWSD).decode()}),
    entry("Files/Windows/System32/cmd.exe:Zone.Identifier", b"[ZoneTransfer]"),
    entry("Files/Windows/old.log", b"to be deleted by the next layer"),
    entry("Hives", kind=tarfile.DIRTYPE),
    entry("Hives/Software_Base", b"regf base hive"),
)
APP = layer_tar(
    entry("Files/app", kind=tarfile.DIRTYPE),
    entry("Files/app/index.html", b"hello from a Windows layer\n"),
    entry("Files/app/copy.html", kind=tarfile.LNKTYPE, link="Files/app/index.html"),
    entry("Files/Windows/.wh.old.log"),
    entry("Hives/Software_Delta", b"regf delta"),
)


@pytest.fixture
def store(registry: LocalRegistry) -> Iterator[ImageStore]:
    """The image store of a node that pulls windows/amd64 images (what platform.host() says on Windows)."""
    work = make_workdir("winimg")
    (work / "hosts" / registry.host).mkdir(parents=True)
    (work / "hosts" / registry.host / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    cfg_file = work / "config.toml"
    cfg_file.write_text(toml({"server": {"root": str(work / "root"), "state": str(work / "state")},
                              "registry": {"config_path": str(work / "hosts")},
                              "images": {"platform": "windows/amd64"}}))
    cfg = config_mod.load(cfg_file)
    (work / "root").mkdir()
    db = MetadataStore.open(work / "root" / "meta.db")
    s = image_store.build(cfg, db)
    yield s
    s.close()
    db.close()
    shutil.rmtree(work, ignore_errors=True)


def pull(registry: LocalRegistry, store: ImageStore, image: ib.Image, repo: str) -> str:
    ib.push(image, registry.host, repo, "ltsc2022")
    ref = f"{registry.host}/{repo}:ltsc2022"
    asyncio.run(store.pull(ref, None, 30))
    return ref


def test_a_windows_image_is_imported_into_layer_folders_the_windows_backend_uses(
        registry: LocalRegistry, store: ImageStore) -> None:
    ref = pull(registry, store, windows_image(BASE, APP), "winlayers/servercore")
    used = store.use(ref, "c1")
    assert used.config.os == "windows"
    record = store.find(ref)
    assert record is not None
    base, app = (Path(p) for p in used.layers)                    # lowest first, one folder per layer
    assert [base, app] == [store.snapshots.path(c) for c in record.snapshot_ids]

    cmd = (base / "Files" / "Windows" / "System32" / "cmd.exe").read_bytes()
    # the Win32 backup stream BackupWrite would get: security descriptor, data, then the alternate data stream
    security = L.stream_header(L.BACKUP_SECURITY_DATA, len(RAWSD)) + RAWSD
    data = L.stream_header(L.BACKUP_DATA, 6) + b"MZ cmd"
    ads = L.stream_header(L.BACKUP_ALTERNATE_DATA, 14, ":Zone.Identifier:$DATA") + b"[ZoneTransfer]"
    assert cmd == security + data + ads
    assert (base / "Hives" / "Software_Base").read_bytes().endswith(b"regf base hive")
    assert not (base / "tombstones.txt").exists()

    assert (app / "Files" / "app" / "index.html").read_bytes().endswith(b"hello from a Windows layer\n")
    assert (app / "Files" / "app" / "copy.html").stat().st_ino == (app / "Files" / "app" / "index.html").stat().st_ino
    assert (app / "tombstones.txt").read_text(encoding="utf-8") == "\ufeffVersion 1.0\n\\Files\\Windows\\old.log\n"
    assert not (app / "Files" / "Windows" / "old.log").exists()   # a deletion is recorded, never applied here

    # CreateContainer hands these folders to the backend: OCI windows.layerFolders, topmost first, scratch last
    pod = windows_mapping.WindowsPod(id="p" * 64, hostname="pod", config=pb.PodSandboxConfig(),
                                     spec=WindowsSandboxSpec())
    spec = windows_mapping.container_spec(pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app")), pod,
                                          windows_mapping.WindowsImage(entrypoint=used.config.entrypoint),
                                          [*used.layers, "/scratch"])
    assert spec["windows"]["layerFolders"] == [str(app), str(base), "/scratch"]
    store.remove_user("c1")


@pytest.mark.parametrize(("layer", "message"), [
    (layer_tar(entry("etc/passwd", b"root:x:0:0")), "only holds Files/, Hives/ and UtilityVM/"),
    (layer_tar(entry("Files/../../escape", b"x")), "'..' path components are not allowed"),
    (layer_tar(entry("Files/a", b"x"), entry("Files/a:ads", b"y"), entry("Files/b", b"z"),
               entry("Files/a:late", b"w")), "must directly follow its file"),
])
def test_a_bad_windows_layer_fails_the_pull_clearly_and_leaves_no_snapshot(
        registry: LocalRegistry, store: ImageStore, layer: bytes, message: str) -> None:
    image = windows_image(BASE, layer)
    ib.push(image, registry.host, "winlayers/bad", "v1")
    with pytest.raises(FailedPrecondition, match=message):
        asyncio.run(store.pull(f"{registry.host}/winlayers/bad:v1", None, 30))
    assert store.find(f"{registry.host}/winlayers/bad:v1") is None
    assert store.snapshots.chain_ids() == set()                  # the good base layer was collected too
    assert sorted(p.name for p in store.snapshots.root.rglob("*")) == []


def test_a_node_pulls_with_the_unpacker_of_its_own_os() -> None:
    linux = image_store.unpacker("linux", 0)
    windows = image_store.unpacker("windows", 0)
    assert getattr(linux, "func").__module__ == "runtime.linux.unpack"
    assert getattr(windows, "func").__module__ == "runtime.windows.layer_folder"


def test_the_layer_byte_budget_stops_a_large_windows_layer(tmp_path: Path) -> None:
    unpack = windows_layers.unpacker(64)
    with pytest.raises(L.LayerFormatError, match="max_layer_bytes"):
        unpack(io.BytesIO(layer_tar(entry("Files/big.bin", bytes(200)))), tmp_path)


def test_a_later_entry_replaces_an_earlier_one_and_file_directory_clashes_are_refused(tmp_path: Path) -> None:
    unpack = windows_layers.unpacker(0)
    unpack(io.BytesIO(layer_tar(entry("Files/a.txt", b"first"), entry("Files/a.txt", b"second"))), tmp_path / "ok")
    assert (tmp_path / "ok" / "Files" / "a.txt").read_bytes() == L.stream_header(L.BACKUP_DATA, 6) + b"second"
    with pytest.raises(L.LayerFormatError, match="a file and a directory at the same path"):
        unpack(io.BytesIO(layer_tar(entry("Files/x", b"file"), entry("Files/x", kind=tarfile.DIRTYPE))),
               tmp_path / "clash")
    with pytest.raises(L.LayerFormatError, match="is a file earlier in the layer"):
        unpack(io.BytesIO(layer_tar(entry("Files/x", b"file"), entry("Files/x/y", b"under a file"))),
               tmp_path / "under")


@pytest.mark.windows_only
def test_a_pulled_windows_image_runs_a_process_isolated_container_on_a_real_node() -> None:
    """The importer (runtime/windows/layer_import.py: BackupWrite + vmcompute ImportLayer / ProcessBaseImage)
    makes layer folders HCS can mount; test_layer_import.py checks it against fakes only."""
    assert sys.platform == "win32"
    pytest.fail("needs a self-hosted Windows Server 2022 runner with a pullable Windows image")
