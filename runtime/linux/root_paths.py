"""Paths inside a container root, resolved by the kernel so that no symlink leads out.

For the container init's mounts (and the daemon's volume setup): every
destination is opened relative to a directory fd of the root with openat2
RESOLVE_IN_ROOT, so an image symlink "/data -> /etc" lands on the root's
/etc, never the host's; missing directories are created one component at a
time below an already-resolved parent. The result is an O_PATH fd: mount onto
it through the fd (move_mount, or "/proc/self/fd/N"), so nothing is looked up
by name again between the check and the mount — the race of CVE-2021-30465.
Image VOLUME paths get the same treatment (CVE-2022-23648).

`procfs_target` is stricter for /proc and /sys: the destination itself must
be a real directory, not a symlink anywhere on the way (CVE-2019-19921: an
image whose /proc is a symlink redirected runc's procfs mount).
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.linux import libc_calls

_IN_ROOT = libc_calls.RESOLVE_IN_ROOT | libc_calls.RESOLVE_NO_MAGICLINKS
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572


def components(path: str) -> list[str]:
    """The parts of an absolute container path; ".." and "." are refused rather than interpreted."""
    if not path.startswith("/") or "\0" in path:
        raise OSError(errno.EINVAL, f"{path!r}: container paths must be absolute")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, f"{path!r}: '.' and '..' are not allowed in container paths")
    return parts


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open `path` of the container; symlinks are followed but stay inside the root."""
    rel = "/".join(components(path)) or "."
    return libc_calls.openat2(root_fd, rel, flags, _IN_ROOT)


MAX_SYMLINK_HOPS = 40


def mkdirs_in_root(root_fd: int, path: str, mode: int = 0o755) -> int:
    """O_PATH fd of directory `path` in the container, creating missing parts inside the root.

    Walks one component at a time below directory fds: an image symlink is
    read and its target walked in turn (absolute targets restart at the
    root, ".." stops at it), so a dangling link like /data -> /host/dir
    creates <root>/host/dir. Each step opens with O_NOFOLLOW, so a component
    swapped for a symlink meanwhile fails instead of being followed.
    """
    todo = components(path)
    stack = [os.dup(root_fd)]
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            kind, target = _entry(stack[-1], name, mode)
            if kind == "link":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, f"{path}: too many symlinks")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo[:0] = target.split("/")
            else:
                stack.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     dir_fd=stack[-1]))
        result = stack.pop()
        return result
    finally:
        for fd in stack:
            os.close(fd)


def _entry(parent_fd: int, name: str, mode: int) -> tuple[str, str]:
    """("dir", "") or ("link", target) for `name` below `parent_fd`, creating a directory if missing."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass  # made by someone else meanwhile: look again
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return "link", os.readlink(name, dir_fd=parent_fd)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{name} is not a directory")
    return "dir", ""


def create_file_in_root(root_fd: int, path: str, mode: int = 0o644) -> int:
    """O_PATH fd of regular file `path` (a bind-mount target for a file), created if missing."""
    parts = components(path)
    if not parts:
        raise OSError(errno.EINVAL, "/ is not a file")
    parent = mkdirs_in_root(root_fd, "/" + "/".join(parts[:-1])) if len(parts) > 1 else os.dup(root_fd)
    try:
        try:
            fd = os.open(parts[-1], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=parent)
            os.close(fd)
        except FileExistsError:
            pass
        return open_in_root(root_fd, path)
    finally:
        os.close(parent)


def procfs_target(root_fd: int, path: str) -> int:
    """O_PATH fd of the /proc or /sys mount point: a real directory reached without any symlink."""
    rel = "/".join(components(path))
    try:
        fd = libc_calls.openat2(root_fd, rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                _IN_ROOT | libc_calls.RESOLVE_NO_SYMLINKS)
    except FileNotFoundError:
        return mkdirs_in_root(root_fd, path, 0o555)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(e.errno, f"{path} in the image is a symlink or not a directory; refusing to "
                                   "mount there") from None
        raise
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ENOTDIR, f"{path} in the image is not a directory")
    return fd


def check_fs(fd: int, magic: int, what: str) -> None:
    """Fail unless `fd` is on a filesystem of type `magic` (e.g. verify /proc after mounting it)."""
    if libc_calls.fs_type(fd) != magic:
        raise OSError(errno.EXDEV, f"{what} is not the expected filesystem")
