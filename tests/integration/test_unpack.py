"""unpack_layer on the real kernel: what lands on disk, what overlayfs makes of it, and how failures read.

The hostile-input corpus is in test_unpack_breakouts.py.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.base import RuntimeFailure
from runtime.linux.unpack import UnpackError, UnpackLimits, unpack_layer
from tests.harness import imagebuild as ib
from tests.integration.unpack_helpers import PipeStream, Workspace, listing, workspace

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
MTIME = 1600000000


@pytest.fixture
def ws() -> Iterator[Workspace]:
    yield from workspace()


def rich_layer() -> tuple[ib.Entry, ...]:
    """A layer with every kind of entry and metadata a real image has (no whiteouts)."""
    return ib.tree([
        ib.dir_(".", mode=0o755, mtime=MTIME),
        ib.file("bin/busybox", os.urandom(3 << 20), mode=0o755, mtime=MTIME),
        ib.hardlink("bin/sh", "bin/busybox"),
        ib.symlink("bin/ls", "busybox", mtime=MTIME),
        ib.symlink("lib", "usr/lib", mtime=MTIME),
        ib.symlink("etc/abs", "/etc/passwd", mtime=MTIME),
        ib.file("usr/bin/su", b"su", mode=0o4755),
        ib.file("usr/bin/wall", b"wall", mode=0o2755, gid=5),
        ib.file("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
        ib.file("etc/attr", b"x", xattrs={"user.note": b"hello", "trusted.mine": b"\x00\x01"}),
        ib.dir_("tmp", mode=0o1777, mtime=MTIME + 1),
        ib.dir_("home/user", mode=0o700, uid=1000, gid=1000, mtime=MTIME + 2),
        ib.file("home/user/.profile", b"x" * 10, uid=1000, gid=1000, mode=0o600, mtime=MTIME + 3.5),
        ib.chardev("dev/null", 1, 3, mode=0o666),
        ib.blockdev("dev/loop9", 7, 9),
        ib.fifo("run/initctl", mode=0o600),
        ib.file("opt/" + "d" * 200 + "/" + "f" * 200, b"long names"),
        ib.file("opt/empty", b""),
        ib.file("opt/ütf8-ñame", b"utf8"),
    ], dir_mtime=MTIME)


def test_unpack_matches_gnu_tar_for_every_entry_kind(ws: Workspace) -> None:
    raw = ib.tar_bytes(rich_layer())
    stats = unpack_layer(io.BytesIO(raw), ws.target)
    ref = ws.base / "gnutar"
    ref.mkdir()
    subprocess.run(["tar", "-x", "-p", "--numeric-owner", "--same-owner", "--xattrs", "--xattrs-include=*",
                    "-C", str(ref)], input=raw, check=True)
    ours, theirs = listing(ws.target), listing(ref)
    assert ours == theirs
    root_st = ws.target.stat()
    assert (stat.S_IMODE(root_st.st_mode), root_st.st_mtime_ns) == (0o755, MTIME * 10**9)
    assert stats.files == 9 and stats.hardlinks == 1 and stats.symlinks == 3 and stats.devices == 2
    assert stats.fifos == 1 and stats.bytes_read == len(raw)


def test_start_writeback_changes_nothing_in_the_unpacked_tree(ws: Workspace) -> None:
    """The daemon unpacks with start_writeback=True (sync_file_range on big files): same files, modes, owners, times."""
    entries = [*rich_layer(), ib.dir_("big"), ib.file("big/blob", os.urandom(1 << 20), mode=0o4750, uid=7, gid=8)]
    raw = ib.tar_bytes(entries)
    plain = ws.base / "plain"
    plain.mkdir()
    unpack_layer(io.BytesIO(raw), plain)
    stats = unpack_layer(io.BytesIO(raw), ws.target, start_writeback=True)
    assert listing(ws.target) == listing(plain)
    assert stats.file_bytes >= 1 << 20


def test_unpack_keeps_setuid_capabilities_owners_and_subsecond_mtimes(ws: Workspace) -> None:
    unpack_layer(io.BytesIO(ib.tar_bytes(rich_layer())), ws.target)
    t = ws.target
    assert stat.S_IMODE((t / "usr/bin/su").stat().st_mode) == 0o4755
    wall = (t / "usr/bin/wall").stat()
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2755, 5)
    assert os.getxattr(t / "bin/ping", "security.capability") == CAP_NET_RAW
    assert os.getxattr(t / "etc/attr", "trusted.mine") == b"\x00\x01"
    assert (t / "bin/sh").stat().st_ino == (t / "bin/busybox").stat().st_ino
    assert os.readlink(t / "etc/abs") == "/etc/passwd"  # stored verbatim, never followed
    home = (t / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    assert home.st_mtime_ns == (MTIME + 2) * 10**9  # set after its child was created
    assert (t / "home/user/.profile").stat().st_mtime_ns == int((MTIME + 3.5) * 10**9)
    dev = (t / "dev/loop9").lstat()
    assert stat.S_ISBLK(dev.st_mode) and os.major(dev.st_rdev) == 7 and os.minor(dev.st_rdev) == 9


def test_whiteouts_become_overlay_whiteouts_that_hide_lower_files(ws: Workspace) -> None:
    lower, upper, mnt = ws.base / "lower", ws.base / "upper", ws.base / "mnt"
    for d in (lower, upper, mnt):
        d.mkdir()
    unpack_layer(io.BytesIO(ib.tar_bytes(ib.tree([
        ib.file("etc/passwd", b"root"), ib.file("etc/gone", b"x"), ib.dir_("var/cache"),
        ib.file("var/cache/old", b"old"), ib.dir_("srv/dir"), ib.file("srv/dir/f", b"f"), ib.file("keep", b"k"),
    ]))), lower)
    stats = unpack_layer(io.BytesIO(ib.tar_bytes([
        ib.dir_("etc"), ib.whiteout("etc/gone"),
        ib.dir_("var"), ib.dir_("var/cache"), ib.opaque("var/cache"), ib.file("var/cache/new", b"new"),
        ib.whiteout("srv/dir"),
        ib.file("srv/.wh..wh.plnk", b""),  # aufs metadata: skipped
    ])), upper)
    assert (stats.whiteouts, stats.opaque_dirs, stats.skipped) == (2, 1, 1)
    wh = (upper / "etc/gone").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(upper / "var/cache", "trusted.overlay.opaque") == b"y"
    assert not any(p.name.startswith(".wh.") for p in upper.rglob("*"))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={upper}:{lower}", str(mnt)],
                   check=True)
    try:
        names = {str(p.relative_to(mnt)) for p in mnt.rglob("*")}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert names == {"etc", "etc/passwd", "var", "var/cache", "var/cache/new", "srv", "keep"}


def test_later_entries_replace_earlier_ones_like_tar(ws: Workspace) -> None:
    unpack_layer(io.BytesIO(ib.tar_bytes([
        ib.file("a", b"first"), ib.file("a", b"second", mode=0o600),
        ib.dir_("d"), ib.file("d/x", b"x"), ib.symlink("d", "elsewhere"),     # symlink over a directory
        ib.symlink("s", "target"), ib.dir_("s", mode=0o711),                  # directory over a symlink
        ib.dir_("keep", mode=0o700), ib.file("keep/f", b"f"), ib.dir_("keep", mode=0o755),  # dir kept
        ib.file("w", b"w"), ib.whiteout("w"),                                 # whiteout replaces
    ])), ws.target)
    t = ws.target
    assert (t / "a").read_bytes() == b"second" and stat.S_IMODE((t / "a").stat().st_mode) == 0o600
    assert os.readlink(t / "d") == "elsewhere"
    assert (t / "s").is_dir() and not (t / "s").is_symlink() and stat.S_IMODE((t / "s").stat().st_mode) == 0o711
    assert (t / "keep/f").read_bytes() == b"f" and stat.S_IMODE((t / "keep").stat().st_mode) == 0o755
    assert stat.S_ISCHR((t / "w").lstat().st_mode)


def test_missing_parents_are_created_0755_whatever_the_umask(ws: Workspace) -> None:
    old = os.umask(0o077)
    try:
        unpack_layer(io.BytesIO(ib.tar_bytes([ib.file("a/b/c/file", b"x")])), ws.target)
    finally:
        os.umask(old)
    for d in ("a", "a/b", "a/b/c"):
        st = (ws.target / d).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)


@pytest.mark.parametrize("fmt", list(ib.TarFormat))
def test_long_names_in_every_tar_format(ws: Workspace, fmt: ib.TarFormat) -> None:
    name = "/".join(["p" * 60] * 3)  # 182 bytes: beyond ustar's 100-byte name field
    entries = [ib.file(name, b"long")]
    if fmt is ib.TarFormat.USTAR:
        entries = [ib.file("q" * 90 + "/" + "r" * 90, b"long")]  # ustar splits it over prefix+name
        name = entries[0].path
    unpack_layer(io.BytesIO(ib.tar_bytes(entries, fmt)), ws.target)
    assert (ws.target / name).read_bytes() == b"long"


def test_unpack_from_a_pipe_through_gzip_and_drains_the_stream(ws: Workspace) -> None:
    raw = ib.tar_bytes(rich_layer())
    pipe = PipeStream(ib.gzip_bytes(raw))
    try:
        with gzip.GzipFile(fileobj=pipe.reader, mode="rb") as gz:
            stats = unpack_layer(gz, ws.target)  # type: ignore[arg-type]
            assert gz.read() == b""  # everything was consumed: a digesting caller saw every byte
    finally:
        pipe.close()
    assert stats.bytes_read == len(raw)
    assert (ws.target / "bin/busybox").stat().st_size == 3 << 20


def test_target_must_exist_and_be_empty(ws: Workspace) -> None:
    (ws.target / "x").write_bytes(b"")
    with pytest.raises(UnpackError, match="is not empty"):
        unpack_layer(io.BytesIO(ib.tar_bytes([ib.file("a")])), ws.target)
    with pytest.raises(UnpackError, match="No such file"):
        unpack_layer(io.BytesIO(ib.tar_bytes([ib.file("a")])), ws.base / "missing")


def test_errors_are_runtime_failures_naming_the_entry(ws: Workspace) -> None:
    with pytest.raises(RuntimeFailure) as exc:
        unpack_layer(io.BytesIO(ib.tar_bytes([ib.file("ok"), ib.hardlink("bad/link", "nowhere")])), ws.target)
    assert isinstance(exc.value, UnpackError) and exc.value.entry == "bad/link"
    assert str(exc.value) == "layer entry 'bad/link': hardlink target 'nowhere' is not in the layer"


def test_stream_errors_from_the_decompressor_are_reported_as_unpack_errors(ws: Workspace) -> None:
    blob = ib.gzip_bytes(ib.tar_bytes([ib.file("f", os.urandom(1 << 20))]))
    corrupt = blob[:5000] + bytes(b ^ 0xFF for b in blob[5000:5100]) + blob[5100:]
    with gzip.GzipFile(fileobj=io.BytesIO(corrupt)) as gz, pytest.raises(UnpackError) as exc:
        unpack_layer(gz, ws.target)  # type: ignore[arg-type]
    assert "reading the layer stream failed" in str(exc.value)


def test_device_nodes_can_be_refused_but_whiteouts_still_work(ws: Workspace) -> None:
    limits = UnpackLimits(allow_devices=False)
    unpack_layer(io.BytesIO(ib.tar_bytes([ib.whiteout("etc/x"), ib.fifo("f")])), ws.target, limits)
    assert stat.S_ISCHR((ws.target / "etc/x").lstat().st_mode)
    for dev in (ib.chardev("dev/mem", 1, 1), ib.blockdev("dev/sda", 8, 0)):
        with pytest.raises(UnpackError, match="device .* not allowed"):
            unpack_layer(io.BytesIO(ib.tar_bytes([dev])), ws.fresh_target(), limits)
        assert not (ws.target / dev.path).exists()


def test_reserved_overlay_xattrs_are_dropped(ws: Workspace) -> None:
    stats = unpack_layer(io.BytesIO(ib.tar_bytes([
        ib.dir_("d", xattrs={"trusted.overlay.redirect": b"/etc", "trusted.overlay.opaque": b"y"}),
        ib.file("f", b"", xattrs={"trusted.overlay.metacopy": b"", "user.ok": b"1"}),
    ])), ws.target)
    assert os.listxattr(ws.target / "d") == []
    assert os.listxattr(ws.target / "f") == ["user.ok"]
    assert stats.skipped == 3
