"""The hostile-layer corpus: every case ends in a clear UnpackError or a result confined to the target.

Each case unpacks into `target/` while a sentinel tree `outside/` sits next to
it (the absolute paths and `../` climbs in the cases aim at it). After every
case, and again after the partly written target is deleted the way the caller
is told to (shutil.rmtree), `outside/` and the work dir must be exactly as
before: same entries, modes, owners, times, contents, xattrs.

Case names follow containerd's pkg/archive TestBreakouts where they mirror one
(their expectations adapted: a layer here is unpacked alone into an empty
directory, so "pre-existing" state is built by earlier entries of the same
tar), plus the CPython tarfile filter-bypass shapes (CVE-2007-4559,
CVE-2024-12718, CVE-2025-4138/-4330/-4517/-8194, gh-149486, gh-151558),
budgets and malformed archives.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from runtime.linux.unpack import UnpackError, UnpackLimits, unpack_layer
from tests.harness import imagebuild as ib
from tests.integration.unpack_helpers import Workspace, listing, workspace

Builder = Callable[[str], list[ib.Entry]]          # absolute path of outside/ -> entries
Check = Callable[[Path, str], None]                # target, outside path relative to "/" -> asserts


@dataclass(frozen=True)
class Case:
    name: str
    entries: Builder
    error: str | None = None       # regex the UnpackError message must match
    check: Check | None = None     # asserts on the confined result
    limits: UnpackLimits = field(default_factory=UnpackLimits)


def same_inode(a: str, b: str) -> Check:
    def check(t: Path, _: str) -> None:
        assert (t / a).lstat().st_ino == (t / b).lstat().st_ino
    return check


def content(path: str, data: bytes) -> Check:
    def check(t: Path, _: str) -> None:
        assert (t / path).read_bytes() == data
    return check


def whiteout_at(path: str) -> Check:
    def check(t: Path, _: str) -> None:
        st = (t / path).lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    return check


def is_symlink(path: str, to: str) -> Check:
    def check(t: Path, _: str) -> None:
        assert os.readlink(t / path) == to
    return check


def all_of(*checks: Check) -> Check:
    def check(t: Path, orel: str) -> None:
        for c in checks:
            c(t, orel)
    return check


def inside_copy(name: str, data: bytes) -> Check:
    """The entry aimed at outside/<name> landed at target/<abs path of outside>/<name> instead."""
    def check(t: Path, orel: str) -> None:
        assert (t / orel / name).read_bytes() == data
    return check


ETC = [ib.dir_("etc", mode=0o770), ib.file("etc/passwd", b"inside")]
F = ib.file
D = ib.dir_
S = ib.symlink
H = ib.hardlink

CASES = [
    # ---- paths
    Case("AbsolutePath", lambda o: [F(f"{o}/secret", b"pwned")], check=inside_copy("secret", b"pwned")),
    Case("DotDotPath", lambda o: [F("../outside/secret", b"pwned")], check=content("outside/secret", b"pwned")),
    Case("DotDotDeep", lambda o: [F("a/../../../../../../.." + o + "/secret", b"pwned")],
         check=inside_copy("secret", b"pwned")),
    Case("DotDotDirectoryMetadata", lambda o: [D("../outside", mode=0o777, uid=4321)],
         check=lambda t, _: None),  # CVE-2024-12718 shape: the mode lands on target/outside
    Case("NulInPaxPath", lambda o: [F("x" * 120 + "\0/../../outside/secret", b"pwned")], error="NUL byte"),
    # ---- symlinks (containerd TestBreakouts)
    Case("SymlinkAbsolute", lambda o: [D("etc"), S("localetc", "/etc"), F("/localetc/unbroken", b"unbroken")],
         check=content("etc/unbroken", b"unbroken")),
    Case("SymlinkUpAndOut", lambda o: [D("etc"), D("dummy"), S("localetc", "/dummy/../etc"),
                                       F("/localetc/unbroken", b"unbroken")],
         check=content("etc/unbroken", b"unbroken")),
    Case("SymlinkMultipleAbsolute", lambda o: [D("etc"), D("dummy"), S("/dummy/etc", "/etc"),
                                               S("localetc", "/dummy/etc"), F("/dummy/etc/unbroken", b"unbroken")],
         check=content("etc/unbroken", b"unbroken")),
    Case("SymlinkMultipleRelative", lambda o: [D("etc"), D("dummy"), S("/dummy/etc", "/etc"),
                                               S("localetc", "./dummy/etc"), F("/dummy/etc/unbroken", b"unbroken")],
         check=content("etc/unbroken", b"unbroken")),
    Case("SymlinkEmptyFile", lambda o: [D("etc"), F("etc/emptied", b"notempty"), S("localetc", "/etc"),
                                        F("/localetc/emptied", b"")],
         check=content("etc/emptied", b"")),
    Case("SymlinkParentDirectory", lambda o: [*ETC, S("..", "/etc/"), H("localpasswd", "/etc/passwd")],
         error="names the layer root but is not a directory"),
    Case("SymlinkEmptyFilename", lambda o: [*ETC, S("", "/etc/")],
         error="names the layer root but is not a directory"),
    Case("SymlinkParentRelative", lambda o: [*ETC, S("localetc/sub/..", "/etc/"),
                                             H("/localetc/localpasswd", "/etc/passwd")],
         check=same_inode("etc/localpasswd", "etc/passwd")),
    Case("SymlinkSlashEnded", lambda o: [*ETC, D("localetc/"), H("/localetc/localpasswd", "/etc/passwd")],
         check=same_inode("localetc/localpasswd", "etc/passwd")),
    Case("SymlinkOverrideDirectory", lambda o: [*ETC, D("localetc"), S("localetc", "/etc"),
                                                H("/localetc/localpasswd", "/etc/passwd")],
         check=all_of(is_symlink("localetc", "/etc"), same_inode("etc/localpasswd", "etc/passwd"))),
    Case("SymlinkOverrideDirectoryRelative", lambda o: [*ETC, D("localetc"), S("localetc", "../../etc"),
                                                        H("/localetc/localpasswd", "/etc/passwd")],
         check=same_inode("etc/localpasswd", "etc/passwd")),
    Case("SymlinkOverridePath", lambda o: [D("a"), F("a/f", b"in a"), S("a", o), F("a/g", b"pwned")],
         error="'a' is a symlink to nothing in the layer"),
    Case("SymlinkToOutsideAbsolute", lambda o: [S("esc", o), F("esc/secret", b"pwned")],
         error="parent 'esc' is a symlink to nothing"),
    Case("SymlinkToOutsideAbsoluteMirrored", lambda o: [D(o), S("esc", o), F("esc/secret", b"pwned")],
         check=inside_copy("secret", b"pwned")),
    Case("SymlinkToOutsideRelative", lambda o: [S("a/b/esc", "../../../../../../../outside"),
                                                F("a/b/esc/secret", b"pwned")],
         error="symlink to nothing"),
    Case("SymlinkChainToOutside", lambda o: [S("a", "b"), S("b", "c/../../outside"), F("a/secret", b"pwned")],
         error="symlink to nothing"),
    Case("SymlinkLoop", lambda o: [S("a", "b"), S("b", "a"), F("a/x", b"x")], error="symlink"),
    Case("FileOverSymlinkToOutside", lambda o: [S("f", f"{o}/secret"), F("f", b"replaced", mode=0o777, uid=7)],
         check=content("f", b"replaced")),
    Case("FileOverRelativeSymlinkToOutside", lambda o: [S("f", "../outside/secret"), F("f", b"replaced")],
         check=content("f", b"replaced")),
    Case("SymlinkMetadataNotFollowed", lambda o: [S("s", f"{o}/secret", uid=4321, gid=4321, mtime=1)],
         check=lambda t, _: None),
    # ---- hardlinks
    Case("HardlinkRelative", lambda o: [*ETC, D("breakouts"), S("breakouts/d1", "../../etc"),
                                        H("breakouts/mypasswd", "/breakouts/d1/passwd")],
         check=same_inode("breakouts/mypasswd", "etc/passwd")),
    Case("HardlinkDownAndOut", lambda o: [*ETC, D("breakouts"), D("downandout"),
                                          S("breakouts/d1", "../downandout/../../etc"),
                                          H("breakouts/mypasswd", "/breakouts/d1/passwd")],
         check=same_inode("breakouts/mypasswd", "etc/passwd")),
    Case("HardlinkAbsolute", lambda o: [*ETC, S("localetc", "/etc"), H("localpasswd", "/localetc/passwd")],
         check=same_inode("localpasswd", "etc/passwd")),
    Case("HardlinkRelativeLong", lambda o: [*ETC, S("localetc", "../../../../../../../etc"),
                                            H("localpasswd", "/localetc/passwd")],
         check=same_inode("localpasswd", "etc/passwd")),
    # containerd cleans "upandout/.." lexically; the kernel needs upandout to exist, so here it is an error.
    Case("HardlinkRelativeUpAndOut", lambda o: [*ETC, S("localetc", "upandout/../../../etc"),
                                                H("localpasswd", "/localetc/passwd")],
         error="'localetc' does not resolve inside the layer"),
    Case("HardlinkRelativeUpAndOutExisting", lambda o: [*ETC, D("upandout"), S("localetc", "upandout/../../../etc"),
                                                        H("localpasswd", "/localetc/passwd")],
         check=same_inode("localpasswd", "etc/passwd")),
    Case("HardlinkDirectRelative", lambda o: [*ETC, H("localpasswd", "../../../../../etc/passwd")],
         check=same_inode("localpasswd", "etc/passwd")),
    Case("HardlinkDirectAbsolute", lambda o: [*ETC, H("localpasswd", "/etc/passwd")],
         check=same_inode("localpasswd", "etc/passwd")),
    Case("HardlinkToOutsideAbsolute", lambda o: [H("x", f"{o}/secret")], error="does not resolve inside the layer"),
    Case("HardlinkToOutsideDotDot", lambda o: [H("x", "../outside/secret")], error="does not resolve inside"),
    Case("HardlinkToOutsideDotDotMirrored", lambda o: [D("outside"), H("x", "../outside/secret")],
         error="hardlink target '../outside/secret' is not in the layer"),
    Case("HardlinkThroughSymlinkToOutside", lambda o: [S("s", o), H("x", "s/secret")],
         error="does not resolve inside the layer"),
    Case("HardlinkThroughRelativeSymlinkToOutside", lambda o: [S("s", "../outside"), H("x", "s/secret")],
         error="does not resolve inside the layer"),
    Case("HardlinkSymlinkBeforeCreateTarget", lambda o: [D("etc"), S("localpasswd", "/etc/passwd"),
                                                         H("localpasswd-dup", "localpasswd"),
                                                         F("/etc/passwd", b"after")],
         check=all_of(same_inode("localpasswd-dup", "localpasswd"), is_symlink("localpasswd-dup", "/etc/passwd"))),
    Case("HardlinkSymlinkRelative", lambda o: [*ETC, S("passwdlink", "../../../../../etc/passwd"),
                                               H("localpasswd", "/passwdlink")],
         check=all_of(same_inode("localpasswd", "passwdlink"),
                      is_symlink("localpasswd", "../../../../../etc/passwd"))),
    Case("HardlinkSymlinkAbsolute", lambda o: [*ETC, S("passwdlink", "/etc/passwd"), H("localpasswd", "/passwdlink")],
         check=same_inode("localpasswd", "passwdlink")),
    # CVE-2021-32760: metadata of a hardlink to a symlink must not be applied through the symlink.
    Case("HardlinkSymlinkChmod", lambda o: [S(f"{o}/also-exists", f"{o}/secret"),
                                            ib.Entry("sketchylink", ib.Kind.HARDLINK, link=f"{o}/also-exists",
                                                     mode=0o777, uid=4321, mtime=1)],
         check=lambda t, orel: is_symlink("sketchylink", f"/{orel}/secret")(t, orel)),
    # gh-151558 shape: a failed or symlinked hardlink must never become a copy of what the symlink points at.
    Case("HardlinkToSymlinkIsNotACopy", lambda o: [S("s", f"{o}/secret"), H("h", "s")],
         check=lambda t, orel: all_of(same_inode("h", "s"), is_symlink("h", f"/{orel}/secret"))(t, orel)),
    Case("HardlinkToDirectory", lambda o: [D("d"), H("x", "d")], error="is a directory"),
    Case("HardlinkToItself", lambda o: [F("x"), H("x", "./x")], error="hardlink to itself"),
    Case("HardlinkThenFileReplacesOnlyTheName", lambda o: [*ETC, H("x", "etc/passwd"), F("x", b"new")],
         check=all_of(content("etc/passwd", b"inside"), content("x", b"new"))),
    # ---- directory over symlink
    Case("DirectoryOverrideSymlink", lambda o: [*ETC, S("localetc", "/etc"), D("/localetc/"),
                                                H("/localetc/localpasswd", "/etc/passwd")],
         check=all_of(same_inode("localetc/localpasswd", "etc/passwd"),
                      lambda t, _: None if not (t / "localetc").is_symlink() else pytest.fail("still a symlink"))),
    Case("DirectoryOverrideSymlinkAndHardlink", lambda o: [*ETC, S("localetc", "etc"),
                                                           H("/localetc/localpasswd", "/etc/passwd"),
                                                           D("/localetc/"), F("/localetc/localpasswd", b"different")],
         check=all_of(content("etc/passwd", b"inside"), content("localetc/localpasswd", b"different"))),
    Case("DirectoryOverSymlinkToOutside", lambda o: [S("d", o), D("d", mode=0o777, uid=4321, mtime=1),
                                                     F("d/secret", b"pwned")],
         check=content("d/secret", b"pwned")),
    Case("DeviceOverSymlinkToOutside", lambda o: [S("d", f"{o}/secret"), ib.chardev("d", 1, 3)],
         check=lambda t, _: None if stat.S_ISCHR((t / "d").lstat().st_mode) else pytest.fail("not a device")),
    Case("FifoUnderSymlinkToOutside", lambda o: [S("p", o), ib.fifo("p/fifo")], error="symlink to nothing"),
    # ---- whiteouts
    Case("WhiteoutRootParent", lambda o: [*ETC, F(".wh...")], error="invalid whiteout"),
    Case("WhiteoutParent", lambda o: [*ETC, F("etc/.wh...")], error="invalid whiteout"),
    Case("WhiteoutRoot", lambda o: [*ETC, F(".wh..")], error="invalid whiteout"),
    Case("WhiteoutCurrentDirectory", lambda o: [*ETC, F("etc/.wh..")], error="invalid whiteout"),
    Case("WhiteoutEmptyName", lambda o: [F("etc/.wh.")], error="invalid whiteout"),
    Case("WhiteoutAtRoot", lambda o: [F("/.wh.x")], check=whiteout_at("x")),
    Case("WhiteoutSymlink", lambda o: [*ETC, S("localetc", "/etc"), F(".wh.localetc")],
         check=all_of(whiteout_at("localetc"), content("etc/passwd", b"inside"))),
    Case("WhiteoutSymlinkPath", lambda o: [*ETC, F("etc/whitedout", b"x"), S("localetc", "/etc"),
                                           F("localetc/.wh.whitedout")],
         error="goes through a symlink"),
    Case("WhiteoutThroughSymlinkToOutside", lambda o: [S("a", o), F("a/.wh.secret")],
         error="goes through a symlink"),
    Case("WhiteoutDirectoryName", lambda o: [*ETC, F(".wh.etc/somefile", b"non-empty")],
         check=all_of(content(".wh.etc/somefile", b"non-empty"), content("etc/passwd", b"inside"))),
    Case("WhiteoutDeadSymlinkParent", lambda o: [*ETC, S("localetc", "/dne"), F("localetc/.wh.etc")],
         error="goes through a symlink"),
    Case("WhiteoutRelativePath", lambda o: [*ETC, S("localetc", "/dne"), F("dne/../.wh.etc")],
         check=whiteout_at("etc")),
    Case("WhiteoutDotDotOutside", lambda o: [F("../.wh.outside")], check=whiteout_at("outside")),
    Case("WhiteoutAbsoluteOutside", lambda o: [F(f"{o}/.wh.secret")],
         check=lambda t, orel: whiteout_at(f"{orel}/secret")(t, orel)),
    Case("OpaqueThroughSymlinkToOutside", lambda o: [S("a", o), F("a/.wh..wh..opq")],
         error="goes through a symlink"),
    Case("OpaqueThroughSymlinkInLayer", lambda o: [*ETC, S("a", "/etc"), F("a/.wh..wh..opq")],
         error="goes through a symlink"),
    # ---- devices
    Case("DeviceWhereDisallowed", lambda o: [ib.chardev("dev/kmem", 1, 2)], error="not allowed",
         limits=UnpackLimits(allow_devices=False)),
    Case("BlockDeviceWhereDisallowed", lambda o: [ib.blockdev("dev/sda", 8, 0)], error="not allowed",
         limits=UnpackLimits(allow_devices=False)),
    # ---- names and budgets
    Case("NameTooLong", lambda o: [F("a/" + "n" * 256)], error="longer than 255 bytes"),
    Case("PathTooLong", lambda o: [F("/".join(["p" * 250] * 17))], error="longer than 4096"),
    Case("TooDeep", lambda o: [F("/".join("abcdefghi"))], error="deeper than 8",
         limits=UnpackLimits(max_depth=8)),
    Case("TooManyEntries", lambda o: [F(f"f{i}") for i in range(300)], error="more than 100 entries",
         limits=UnpackLimits(max_entries=100)),
    Case("FileBeyondByteBudget", lambda o: [F("big", bytes(2 << 20))], error="beyond the byte budget",
         limits=UnpackLimits(max_bytes=1 << 20)),
    Case("FilesBeyondByteBudget", lambda o: [F(f"f{i}", bytes(300_000)) for i in range(10)],
         error="'f3': declares 300000 bytes, beyond the byte budget", limits=UnpackLimits(max_bytes=1 << 20)),
    Case("HeadersBeyondByteBudget", lambda o: [D(f"d{i}") for i in range(3000)],
         error="larger than the byte budget of 1048576 bytes", limits=UnpackLimits(max_bytes=1 << 20)),
]


def python_pathmax_symlink_chain(o: str) -> list[ib.Entry]:
    """CVE-2025-4517 shape: a symlink whose textual expansion passes PATH_MAX, climbing back to the top,
    then `..` past the top towards outside/."""
    steps = "abcdefghijklmnop"
    comp = "d" * 247
    out: list[ib.Entry] = []
    path = ""
    for s in steps:
        out += [D(f"{path}{comp}", mode=0o777), S(f"{path}{s}", comp)]
        path += comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    out.append(S(linkpath, "/".join([".."] * len(steps))))
    out.append(S("escape", f"{linkpath}/../outside"))
    out.append(F("escape/secret", b"pwned"))
    return out


def empty_name_symlink_chain(o: str) -> list[ib.Entry]:
    """gh-149486 shape: symlinks with empty names chained towards the parent."""
    return [S("", ".."), S("", "../.."), F("secret", b"pwned")]


CASES += [
    Case("CPythonPathMaxSymlinkChain", python_pathmax_symlink_chain, error="symlink to nothing"),
    Case("CPythonEmptyNameSymlinkChain", empty_name_symlink_chain, error="names the layer root"),
]


def outside_state(ws: Workspace) -> object:
    st = ws.outside.lstat()
    own = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns, os.listxattr(ws.outside))
    return listing(ws.outside), sorted(os.listdir(ws.base)), own, sorted(os.listdir(ws.base.parent))


@pytest.fixture(scope="module")
def ws() -> Iterator[Workspace]:
    yield from workspace()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_breakout_case_is_refused_or_confined(ws: Workspace, case: Case) -> None:
    target = ws.fresh_target()
    before = outside_state(ws)
    raw = ib.tar_bytes(case.entries(str(ws.outside)))
    try:
        if case.error is not None:
            with pytest.raises(UnpackError, match=case.error):
                unpack_layer(io.BytesIO(raw), target, case.limits)
        else:
            unpack_layer(io.BytesIO(raw), target, case.limits)
            assert case.check is not None
            case.check(target, str(ws.outside).lstrip("/"))
        assert outside_state(ws) == before
    finally:
        shutil.rmtree(target)  # what the caller does with a failed unpack; must not follow links either
        target.mkdir()
    assert outside_state(ws) == before


def test_the_corpus_covers_containerd_breakouts() -> None:
    names = {c.name for c in CASES}
    containerd = {
        "SymlinkAbsolute", "SymlinkUpAndOut", "SymlinkMultipleAbsolute", "SymlinkMultipleRelative",
        "SymlinkEmptyFile", "SymlinkParentDirectory", "SymlinkEmptyFilename", "SymlinkParentRelative",
        "SymlinkSlashEnded", "SymlinkOverrideDirectory", "SymlinkOverrideDirectoryRelative", "SymlinkOverridePath",
        "HardlinkRelative", "HardlinkDownAndOut", "HardlinkAbsolute", "HardlinkRelativeLong",
        "HardlinkRelativeUpAndOut", "HardlinkDirectRelative", "HardlinkDirectAbsolute",
        "HardlinkSymlinkBeforeCreateTarget", "HardlinkSymlinkRelative", "HardlinkSymlinkAbsolute",
        "HardlinkSymlinkChmod", "DirectoryOverrideSymlink", "DirectoryOverrideSymlinkAndHardlink",
        "WhiteoutRootParent", "WhiteoutParent", "WhiteoutRoot", "WhiteoutCurrentDirectory", "WhiteoutSymlink",
        "WhiteoutSymlinkPath", "WhiteoutDirectoryName", "WhiteoutDeadSymlinkParent", "WhiteoutRelativePath",
    }
    assert containerd <= names


# ---------------------------------------------------------------- malformed archives


def raw_case(ws: Workspace, raw: bytes | BinaryIO, match: str, limits: UnpackLimits = UnpackLimits()) -> None:
    target = ws.fresh_target()
    before = outside_state(ws)
    stream = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    with pytest.raises(UnpackError, match=match):
        unpack_layer(stream, target, limits)
    assert outside_state(ws) == before


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_truncated_and_garbage_streams(ws: Workspace) -> None:
    raw = ib.tar_bytes([F("a", os.urandom(100_000)), F("b", b"b")])
    raw_case(ws, raw[:50_000], "not a valid tar stream after entry 'a'|ended")
    raw_case(ws, os.urandom(4096), "not a valid tar stream")
    raw_case(ws, b"", "not a valid tar stream")


def test_negative_size_header_is_an_error_not_a_loop(ws: Workspace) -> None:
    """CVE-2025-8194 shape: a base-256 negative size made tarfile seek backwards forever."""
    good = bytearray(ib.tar_bytes([F("a", b"x" * 512), F("b", b"y")]))
    header = bytearray(good[:512])
    header[124:136] = b"\xff" * 12  # base-256 encoding of -1
    raw_case(ws, with_checksum(header) + bytes(good[512:]), "not a valid tar stream|negative|beyond")


def test_unknown_entry_types_are_refused(ws: Workspace) -> None:
    info = tarfile.TarInfo("weird")
    info.type = b"Z"
    raw_case(ws, info.tobuf(tarfile.PAX_FORMAT) + bytes(1024), "'weird': unsupported tar entry type b'Z'")


def test_sparse_files_are_refused(ws: Workspace) -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info)
    raw_case(ws, buf.getvalue(), "sparse files are not supported")


def test_pax_sparse_file_claiming_a_gigabyte_is_refused(ws: Workspace) -> None:
    info = tarfile.TarInfo("GNUSparseFile.0/big")
    info.size = 512
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
                        "GNU.sparse.realsize": str(1 << 30)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"1\n0\n1073741823\n1\n".ljust(512, b"\0")))
    raw_case(ws, buf.getvalue(), "sparse|not a valid tar")


class ZeroStream:
    """A tar header declaring `size` bytes followed by endless zeros; counts what was read."""

    def __init__(self, size: int) -> None:
        info = tarfile.TarInfo("bomb")
        info.size = size
        self.head = info.tobuf(tarfile.PAX_FORMAT)
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n < 0 else n
        out = self.head[:n] + bytes(max(0, n - len(self.head)))
        self.head = self.head[n:]
        self.read_bytes += n
        return out


def test_declared_20gb_file_fails_before_reading_it(ws: Workspace) -> None:
    stream = ZeroStream(20 << 30)
    raw_case(ws, cast(BinaryIO, stream), "declares 21474836480 bytes, beyond the byte budget",
             UnpackLimits(max_bytes=64 << 20))
    assert stream.read_bytes < 1 << 20


class CountingReader:
    """Counts the decompressed bytes unpack_layer pulled from the caller's stream."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.read_bytes += len(data)
        return data


def gzip_bomb(files: int, each: int) -> bytes:
    """gzip of a tar of `files` all-zero files of `each` bytes, produced without holding the tar in memory."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = []
    zeros = bytes(1 << 20)
    for i in range(files):
        info = tarfile.TarInfo(f"zero{i}")
        info.size = each
        out.append(z.compress(info.tobuf(tarfile.PAX_FORMAT)))
        left = each
        while left:
            n = min(left, len(zeros))
            out.append(z.compress(zeros[:n]))
            left -= n
        out.append(z.compress(bytes(-each % 512)))
    out.append(z.compress(bytes(1024)))
    out.append(z.flush())
    return b"".join(out)


def test_gzip_bomb_stops_at_the_byte_budget(ws: Workspace) -> None:
    bomb = gzip_bomb(files=64, each=16 << 20)  # 1 GiB of zeros in ~4.5 MB of gzip
    assert len(bomb) < 8 << 20
    budget = 32 << 20
    with gzip.GzipFile(fileobj=io.BytesIO(bomb)) as gz:
        counted = CountingReader(gz)  # type: ignore[arg-type]
        raw_case(ws, cast(BinaryIO, counted), "beyond the byte budget of 33554432",
                 UnpackLimits(max_bytes=budget))
    assert counted.read_bytes <= budget + (2 << 20)  # stopped right at the budget, not after a gigabyte


def test_concurrent_symlink_swapper_never_gets_a_write_outside(ws: Workspace) -> None:
    """CVE-2025-47290 shape: while the unpack runs, a racer keeps replacing target/d with a symlink to outside/."""
    target = ws.fresh_target()
    before = outside_state(ws)
    entries = [D("d")] + [F(f"d/f{i}", b"pwned") for i in range(3000)]
    stop = threading.Event()

    def racer() -> None:
        while not stop.is_set():
            try:
                os.rename(target / "d", target / "d.moved")
                os.symlink(ws.outside, target / "d")
                os.unlink(target / "d")
                os.rename(target / "d.moved", target / "d")
            except OSError:
                pass

    t = threading.Thread(target=racer, daemon=True)
    t.start()
    try:
        unpack_layer(io.BytesIO(ib.tar_bytes(entries)), target)
    except UnpackError:
        pass  # losing the race to a vanished parent is a fine outcome; a write outside is not
    finally:
        stop.set()
        t.join(10)
    assert outside_state(ws) == before
    assert not (ws.outside / "f0").exists()


def test_oversized_pax_and_gnu_long_name_headers_stop_at_the_header_window(ws: Workspace) -> None:
    """tarfile reads extension headers whole into memory: a 64 MiB one must stop after about 1 MiB."""
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "c" * (64 << 20)}
    pax = info.tobuf(tarfile.PAX_FORMAT) + bytes(1024)
    stream = CountingReader(io.BytesIO(pax))
    raw_case(ws, cast(BinaryIO, stream), "tar extension headers exceed")
    assert stream.read_bytes < 2 << 20
    gnu = tarfile.TarInfo("n" * (64 << 20)).tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    raw_case(ws, gnu, "tar extension headers exceed")


def test_non_regular_entries_with_data_are_refused(ws: Workspace) -> None:
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    info.linkname = "target"
    info.size = 1 << 30  # tarfile would quietly skip a gigabyte of "data"
    raw_case(ws, info.tobuf(tarfile.PAX_FORMAT) + bytes(4096), "'link': a symlink entry declares 1073741824 bytes")


def test_deepest_allowed_tree_replaced_by_a_file_and_removed(ws: Workspace) -> None:
    target = ws.fresh_target()
    depth = UnpackLimits().max_depth
    deep = "/".join(["d"] * (depth - 1)) + "/f"
    stats = unpack_layer(io.BytesIO(ib.tar_bytes([F(deep, b"deep"), F("d", b"flat")])), target)
    assert stats.files == 2 and (target / "d").read_bytes() == b"flat"
    raw_case(ws, ib.tar_bytes([F("/".join(["d"] * depth) + "/f")]), f"deeper than {depth} components")
    unpack_layer(io.BytesIO(ib.tar_bytes([F(deep, b"deep")])), ws.fresh_target())
    shutil.rmtree(ws.target)  # the caller's cleanup copes with the deepest tree the unpacker accepts
    ws.target.mkdir()


def base256(value: int) -> bytes:
    """A tar numeric field (8 bytes) in GNU base-256, which can hold negative and huge numbers."""
    return bytes([0xFF if value < 0 else 0x80]) + (value % (1 << 56)).to_bytes(7, "big")


@pytest.mark.parametrize("field_at,value,match", [
    (108, -1, "uid -1 is out of range"),                    # would make chown leave the owner as is
    (116, 1 << 40, "gid 1099511627776 is out of range"),
])
def test_out_of_range_numeric_fields_are_refused(ws: Workspace, field_at: int, value: int, match: str) -> None:
    header = bytearray(ib.tar_bytes([F("f", b"")], ib.TarFormat.GNU)[:512])
    header[field_at:field_at + 8] = base256(value)
    raw_case(ws, with_checksum(header) + bytes(1024), match)


def test_non_finite_pax_mtime_is_refused(ws: Workspace) -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": "inf"}
    raw_case(ws, info.tobuf(tarfile.PAX_FORMAT) + bytes(1024), "'f': invalid value")
