"""Windows layer tars: golden backup streams and path validation (pure Python, runs anywhere).

The golden byte strings are written out from the documented layouts
(WIN32_STREAM_ID, FILE_FULL_EA_INFORMATION, REPARSE_DATA_BUFFER), not produced
by the code under test. Writing the streams with BackupWrite and importing the
layer (ImportLayer) is Windows-only.
"""

from __future__ import annotations

import base64
import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime.windows import layer_tar as L

MTIME = 1_700_000_000
FT = 133_444_736_000_000_000        # MTIME as FILETIME: 1700000000 * 10^7 + 116444736000000000


@dataclass
class Recorder:
    ops: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, path: str, info: L.FileInfo, sddl: str) -> None:
        self.ops.append(("add", path, info, sddl, b""))

    def write(self, data: bytes) -> None:
        op = self.ops[-1]
        assert op[0] == "add", "data written before any add"
        self.ops[-1] = op[:4] + (op[4] + data,)

    def add_link(self, path: str, target: str) -> None:
        self.ops.append(("link", path, target))

    def remove(self, path: str) -> None:
        self.ops.append(("remove", path))


def entry(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None,
          link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = MTIME
    info.linkname = link
    info.pax_headers = dict(pax or {})
    return info, data


def make_tar(*entries: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    buf.seek(0)
    return buf


def parse(*entries: tuple[tarfile.TarInfo, bytes]) -> list[tuple[Any, ...]]:
    r = Recorder()
    L.parse(make_tar(*entries), r)
    return r.ops


def test_stream_header_golden_bytes() -> None:
    assert L.stream_header(L.BACKUP_DATA, 5) == bytes.fromhex("01000000" "00000000" "0500000000000000" "00000000")
    assert L.stream_header(L.BACKUP_ALTERNATE_DATA, 2, ":s:$DATA") == bytes.fromhex(
        "04000000" "00000000" "0200000000000000" "10000000") + ":s:$DATA".encode("utf-16-le")


def test_ea_encoding_golden_bytes() -> None:
    one = bytes.fromhex("00000000" "00" "06" "0200") + b"user.a\0xy"
    assert L.encode_eas([("user.a", b"xy")]) == one
    # The first of two entries is padded to a 4-byte boundary: 4 + 4 + 2 + 1 + 1 = 12 bytes.
    first = bytes.fromhex("0c000000" "00" "02" "0100") + b"ab\0z"
    assert L.encode_eas([("ab", b"z"), ("user.a", b"xy")]) == first + one


def test_reparse_buffers_golden_bytes() -> None:
    # Junction to C:\x: substitute name \??\C:\x, print name C:\x, both stored NUL-terminated.
    sub = "\\??\\C:\\x\0".encode("utf-16-le")
    prt = "C:\\x\0".encode("utf-16-le")
    junction = bytes.fromhex("030000a0" "2400" "0000" "0000" "1000" "1200" "0800") + sub + prt
    assert L.encode_reparse("C:\\x", junction=True) == junction
    # Relative symlink: no \??\ prefix and SYMLINK_FLAG_RELATIVE; data length 8 + 4 + 10 + 10 = 32.
    rel = "..\\y\0".encode("utf-16-le")
    symlink = bytes.fromhex("0c0000a0" "2000" "0000" "0000" "0800" "0a00" "0800" "01000000") + rel + rel
    assert L.encode_reparse("../y", junction=False) == symlink
    with pytest.raises(ValueError, match="absolute"):
        L.encode_reparse("rel", junction=True)


def test_a_file_with_windows_metadata_becomes_one_backup_stream() -> None:
    sd = b"\x01\x00\x04\x80SD"
    ops = parse(entry("Files/app/a.txt", b"hello", pax={
        "MSWINDOWS.fileattr": "33",                     # READONLY | ARCHIVE
        "MSWINDOWS.rawsd": base64.b64encode(sd).decode(),
        "MSWINDOWS.xattr.user.a": base64.b64encode(b"xy").decode(),
        "LIBARCHIVE.creationtime": "1600000000.5",
    }))
    (op,) = ops
    assert op[:2] == ("add", "Files\\app\\a.txt")
    assert op[2] == L.FileInfo(creation_time=1_600_000_000 * 10**7 + 5_000_000 + 116_444_736_000_000_000,
                               last_access_time=FT, last_write_time=FT, change_time=FT, attributes=33)
    ea = L.encode_eas([("user.a", b"xy")])
    assert op[4] == (L.stream_header(L.BACKUP_SECURITY_DATA, len(sd)) + sd
                     + L.stream_header(L.BACKUP_EA_DATA, len(ea)) + ea
                     + L.stream_header(L.BACKUP_DATA, 5) + b"hello")


def test_alternate_data_streams_follow_their_file() -> None:
    ops = parse(entry("Files/a.txt", b"main"), entry("Files/a.txt:Zone.Identifier", b"[ZoneTransfer]"),
                entry("Files/b.txt", b""))
    assert [o[:2] for o in ops] == [("add", "Files\\a.txt"), ("add", "Files\\b.txt")]
    assert ops[0][4] == (L.stream_header(L.BACKUP_DATA, 4) + b"main"
                         + L.stream_header(L.BACKUP_ALTERNATE_DATA, 14, ":Zone.Identifier:$DATA") + b"[ZoneTransfer]")
    assert ops[1][4] == L.stream_header(L.BACKUP_DATA, 0)      # an empty file still has its data record


def test_directories_whiteouts_links_and_junctions() -> None:
    ops = parse(entry("Files/dir", kind=tarfile.DIRTYPE),
                entry("Files/dir/.wh.old.dll"),
                entry("Files/dir/link.dll", kind=tarfile.LNKTYPE, link="Files/dir/real.dll"),
                entry("Files/j", kind=tarfile.SYMTYPE, link="C:\\x", pax={"MSWINDOWS.mountpoint": "1"}),
                entry("Hives/System_Delta", b"regf"))
    assert ops[0] == ("add", "Files\\dir", L.FileInfo(FT, FT, FT, FT, L.FILE_ATTRIBUTE_DIRECTORY), "", b"")
    assert ops[1] == ("remove", "Files\\dir\\old.dll")
    assert ops[2] == ("link", "Files\\dir\\link.dll", "Files\\dir\\real.dll")
    junction = L.encode_reparse("C:\\x", junction=True)
    assert ops[3][1] == "Files\\j" and ops[3][2].attributes == L.FILE_ATTRIBUTE_REPARSE_POINT
    assert ops[3][4] == L.stream_header(L.BACKUP_REPARSE_DATA, len(junction)) + junction
    assert ops[4][:2] == ("add", "Hives\\System_Delta")


def test_legacy_sddl_is_passed_on_for_conversion_on_windows() -> None:
    ops = parse(entry("Files/a", b"", pax={"MSWINDOWS.sd": "O:BAG:SYD:(A;;FA;;;BA)"}))
    assert ops[0][3] == "O:BAG:SYD:(A;;FA;;;BA)"


@pytest.mark.parametrize("entries, message", [
    ([entry("../evil")], "Files/, Hives/"),
    ([entry("/Files/abs")], "absolute"),
    ([entry("Files/../../x")], "'..'"),
    ([entry("Files/./x")], "'.'"),
    ([entry("Other/x")], "Files/, Hives/"),
    ([entry("UtilityVM/Other/x")], "UtilityVM/Files"),
    ([entry("Files/a<b")], "cannot have"),
    ([entry("Files/trailing.")], "space or dot"),
    ([entry("Files/x\\y")], "backslashes"),
    ([entry("Files/link", kind=tarfile.LNKTYPE, link="../../etc/passwd")], "Files/, Hives/"),
    ([entry("Files/.wh.../x")], "'..'"),
    ([entry("Files/.wh..wh..opq")], "opaque"),
    ([entry("Files/a:stream", b"x")], "directly follow"),
    ([entry("Files/a", b"x"), entry("Files/b:stream", b"y")], "directly follow"),
    ([entry("Files/dev", kind=tarfile.CHRTYPE)], "devices"),
    ([entry("Files/a", pax={"MSWINDOWS.rawsd": "!!notbase64"})], "base64"),
    ([entry("Files/a", pax={"MSWINDOWS.fileattr": "ten"})], "fileattr"),
    ([entry("Files/j", kind=tarfile.SYMTYPE, link="rel", pax={"MSWINDOWS.mountpoint": "1"})], "absolute target"),
])
def test_malformed_or_escaping_entries_are_rejected(entries: list[tuple[tarfile.TarInfo, bytes]], message: str) -> None:
    with pytest.raises(L.LayerFormatError, match=message) as e:
        parse(*entries)
    assert e.value.field == "layer"


def test_a_non_tar_stream_is_a_clear_error() -> None:
    with pytest.raises(L.LayerFormatError, match="not a tar stream|corrupt"):
        L.parse(io.BytesIO(b"this is not a tar" * 100), Recorder())


def test_large_files_are_streamed_in_chunks() -> None:
    data = bytes(range(256)) * 8192             # 2 MiB: more than one chunk
    writes: list[int] = []

    class Counting(Recorder):
        def write(self, chunk: bytes) -> None:
            writes.append(len(chunk))
            super().write(chunk)

    r = Counting()
    assert L.parse(make_tar(entry("Files/big.bin", data)), r) == 1
    assert r.ops[0][4] == L.stream_header(L.BACKUP_DATA, len(data)) + data
    assert max(writes) <= L.CHUNK and len(writes) >= 3
