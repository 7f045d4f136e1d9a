"""Mount work of a container's init, run in its own (new) mount namespace.

Paths inside the container are resolved with openat2(RESOLVE_IN_ROOT) relative
to the rootfs, creating missing directories (or an empty file for a file bind)
one component at a time under an already-resolved parent. The mount then goes
onto /proc/self/fd/<fd> of that handle, so a symlink swapped in afterwards
cannot redirect it out of the root (CVE-2021-30465). Host paths (bind sources)
are resolved normally: following host symlinks is what users expect.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from runtime.linux import syscalls as sc
from runtime.linux.spec import DevicePlan, MountPlan

O_PATH = getattr(os, "O_PATH", 0o10000000)
_IN_ROOT = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS

# The device nodes every container gets (runc's default set), and the /dev symlinks.
DEFAULT_DEVICES = (
    DevicePlan("/dev/null", stat.S_IFCHR | 0o666, 1, 3, 0, 0),
    DevicePlan("/dev/zero", stat.S_IFCHR | 0o666, 1, 5, 0, 0),
    DevicePlan("/dev/full", stat.S_IFCHR | 0o666, 1, 7, 0, 0),
    DevicePlan("/dev/random", stat.S_IFCHR | 0o666, 1, 8, 0, 0),
    DevicePlan("/dev/urandom", stat.S_IFCHR | 0o666, 1, 9, 0, 0),
    DevicePlan("/dev/tty", stat.S_IFCHR | 0o666, 5, 0, 0, 0),
)
DEV_SYMLINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
                ("pts/ptmx", "/dev/ptmx"), ("/proc/kcore", "/dev/core"))

# statvfs flag bits -> MS_* flags, to keep a mount's flags when remounting it read-only.
_ST_TO_MS = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV), (os.ST_NOEXEC, sc.MS_NOEXEC),
             (os.ST_NOATIME, sc.MS_NOATIME), (os.ST_NODIRATIME, sc.MS_NODIRATIME),
             (os.ST_RELATIME, sc.MS_RELATIME), (os.ST_RDONLY, sc.MS_RDONLY))


class MountError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_in_root(root_fd: int, path: str, make: str | None = None) -> int:
    """O_PATH fd of `path` inside the root; `make` = "dir" or "file" creates what is missing."""
    rel = path.lstrip("/") or "."
    try:
        return sc.openat2(root_fd, rel, O_PATH, _IN_ROOT)
    except FileNotFoundError:
        if make is None:
            raise
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    parent = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            prefix = "/".join(parts[: i + 1])
            try:
                fd = sc.openat2(root_fd, prefix, O_PATH, _IN_ROOT)
            except FileNotFoundError:
                if name == "..":
                    raise
                _create_at(parent, name, "file" if (make == "file" and i == len(parts) - 1) else "dir")
                try:
                    fd = sc.openat2(root_fd, prefix, O_PATH, _IN_ROOT)
                except FileNotFoundError:
                    raise OSError(errno.ENOENT, f"{'/' + prefix} is a dangling symlink") from None
            os.close(parent)
            parent = fd
        result, parent = parent, -1
        return result
    finally:
        if parent >= 0:
            os.close(parent)


def _create_at(dir_fd: int, name: str, kind: str) -> None:
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=dir_fd))
    except FileExistsError:
        pass  # made concurrently, or a dangling symlink (the caller's retry tells them apart)


def make_root_private_parent(rootfs: str) -> None:
    """pivot_root refuses a new root whose parent mount is shared, and an overlay mounted under a
    shared parent would propagate to the host: make that one mount private (runc does the same)."""
    target = os.path.realpath(rootfs)
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = _unescape(line.split()[4])
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best = mnt
    sc.mount(None, best, None, sc.MS_PRIVATE)


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


@dataclass(frozen=True)
class IdMap:
    """The user namespace a container joins: image files owned by 0 must show as its root."""

    userns_fd: int
    root_uid: int      # host uid of the container's uid 0
    root_gid: int
    # directories already replaced by an idmapped mount of themselves in this mount namespace (an
    # idmapped mount cannot be idmapped again)
    done: set[str] = field(default_factory=set)

    def covers(self, path: str) -> bool:
        """Is `path` already seen through an idmapped mount made here?"""
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.done)


def mount_rootfs(rootfs: str, layers: Iterable[str], upper: str, work: str, idmap: IdMap | None = None) -> None:
    """Overlay of the image layers (lowest first) + upper/work at `rootfs`; no layers: bind rootfs to itself.

    With `idmap`, each layer is first replaced (in this mount namespace only) by an idmapped mount of
    itself, so the overlay presents the layers' root-owned files as owned by the namespace's root. The
    upper directory stays plain: what the container writes is stored with its host ids (a private dir),
    and copy-ups keep the ids the lower layer showed. overlayfs takes the root directory's owner from
    the upper dir, hence the chown (else the container's root could not write to /)."""
    layers = list(layers)
    if not layers:
        if not os.path.isdir(rootfs):
            raise MountError("root.path", f"{rootfs} is not a directory")
        if idmap is not None:
            _idmap_onto_itself(rootfs, idmap, "root.path")
        else:
            sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
        return
    for i, layer in enumerate(layers):
        if any(c in layer for c in ",:\n") or not os.path.isdir(layer):
            raise MountError(f"rootfs.layers[{i}]", f"{layer!r} is not a usable layer directory")
    if idmap is not None:
        for i, layer in enumerate(layers):
            _idmap_onto_itself(layer, idmap, f"rootfs.layers[{i}]")
        os.chown(upper, idmap.root_uid, idmap.root_gid, follow_symlinks=False)
    lower = ":".join(reversed(layers))  # overlayfs lists the topmost layer first
    data = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(data) < 4000:
        sc.mount("overlay", rootfs, "overlay", 0, data)
        return
    # The mount data is limited to one page: name the layers relative to their common parent instead.
    common = os.path.commonpath(layers)
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(common)
        lower = ":".join(os.path.relpath(x, common) for x in reversed(layers))
        sc.mount("overlay", rootfs, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
    finally:
        os.fchdir(here)
        os.close(here)


def _idmap_onto_itself(path: str, idmap: IdMap, field_name: str) -> None:
    if idmap.covers(path):
        return
    try:
        tree = sc.idmapped_clone(path, idmap.userns_fd)
    except OSError as e:
        raise MountError(field_name, f"cannot make an idmapped mount of {path} (the filesystem must support "
                         f"idmapped mounts): {e.strerror or e}") from None
    try:
        target = os.open(path, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            sc.attach_mount(tree, target, path)
        finally:
            os.close(target)
    finally:
        os.close(tree)
    idmap.done.add(path)


def mount_one(root_fd: int, m: MountPlan, cgroup_mounts: tuple[HostCgroupMount, ...], new_cgroupns: bool,
              idmap: IdMap | None = None) -> None:
    """One spec mount inside the root, with its flags and propagation. In a user namespace (`idmap`) an
    overlay is made of idmapped layers, like the rootfs."""
    if m.type == "cgroup":
        _mount_cgroups(root_fd, m, cgroup_mounts, new_cgroupns)
        return
    if m.type in ("proc", "sysfs"):
        _require_plain_dir(root_fd, m)
    if m.type == "overlay" and idmap is not None:
        for opt in m.data.split(","):
            if opt.startswith("lowerdir="):
                for lower in opt[len("lowerdir="):].split(":"):
                    if not os.path.isabs(lower):
                        raise MountError(f"{m.field}.options", f"overlay layer {lower!r} must be an absolute path")
                    _idmap_onto_itself(lower, idmap, f"{m.field}.options")
    make = "dir"
    if m.bind and not os.path.isdir(m.source):
        make = "file"
    try:
        target = open_in_root(root_fd, m.destination, make)
    except OSError as e:
        raise MountError(f"{m.field}.destination", f"cannot make {m.destination} in the container: "
                         f"{e.strerror or e}") from None
    try:
        if m.bind:
            _bind(root_fd, m, target, idmap)
        else:
            sc.mount(m.source or m.type, fd_path(target), m.type, m.flags, m.data or None)
    except OSError as e:
        raise MountError(m.field, f"cannot mount {m.source or m.type} on {m.destination}: {e.strerror or e}") \
            from None
    finally:
        os.close(target)
    if m.propagation:
        fd = open_in_root(root_fd, m.destination)
        try:
            for flag in m.propagation:
                sc.mount(None, fd_path(fd), None, flag)
        finally:
            os.close(fd)


def _bind(root_fd: int, m: MountPlan, target: int, idmap: IdMap | None) -> None:
    if m.idmap and idmap is None:
        raise MountError(f"{m.field}.options", "idmap needs a user namespace (linux.namespaces)")
    if m.idmap and idmap is not None and not idmap.covers(m.source):
        # Not recursive: every mount below would have to support idmapping too.
        tree = sc.idmapped_clone(m.source, idmap.userns_fd)
        try:
            sc.attach_mount(tree, target, m.destination)
        finally:
            os.close(tree)
    else:
        sc.mount(m.source, fd_path(target), None, m.flags & (sc.MS_BIND | sc.MS_REC))
    extra = m.flags & ~(sc.MS_BIND | sc.MS_REC)
    if m.recursive_readonly:
        # After the bind (so the sub-mounts it carried are there), before any remount: the whole tree read-only.
        fd = open_in_root(root_fd, m.destination)
        try:
            sc.make_mount_tree_readonly(fd)
        finally:
            os.close(fd)
    if extra:
        # Bind mounts take their flags only on a remount. /proc/self/fd/<old handle> still names the
        # dentry under the new mount, so resolve the destination again (inside the root) to reach it.
        fd = open_in_root(root_fd, m.destination)
        try:
            sc.mount(None, fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | extra | _locked_flags(fd_path(fd)))
        finally:
            os.close(fd)


def _locked_flags(path: str) -> int:
    st = os.statvfs(path)
    return sum(ms for st_bit, ms in _ST_TO_MS if st.f_flag & st_bit and ms != sc.MS_RDONLY) & \
        (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def _require_plain_dir(root_fd: int, m: MountPlan) -> None:
    """/proc and /sys must be ordinary directories, never symlinks (CVE-2019-19921, CVE-2023-27561)."""
    rel = m.destination.lstrip("/")
    try:
        fd = sc.openat2(root_fd, rel, O_PATH, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MountError(f"{m.field}.destination",
                             f"{m.destination} must be mounted on an ordinary directory, not a symlink") from None
        raise
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise MountError(f"{m.field}.destination", f"{m.destination} must be mounted on an ordinary directory")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HostCgroupMount:
    name: str            # under /sys/fs/cgroup: "memory", "cpu", "unified", "systemd"
    fstype: str          # cgroup | cgroup2
    options: str         # superblock options to mount it again ("memory", "none,name=systemd")
    container_dir: str   # the container's cgroup directory in this hierarchy ("" if it has none)


def host_cgroup_mounts(container_dirs: Mapping[str, str]) -> tuple[HostCgroupMount, ...]:
    """The host's cgroup hierarchies under /sys/fs/cgroup (read by the shim, once per container)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split()[4]
            fstype, _src, super_opts = right.split()[:3]
            if fstype not in ("cgroup", "cgroup2") or not point.startswith("/sys/fs/cgroup/"):
                continue
            name = point[len("/sys/fs/cgroup/"):]
            if "/" in name:
                continue
            opts = ",".join(o for o in super_opts.split(",") if o not in ("rw", "ro"))
            out.append(HostCgroupMount(name, fstype, opts, container_dirs.get(name, "")))
    return tuple(out)


def _mount_cgroups(root_fd: int, m: MountPlan, hierarchies: tuple[HostCgroupMount, ...], new_cgroupns: bool) -> None:
    """/sys/fs/cgroup: a tmpfs with one mount per host hierarchy, showing only the container's cgroup."""
    ro = m.flags & sc.MS_RDONLY
    base = open_in_root(root_fd, m.destination, "dir")
    try:
        sc.mount("tmpfs", fd_path(base), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    finally:
        os.close(base)
    for h in hierarchies:
        dest = f"{m.destination}/{h.name}"
        fd = open_in_root(root_fd, dest, "dir")
        try:
            flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | ro
            if new_cgroupns:
                # Inside a cgroup namespace a fresh mount's root is the container's own cgroup.
                sc.mount("cgroup", fd_path(fd), h.fstype, flags, h.options)
            elif h.container_dir:
                sc.mount(h.container_dir, fd_path(fd), None, sc.MS_BIND)
                top = open_in_root(root_fd, dest)
                try:
                    sc.mount(None, fd_path(top), None, sc.MS_REMOUNT | sc.MS_BIND | flags)
                finally:
                    os.close(top)
        finally:
            os.close(fd)
    if ro:
        fd = open_in_root(root_fd, m.destination)
        try:
            sc.mount(None, fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID |
                     sc.MS_NODEV | sc.MS_NOEXEC)
        finally:
            os.close(fd)


def make_devices(root_fd: int, devices: Iterable[DevicePlan]) -> None:
    for d in devices:
        parent, name = os.path.split(d.path)
        pfd = open_in_root(root_fd, parent, "dir")
        try:
            try:
                os.unlink(name, dir_fd=pfd)
            except FileNotFoundError:
                pass
            os.mknod(name, d.mode, os.makedev(d.major, d.minor), dir_fd=pfd)
            os.chown(name, d.uid, d.gid, dir_fd=pfd, follow_symlinks=False)
            os.chmod(name, d.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            raise MountError("linux.devices", f"cannot create {d.path}: {e.strerror}") from None
        finally:
            os.close(pfd)


def make_dev_symlinks(root_fd: int) -> None:
    dev = open_in_root(root_fd, "/dev", "dir")
    try:
        for target, link in DEV_SYMLINKS:
            try:
                os.symlink(target, os.path.basename(link), dir_fd=dev)
            except FileExistsError:
                pass
    finally:
        os.close(dev)


def pivot_root(root_fd: int) -> None:
    """Make the rootfs `/`; the old root is made a slave first so its unmount never reaches the host.

    pivot_root(".", ".") stacks the old root on top of the new one. "." must then name the OLD root
    (hence the fchdir to a handle of it): the new root's own mounts keep the propagation they were given."""
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(root_fd)
        sc.pivot_root(".", ".")
        os.fchdir(old_root)
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        sc.umount2(".", sc.MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")


def remount_root_readonly() -> None:
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _locked_flags("/"))
