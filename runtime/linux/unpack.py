"""Unpack one OCI image layer (an uncompressed tar stream) into a directory that becomes an overlay lowerdir.

The layer is hostile input. Every path is resolved by the kernel relative to
a directory fd of the target with openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS), so `..`, absolute paths and symlinks (absolute or
relative, planted earlier in the same layer) all resolve inside the target;
the final component is then created or changed with *at calls that never
follow it (O_CREAT|O_EXCL|O_NOFOLLOW, AT_SYMLINK_NOFOLLOW). `tarfile` only
parses headers, in stream mode; its extraction code and filters are not used
(CVE-2007-4559 and the 2024-2025 filter bypasses).

What the tar says becomes what overlayfs expects:
- `dir/.wh.name` (an OCI whiteout) becomes a 0/0 character device `dir/name`;
- `dir/.wh..wh..opq` (opaque marker) becomes xattr trusted.overlay.opaque=y on `dir`;
- other `.wh..wh.*` entries (aufs metadata) are skipped; the `.wh.` entries
  themselves are never written;
- xattrs from PAX `SCHILY.xattr.*` records are kept, except `trusted.overlay.*`,
  which would let a layer steer overlayfs (redirects, metacopy) and is dropped;
- uid/gid (numeric), modes including setuid/setgid/sticky, device nodes,
  fifos, hardlinks (confined to the target), symlinks (stored verbatim: they
  are resolved later inside the container's root) and mtimes; directory
  mtimes are set after the last entry, because creating entries changes them.

Budgets (`UnpackLimits`) bound the bytes read from the stream, the entry
count, path and name lengths and depth, so a decompression bomb or an inode
flood stops early with a clear error.

Contract with the caller:
- `stream` is read sequentially and never seeked (a pipe or a decompressor
  is fine); after the end-of-archive marker the rest of the stream is read
  and discarded (still within the byte budget), so a caller hashing the
  stream for the diff_id sees every byte.
- `target` must be an existing, empty directory on a filesystem that
  supports trusted.* xattrs and whiteout devices (run as root).
- On failure `UnpackError` names the entry and the reason, and the partly
  filled `target` is left as is: THE CALLER DELETES IT (e.g.
  `shutil.rmtree(target)`, which does not follow symlinks) and must not use
  it as a snapshot.
- The work is synchronous and mostly holds the GIL while parsing headers;
  run it in a worker thread or process, not on an event loop.
- Nothing is fsync'ed here. With `start_writeback=True` every regular file
  of at least WRITEBACK_MIN_BYTES is handed to the kernel's writeback as
  soon as it is written (sync_file_range(SYNC_FILE_RANGE_WRITE), which does
  not wait), so the disk works while the rest of the layer streams in and a
  caller's final syncfs()/fsync() finds little left to write (the same trick
  dpkg uses). It changes when data reaches the disk, never what is written.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from runtime.base import RuntimeFailure

log = logging.getLogger(__name__)

SYS_OPENAT2 = 437  # the same number on every architecture (syscall table unified in Linux 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
NO_LINKS = IN_ROOT | RESOLVE_NO_SYMLINKS

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
RESERVED_XATTR_PREFIX = "trusted.overlay."
PAX_XATTR_PREFIX = "SCHILY.xattr."
XATTR_SIZE_MAX = 65536
ID_MAX = (1 << 32) - 2  # uid/gid 2**32-1 is (uid_t)-1, "no change", to chown
COPY_CHUNK = 1 << 20
TAR_BUFSIZE = 64 << 10
# Bytes tarfile may consume while parsing one member's headers (PAX/GNU extension headers are
# read whole into memory): real ones are a few KiB; read-ahead and padding need 2 buffers more.
HEADER_WINDOW = (1 << 20) + 2 * TAR_BUFSIZE
SYNC_FILE_RANGE_WRITE = 2
# Smaller files are left to the caller's final sync, which writes them back in one sorted batch.
WRITEBACK_MIN_BYTES = 256 << 10


class UnpackError(RuntimeFailure):
    """The layer cannot be unpacked safely; `entry` names the tar member at fault, if any."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(f"layer entry {entry!r}: {message}" if entry is not None else message)
        self.entry = entry


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 64 << 30          # bytes read from the uncompressed tar stream, headers included
    max_entries: int = 1_000_000       # tar members (PAX/GNU extension headers not counted)
    max_path_bytes: int = 4096         # PATH_MAX
    max_name_bytes: int = 255          # NAME_MAX
    max_depth: int = 256               # path components; also keeps shutil.rmtree of the tree within recursion limits
    allow_devices: bool = True         # character and block device nodes (whiteouts are always allowed)


@dataclass
class UnpackStats:
    entries: int = 0
    bytes_read: int = 0     # uncompressed tar bytes consumed, trailing padding included
    file_bytes: int = 0     # regular-file content written
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    skipped: int = 0        # aufs metadata entries and dropped trusted.overlay.* xattrs


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@dataclass
class _Openat2:
    libc: ctypes.CDLL = field(default_factory=lambda: ctypes.CDLL(None, use_errno=True))

    def __call__(self, dirfd: int, path: str, flags: int, resolve: int) -> int:
        how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
        raw = os.fsencode(path)
        for _ in range(16):  # EAGAIN: a concurrent rename raced the lookup; retrying is the documented answer
            fd = int(self.libc.syscall(SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how)))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err != errno.EAGAIN:
                if err == errno.ENOSYS:
                    raise UnpackError("the kernel lacks openat2 (Linux >= 5.6 is required to unpack layers)")
                raise OSError(err, os.strerror(err), path)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)

    def start_writeback(self, fd: int) -> None:
        """Start writing the file's dirty pages to disk without waiting (advisory: errors show up at fsync)."""
        sync_file_range = getattr(self.libc, "sync_file_range", None)
        if sync_file_range is not None:  # every glibc and musl has it; without it the caller's sync does it all
            sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_uint(SYNC_FILE_RANGE_WRITE))


class _StreamFailed(Exception):
    """The caller's stream (decompressor, network) raised; kept apart from the tar's own faults."""


class _OverBudget(Exception):
    pass


class _HeaderTooLarge(Exception):
    pass


@dataclass
class _CountingReader:
    """Counts bytes read from the caller's stream and stops at the byte budget."""

    stream: BinaryIO
    limit: int
    count: int = 0
    header_left: int | None = HEADER_WINDOW  # set while tarfile parses headers; None while we copy data

    def read(self, n: int = -1) -> bytes:
        want = COPY_CHUNK if n is None or n < 0 else n
        try:
            data = self.stream.read(want)
        except RuntimeFailure:
            raise
        except Exception as e:  # the caller's decompressor may raise anything (zlib.error, EOFError, ...)
            raise _StreamFailed(f"{type(e).__name__}: {e}") from e
        self.count += len(data)
        if self.count > self.limit:
            raise _OverBudget()
        if self.header_left is not None:
            self.header_left -= len(data)
            if self.header_left < 0:
                raise _HeaderTooLarge()
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def unpack_layer(stream: BinaryIO, target: Path, limits: UnpackLimits = UnpackLimits(),
                 start_writeback: bool = False) -> UnpackStats:
    """Extract the uncompressed tar `stream` into the empty directory `target`; see the module docstring."""
    try:
        root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UnpackError(f"unpack target {str(target)!r}: {os.strerror(e.errno or 0)}") from None
    try:
        if os.listdir(root):
            raise UnpackError(f"unpack target {str(target)!r} is not empty")
        return _Unpacker(root, limits, start_writeback=start_writeback).run(stream)
    finally:
        os.close(root)


@dataclass
class _Unpacker:
    root: int
    limits: UnpackLimits
    start_writeback: bool = False
    stats: UnpackStats = field(default_factory=UnpackStats)
    openat2: _Openat2 = field(default_factory=_Openat2)
    # Directory path (components) -> (atime_ns, mtime_ns), applied after the last entry.
    dir_times: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)

    def run(self, stream: BinaryIO) -> UnpackStats:
        reader = _CountingReader(stream, self.limits.max_bytes)
        name: str | None = None
        try:
            # Stream mode ("r|") only ever calls read() on the file object; it never seeks.
            tf = tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|", bufsize=TAR_BUFSIZE,
                              errors="surrogateescape")
            # TarFile keeps every parsed TarInfo in this (undocumented) list; emptied after each
            # entry so memory stays flat however many entries the layer has.
            seen: list[tarfile.TarInfo] = getattr(tf, "members")
            while True:
                reader.header_left = HEADER_WINDOW
                member = tf.next()
                reader.header_left = None
                seen.clear()
                if member is None:
                    break
                name = member.name
                self.stats.entries += 1
                if self.stats.entries > self.limits.max_entries:
                    raise UnpackError(f"the layer has more than {self.limits.max_entries} entries", name)
                self._entry(tf, member, reader)
            name = None
            reader.drain()
            self._set_dir_times()
        except UnpackError:
            raise
        except _HeaderTooLarge:
            where = f" after entry {name!r}" if name is not None else ""
            raise UnpackError(f"tar extension headers{where} exceed {HEADER_WINDOW} bytes "
                              "(oversized PAX or GNU long-name header)") from None
        except RecursionError:
            raise UnpackError("directory tree too deep to process", name) from None
        except _OverBudget:
            raise UnpackError(f"the layer is larger than the byte budget of {self.limits.max_bytes} bytes "
                              f"(possible decompression bomb)", name) from None
        except _StreamFailed as e:
            raise UnpackError(f"reading the layer stream failed: {e}", name) from e.__cause__
        except tarfile.TarError as e:
            where = f" after entry {name!r}" if name is not None else ""
            raise UnpackError(f"the layer is not a valid tar stream{where}: {e}") from None
        except OSError as e:
            reason = "no space left on the device" if e.errno == errno.ENOSPC else os.strerror(e.errno or 0)
            raise UnpackError(reason, name) from e
        except (ValueError, OverflowError) as e:  # e.g. a PAX mtime of "inf" or "nan"
            raise UnpackError(f"invalid value: {e}", name) from e
        self.stats.bytes_read = reader.count
        log.debug("unpacked layer: %s", self.stats)
        return self.stats

    # ------------------------------------------------------------ entries

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo, reader: _CountingReader) -> None:
        comps = self._components(m.name, m.name)
        if m.size < 0:
            raise UnpackError("declares a negative size", m.name)
        for what, value in (("uid", m.uid), ("gid", m.gid), ("device major", m.devmajor),
                            ("device minor", m.devminor)):
            if not 0 <= value <= ID_MAX:  # base-256 fields can say -1 (chown's "leave as is") or 2**95
                raise UnpackError(f"{what} {value} is out of range", m.name)
        if m.issparse():
            raise UnpackError("sparse files are not supported in image layers", m.name)
        if m.size and not m.isreg():
            # tarfile would skip such data silently; no archiver writes it for links, dirs or devices.
            raise UnpackError(f"a {_kind(m)} entry declares {m.size} bytes of data", m.name)
        if m.isreg() and m.size > self.limits.max_bytes - reader.count:
            raise UnpackError(f"declares {m.size} bytes, beyond the byte budget of {self.limits.max_bytes} "
                              "(possible decompression bomb)", m.name)
        if not comps:
            return self._root_entry(m)
        base = comps[-1]
        if base == OPAQUE_MARKER:
            return self._opaque(m, comps[:-1])
        if base.startswith(WHITEOUT_META_PREFIX):
            self.stats.skipped += 1  # aufs bookkeeping (.wh..wh.plnk, ...): meaningless to overlayfs
            return
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(m, comps[:-1], base[len(WHITEOUT_PREFIX):])
        parent = self._open_dir(m.name, comps[:-1], IN_ROOT)
        try:
            if m.isdir():
                self._make_dir(m, parent, comps)
            elif m.isreg():
                self._make_file(tf, m, parent, base)
            elif m.issym():
                self._make_symlink(m, parent, base)
            elif m.islnk():
                self._make_hardlink(m, parent, comps)
            elif m.ischr() or m.isblk():
                self._make_device(m, parent, base)
            elif m.isfifo():
                self._make_fifo(m, parent, base)
            else:
                raise UnpackError(f"unsupported tar entry type {m.type!r}", m.name)
        finally:
            os.close(parent)

    def _components(self, entry: str, path: str) -> list[str]:
        """`path` cleaned lexically against the layer root: '.', '' dropped, '..' clamped at the root.

        Clamping is what containerd and Docker do (the path is joined onto
        "/"); the kernel-side RESOLVE_IN_ROOT confines whatever remains.
        """
        if "\0" in path:
            raise UnpackError("path contains a NUL byte", entry)
        raw = os.fsencode(path)
        if len(raw) > self.limits.max_path_bytes:
            raise UnpackError(f"path is {len(raw)} bytes, longer than {self.limits.max_path_bytes}", entry)
        out: list[str] = []
        for c in path.split("/"):
            if c in ("", "."):
                continue
            if c == "..":
                if out:
                    out.pop()
                continue
            if len(os.fsencode(c)) > self.limits.max_name_bytes:
                raise UnpackError(f"a path component is longer than {self.limits.max_name_bytes} bytes", entry)
            out.append(c)
        if len(out) > self.limits.max_depth:
            raise UnpackError(f"path is deeper than {self.limits.max_depth} components", entry)
        return out

    def _root_entry(self, m: tarfile.TarInfo) -> None:
        if not m.isdir():
            raise UnpackError("names the layer root but is not a directory", m.name)
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root)
        try:
            self._apply_meta(fd, m)
        finally:
            os.close(fd)
        self.dir_times[()] = _times(m)

    def _make_dir(self, m: tarfile.TarInfo, parent: int, comps: list[str]) -> None:
        base = comps[-1]
        if not self._clear(parent, base, keep_dir=True):
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._apply_meta(fd, m)
        finally:
            os.close(fd)
        self.dir_times[tuple(comps)] = _times(m)
        self.stats.dirs += 1

    def _make_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parent: int, base: str) -> None:
        self._clear(parent, base, keep_dir=False)
        # O_EXCL|O_NOFOLLOW: never write through anything already at that name.
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            if m.size:
                self._copy(tf, m, fd)
                if self.start_writeback and m.size >= WRITEBACK_MIN_BYTES:
                    self.openat2.start_writeback(fd)
            self._apply_meta(fd, m)
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.file_bytes += m.size

    def _copy(self, tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
        src = tf.extractfile(m)
        assert src is not None  # regular members always have a reader
        left = m.size
        while left:
            chunk = src.read(min(left, COPY_CHUNK))
            if not chunk:
                raise UnpackError(f"the stream ended {left} bytes before the end of the file", m.name)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            left -= len(chunk)

    def _make_symlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        if not m.linkname:
            raise UnpackError("symlink has an empty target", m.name)
        if "\0" in m.linkname:
            raise UnpackError("symlink target contains a NUL byte", m.name)
        self._clear(parent, base, keep_dir=False)
        # The target is stored verbatim: it is data, resolved only inside the container's root.
        os.symlink(m.linkname, base, dir_fd=parent)
        os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        self._apply_xattrs_at(m, parent, base)
        os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)
        self.stats.symlinks += 1

    def _make_hardlink(self, m: tarfile.TarInfo, parent: int, comps: list[str]) -> None:
        target = self._components(m.name, m.linkname)
        if not target:
            raise UnpackError("hardlink to the layer root", m.name)
        if target == comps:
            raise UnpackError("hardlink to itself", m.name)
        tparent = self._open_dir(m.name, target[:-1], IN_ROOT, create=False)
        try:
            try:
                st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                raise UnpackError(f"hardlink target {m.linkname!r} is not in the layer", m.name) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnpackError(f"hardlink target {m.linkname!r} is a directory", m.name)
            self._clear(parent, comps[-1], keep_dir=False)
            # linkat without AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself.
            # No chmod/chown/utime afterwards: the new name shares the target's inode (CVE-2021-32760).
            os.link(target[-1], comps[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self.stats.hardlinks += 1

    def _make_device(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        kind = "character" if m.ischr() else "block"
        if not self.limits.allow_devices:
            raise UnpackError(f"{kind} device {m.devmajor}:{m.devminor} not allowed in this layer", m.name)
        self._clear(parent, base, keep_dir=False)
        fmt = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(base, fmt | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        self._apply_meta_at(m, parent, base)
        self.stats.devices += 1

    def _make_fifo(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        self._clear(parent, base, keep_dir=False)
        os.mkfifo(base, 0o600, dir_fd=parent)
        self._apply_meta_at(m, parent, base)
        self.stats.fifos += 1

    def _whiteout(self, m: tarfile.TarInfo, dir_comps: list[str], victim: str) -> None:
        if victim in ("", ".", ".."):
            raise UnpackError("invalid whiteout: it names no file, or the directory itself or its parent", m.name)
        parent = self._open_dir(m.name, dir_comps, NO_LINKS)
        try:
            self._clear(parent, victim, keep_dir=False)
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)  # overlayfs whiteout
        finally:
            os.close(parent)
        self.stats.whiteouts += 1

    def _opaque(self, m: tarfile.TarInfo, dir_comps: list[str]) -> None:
        parent = self._open_dir(m.name, dir_comps, NO_LINKS)
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self.stats.opaque_dirs += 1

    # ------------------------------------------------------------ paths

    def _open_dir(self, entry: str, comps: list[str], resolve: int, create: bool = True) -> int:
        """An O_PATH fd of directory `comps` resolved inside the root, creating missing parents (0755, root)."""
        try:
            return self.openat2(self.root, "/".join(comps) or ".", os.O_PATH | os.O_DIRECTORY, resolve)
        except OSError as e:
            if e.errno == errno.ENOENT and create:
                return self._make_parents(entry, comps, resolve)
            raise self._parent_error(entry, comps, e) from None

    def _make_parents(self, entry: str, comps: list[str], resolve: int) -> int:
        fd = os.dup(self.root)
        try:
            for i, name in enumerate(comps):
                sub = "/".join(comps[:i + 1])
                try:
                    nfd = self.openat2(self.root, sub, os.O_PATH | os.O_DIRECTORY, resolve)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, 0o700, dir_fd=fd)
                    except FileExistsError:
                        raise UnpackError(f"parent {sub!r} is a symlink to nothing in the layer", entry) from None
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    os.chmod(nfd, 0o755)  # explicit: mkdir's mode is cut by the daemon's umask
                except OSError as e:
                    raise self._parent_error(entry, comps[:i + 1], e) from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _parent_error(entry: str, comps: list[str], e: OSError) -> UnpackError:
        where = "/".join(comps) or "."
        if e.errno == errno.ENOTDIR:
            return UnpackError(f"parent {where!r} is not a directory", entry)
        if e.errno == errno.ELOOP:
            return UnpackError(f"parent {where!r} goes through a symlink, not allowed here (or a symlink loop)",
                               entry)
        if e.errno == errno.ENOENT:
            return UnpackError(f"{where!r} does not resolve inside the layer (missing, or a symlink to nothing)",
                               entry)
        return UnpackError(f"cannot open parent {where!r}: {os.strerror(e.errno or 0)}", entry)

    @staticmethod
    def _clear(parent: int, name: str, keep_dir: bool) -> bool:
        """Remove whatever is at `name` (a later entry replaces an earlier one); keep a directory if asked.

        Returns True when an existing directory was kept.
        """
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(name, dir_fd=parent)  # fd-based walk; never follows symlinks
        else:
            os.unlink(name, dir_fd=parent)
        return False

    # ------------------------------------------------------------ metadata

    def _apply_meta(self, fd: int, m: tarfile.TarInfo) -> None:
        os.chown(fd, m.uid, m.gid)
        os.chmod(fd, m.mode & 0o7777)  # after chown, which clears setuid/setgid
        for name, value in self._xattrs(m):
            self._set_xattr(m, lambda: os.setxattr(fd, name, value), name)

    def _apply_meta_at(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        """Owner, mode, xattrs and times of a device node or fifo, without opening it (opening may block or act)."""
        os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, m.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        self._apply_xattrs_at(m, parent, base)
        os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)

    def _apply_xattrs_at(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        # No *xattrat syscalls before Linux 6.13: reach the entry through our own dir fd's
        # /proc magic link, with the final component not followed.
        path = f"/proc/self/fd/{parent}/{base}"
        for name, value in self._xattrs(m):
            self._set_xattr(m, lambda: os.setxattr(path, name, value, follow_symlinks=False), name)

    def _xattrs(self, m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in m.pax_headers.items():
            if not key.startswith(PAX_XATTR_PREFIX):
                continue
            name = key[len(PAX_XATTR_PREFIX):]
            if name.startswith(RESERVED_XATTR_PREFIX):
                self.stats.skipped += 1
                log.warning("layer entry %r: dropped reserved xattr %s", m.name, name)
                continue
            raw = value.encode("utf-8", "surrogateescape")
            if len(raw) > XATTR_SIZE_MAX:
                raise UnpackError(f"xattr {name} is {len(raw)} bytes, more than {XATTR_SIZE_MAX}", m.name)
            out.append((name, raw))
        return out

    @staticmethod
    def _set_xattr(m: tarfile.TarInfo, setter: Callable[[], None], name: str) -> None:
        try:
            setter()
        except OSError as e:
            # Not every filesystem or file type takes every namespace (user.* on symlinks, ...):
            # a missing xattr degrades the file, it does not endanger the host.
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                log.warning("layer entry %r: xattr %s not kept: %s", m.name, name, os.strerror(e.errno))
                return
            raise

    def _set_dir_times(self) -> None:
        for comps, times in self.dir_times.items():
            try:
                parent = self.openat2(self.root, "/".join(comps[:-1]) or ".", os.O_PATH | os.O_DIRECTORY, IN_ROOT)
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                base = comps[-1] if comps else "."
                if stat.S_ISDIR(os.stat(base, dir_fd=parent, follow_symlinks=False).st_mode):
                    os.utime(base, ns=times, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(parent)


def _kind(m: tarfile.TarInfo) -> str:
    kinds = {tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
             tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}
    return kinds.get(m.type, f"type {m.type!r}")


def _times(m: tarfile.TarInfo) -> tuple[int, int]:
    mtime = int(round(float(m.mtime) * 1e9))
    atime_raw = m.pax_headers.get("atime")
    try:
        atime = int(round(float(atime_raw) * 1e9)) if atime_raw else mtime
    except ValueError:
        atime = mtime
    return atime, mtime
