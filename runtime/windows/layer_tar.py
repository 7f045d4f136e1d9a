"""Windows container layer tars -> layer writer operations (pure; tested on Linux).

A Windows image layer is a tar whose paths start with `Files/` (the
container's C:\\), `Hives/` (registry deltas) or, in base layers,
`UtilityVM/Files/`. Windows metadata rides in PAX records:

    MSWINDOWS.fileattr      decimal FILE_ATTRIBUTE_* (missing: directories get FILE_ATTRIBUTE_DIRECTORY)
    MSWINDOWS.rawsd         base64 self-relative binary security descriptor
    MSWINDOWS.sd            the same as SDDL (legacy; only used without rawsd; converted on Windows)
    MSWINDOWS.mountpoint    a symlink entry is a directory junction, not a symbolic link
    MSWINDOWS.xattr.<name>  base64 extended attribute value
    LIBARCHIVE.creationtime creation time "seconds.nanoseconds" (else mtime)

Alternate data streams are separate regular entries named `<file>:<stream>`
right after their file; `.wh.<name>` entries delete `<name>`; hard links are
TypeLink entries. Each file becomes a Win32 backup stream (WIN32_STREAM_ID
records, the format BackupWrite consumes): security, EAs, reparse data or
file data, then the alternate streams.

`parse()` validates every path (no absolute paths, no `..`, no reserved
characters, only the three roots) before the writer sees it, and streams file
data in chunks. The writer that turns these operations into a layer folder
(BackupWrite + ImportLayer) is Windows-only and not part of this module.
"""

from __future__ import annotations

import base64
import binascii
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from runtime.base import InvalidSpec

ROOTS = ("Files", "Hives", "UtilityVM")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
RESERVED = set('<>"|?*') | {chr(c) for c in range(32)}
CHUNK = 1 << 20

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

BACKUP_DATA = 1
BACKUP_EA_DATA = 2
BACKUP_SECURITY_DATA = 3
BACKUP_ALTERNATE_DATA = 4
BACKUP_REPARSE_DATA = 8

IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
IO_REPARSE_TAG_SYMLINK = 0xA000000C
SYMLINK_FLAG_RELATIVE = 1

# 100 ns intervals between 1601-01-01 (FILETIME epoch) and 1970-01-01.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000


class LayerFormatError(InvalidSpec):
    def __init__(self, entry: str, message: str) -> None:
        super().__init__("layer", f"{entry!r}: {message}")


@dataclass(frozen=True)
class FileInfo:
    """FILE_BASIC_INFO of one entry: times as FILETIME (100 ns since 1601), attributes."""

    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int


class LayerWriter(Protocol):
    def add(self, path: str, info: FileInfo, sddl: str) -> None:
        """A new file or directory at `path` (Windows separators); its backup stream follows via write()."""
        ...

    def write(self, data: bytes) -> None:
        """More of the current file's backup stream."""
        ...

    def add_link(self, path: str, target: str) -> None: ...

    def remove(self, path: str) -> None: ...


# ---------------------------------------------------------------- encodings


def stream_header(stream_id: int, size: int, name: str = "", attributes: int = 0) -> bytes:
    """A WIN32_STREAM_ID: id, attributes, 64-bit size, name size in bytes, then the UTF-16LE name."""
    raw_name = name.encode("utf-16-le")
    return struct.pack("<IIQI", stream_id, attributes, size, len(raw_name)) + raw_name


def filetime(seconds: float | int, nanoseconds: int = 0) -> int:
    return int(seconds) * 10_000_000 + nanoseconds // 100 + FILETIME_UNIX_EPOCH


def encode_eas(eas: list[tuple[str, bytes]]) -> bytes:
    """FILE_FULL_EA_INFORMATION entries, each aligned to 4 bytes, as BACKUP_EA_DATA carries them."""
    out = b""
    for i, (name, value) in enumerate(eas):
        raw = name.encode("ascii")
        if len(raw) > 255 or len(value) > 0xFFFF:
            raise ValueError(f"extended attribute {name!r} is too large")
        body = struct.pack("<BBH", 0, len(raw), len(value)) + raw + b"\0" + value
        entry_len = 4 + len(body)
        padded = (entry_len + 3) & ~3
        last = i == len(eas) - 1
        out += struct.pack("<I", 0 if last else padded) + body + (b"" if last else b"\0" * (padded - entry_len))
    return out


def encode_reparse(target: str, *, junction: bool) -> bytes:
    """REPARSE_DATA_BUFFER of a symbolic link or a mount point (junction) to `target`."""
    target = target.replace("/", "\\")
    relative = False
    if target.startswith("\\\\?\\"):
        nt = "\\??\\" + target[4:]
    elif target.startswith("\\\\"):
        nt = "\\??\\UNC\\" + target[2:]
    elif len(target) >= 2 and target[0].isalpha() and target[1] == ":":
        nt = "\\??\\" + target
    else:
        nt, relative = target, True
    if junction and relative:
        raise ValueError(f"a junction needs an absolute target, not {target!r}")
    # Both names are stored NUL-terminated although their lengths exclude the NUL.
    sub = (nt + "\0").encode("utf-16-le")
    prt = (target + "\0").encode("utf-16-le")
    names = struct.pack("<HHHH", 0, len(sub) - 2, len(sub), len(prt) - 2)
    flags = b"" if junction else struct.pack("<I", SYMLINK_FLAG_RELATIVE if relative else 0)
    data = names + flags + sub + prt
    tag = IO_REPARSE_TAG_MOUNT_POINT if junction else IO_REPARSE_TAG_SYMLINK
    return struct.pack("<IHH", tag, len(data), 0) + data


# ---------------------------------------------------------------- paths


def windows_path(name: str, entry: str) -> str:
    """A tar member name as a validated layer-relative Windows path."""
    if name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if not name:
        raise LayerFormatError(entry, "empty path")
    if name.startswith("/") or "\\" in name:
        raise LayerFormatError(entry, "absolute paths and backslashes are not allowed in a layer tar")
    parts = name.split("/")
    if parts[0] not in ROOTS:
        raise LayerFormatError(entry, "a Windows layer only holds Files/, Hives/ and UtilityVM/ entries")
    if parts[0] == "UtilityVM" and len(parts) > 1 and parts[1] != "Files":
        raise LayerFormatError(entry, "only UtilityVM/Files/ may hold utility VM content")
    for part in parts:
        if part in ("", ".", ".."):
            raise LayerFormatError(entry, "empty, '.' and '..' path components are not allowed")
        if RESERVED & set(part) or ":" in part:
            raise LayerFormatError(entry, f"{part!r} contains a character Windows file names cannot have")
        if part.endswith((" ", ".")):
            raise LayerFormatError(entry, f"{part!r} ends with a space or dot, which Windows strips")
    return "\\".join(parts)


# ---------------------------------------------------------------- the parser


def _info(member: tarfile.TarInfo) -> FileInfo:
    pax = member.pax_headers
    attr_text = pax.get("MSWINDOWS.fileattr")
    if attr_text is not None:
        try:
            attributes = int(attr_text)
        except ValueError:
            raise LayerFormatError(member.name, f"MSWINDOWS.fileattr {attr_text!r} is not a number") from None
    else:
        attributes = FILE_ATTRIBUTE_DIRECTORY if member.isdir() else 0
    if member.issym():
        attributes |= FILE_ATTRIBUTE_REPARSE_POINT
    mtime = filetime(member.mtime, int(round((member.mtime % 1) * 1e9)) if isinstance(member.mtime, float) else 0)
    created = mtime
    if "LIBARCHIVE.creationtime" in pax:
        sec, _, frac = pax["LIBARCHIVE.creationtime"].partition(".")
        try:
            created = filetime(int(sec), int((frac + "000000000")[:9]) if frac else 0)
        except ValueError:
            raise LayerFormatError(member.name, "LIBARCHIVE.creationtime is not seconds.nanoseconds") from None
    atime = _pax_time(pax.get("atime"), mtime)
    ctime = _pax_time(pax.get("ctime"), mtime)
    return FileInfo(created, atime, mtime, ctime, attributes)


def _pax_time(value: str | None, default: int) -> int:
    if not value:
        return default
    sec, _, frac = value.partition(".")
    try:
        return filetime(int(sec), int((frac + "000000000")[:9]) if frac else 0)
    except ValueError:
        return default


def _b64(member: tarfile.TarInfo, key: str) -> bytes:
    try:
        return base64.b64decode(member.pax_headers[key], validate=True)
    except (binascii.Error, ValueError):
        raise LayerFormatError(member.name, f"{key} is not valid base64") from None


def _prefix_streams(member: tarfile.TarInfo) -> tuple[bytes, str]:
    """Security and EA records that precede a file's data, and the SDDL to convert on Windows."""
    pax = member.pax_headers
    out = b""
    sddl = ""
    if "MSWINDOWS.rawsd" in pax:
        sd = _b64(member, "MSWINDOWS.rawsd")
        out += stream_header(BACKUP_SECURITY_DATA, len(sd)) + sd
    elif "MSWINDOWS.sd" in pax:
        sddl = pax["MSWINDOWS.sd"]
    eas = sorted((k[len("MSWINDOWS.xattr."):], _b64(member, k)) for k in pax if k.startswith("MSWINDOWS.xattr."))
    if eas:
        try:
            encoded = encode_eas(eas)
        except (ValueError, UnicodeEncodeError) as e:
            raise LayerFormatError(member.name, str(e)) from None
        out += stream_header(BACKUP_EA_DATA, len(encoded)) + encoded
    return out, sddl


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, writer: LayerWriter) -> None:
    f = tar.extractfile(member)
    if f is None:
        return
    with f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            writer.write(chunk)


def _ads_owner(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """(file, stream) if this entry is an alternate data stream `<file>:<stream>`."""
    head, _, base = member.name.rstrip("/").rpartition("/")
    if ":" not in base:
        return None
    file_base, _, stream = base.partition(":")
    if not stream or ":" in stream or RESERVED & set(stream):
        raise LayerFormatError(member.name, "malformed alternate data stream name")
    return (f"{head}/{file_base}" if head else file_base), stream


def parse(source: IO[bytes], writer: LayerWriter) -> int:
    """Feed every entry of a Windows layer tar to `writer`; the number of entries read."""
    count = 0
    last_file = ""
    try:
        tar = tarfile.open(fileobj=source, mode="r|*")
    except tarfile.TarError as e:
        raise LayerFormatError("<tar>", f"not a tar stream: {e}") from None
    with tar:
        for member in _members(tar):
            count += 1
            ads = _ads_owner(member)
            if ads is not None:
                owner, stream = ads
                if windows_path(owner, member.name) != last_file or not member.isfile():
                    raise LayerFormatError(member.name, "an alternate data stream must directly follow its file")
                writer.write(stream_header(BACKUP_ALTERNATE_DATA, member.size, f":{stream}:$DATA"))
                _copy(tar, member, writer)
                continue
            last_file = ""
            head, _, base = member.name.rstrip("/").rpartition("/")
            if base == OPAQUE:
                raise LayerFormatError(member.name, "opaque whiteouts are not supported in Windows layers")
            if base.startswith(WHITEOUT):
                target = f"{head}/{base[len(WHITEOUT):]}" if head else base[len(WHITEOUT):]
                writer.remove(windows_path(target, member.name))
                continue
            path = windows_path(member.name, member.name)
            if member.islnk():
                writer.add_link(path, windows_path(member.linkname, member.name))
                continue
            if not (member.isfile() or member.isdir() or member.issym()):
                raise LayerFormatError(member.name, "devices, FIFOs and sparse entries cannot be in a Windows layer")
            info = _info(member)
            prefix, sddl = _prefix_streams(member)
            writer.add(path, info, sddl)
            if prefix:
                writer.write(prefix)
            if member.issym():
                junction = "MSWINDOWS.mountpoint" in member.pax_headers
                try:
                    reparse = encode_reparse(member.linkname, junction=junction)
                except ValueError as e:
                    raise LayerFormatError(member.name, str(e)) from None
                writer.write(stream_header(BACKUP_REPARSE_DATA, len(reparse)) + reparse)
            elif member.isfile():
                writer.write(stream_header(BACKUP_DATA, member.size))
                _copy(tar, member, writer)
                last_file = path
    return count


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except tarfile.TarError as e:
        raise LayerFormatError("<tar>", f"corrupt tar stream: {e}") from None
