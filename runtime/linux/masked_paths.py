"""Masked and read-only paths (OCI `linux.maskedPaths` / `linux.readonlyPaths`), for the container init.

Called by the container init after the rootfs, /proc, /sys and /dev are
mounted (after pivot_root, with root "/", or before it with the rootfs path),
and after sysctls are written (the read-only /proc/sys would stop them):

    mask_paths(root, masked=spec["linux"].get("maskedPaths", []),
               readonly=spec["linux"].get("readonlyPaths", []))

Lists are used exactly as given (kubelet sends them; empty = unmasked).

- masked file: /dev/null is bind-mounted over it; masked directory: an empty
  read-only tmpfs is mounted over it (runc's behaviour);
- read-only path: a recursive bind of itself, made read-only;
- a path that does not exist is skipped (runc does the same);
- every path is resolved inside `root` by the kernel (openat2
  RESOLVE_IN_ROOT, no magic links), so a symlink in the image cannot aim a
  mount at the host; the mounts are attached through file descriptors
  (open_tree/move_mount, fsopen/fsmount), so nothing is re-resolved by name
  between check and use;
- /dev/null is checked to be the real character device 1:3 on the opened
  fd before use: a container that replaced it (a symlink, a regular file,
  another device) gets an error, never a bind of that object
  (CVE-2025-31133 family).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from runtime.linux import libc_calls

_RESOLVE = libc_calls.RESOLVE_IN_ROOT | libc_calls.RESOLVE_NO_MAGICLINKS
_NULL_MAJOR, _NULL_MINOR = 1, 3


class MaskError(OSError):
    """A masked/read-only path could not be applied; the message names the path."""


def open_dev_null(root_fd: int) -> int:
    """O_PATH fd of the root's /dev/null, verified to be the char device 1:3 (no symlink followed)."""
    try:
        fd = libc_calls.openat2(root_fd, "dev/null", os.O_PATH | os.O_NOFOLLOW,
                                _RESOLVE | libc_calls.RESOLVE_NO_SYMLINKS)
    except OSError as e:
        raise MaskError(e.errno, f"/dev/null is unusable as a mask source: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (_NULL_MAJOR, _NULL_MINOR):
        os.close(fd)
        raise MaskError(errno.EPERM, "/dev/null is not the character device 1:3; refusing to use it as a mask")
    return fd


def _open_target(root_fd: int, path: str) -> int | None:
    rel = path.lstrip("/")
    if not rel or not path.startswith("/"):
        raise MaskError(errno.EINVAL, f"masked/read-only path {path!r} must be absolute and not /")
    try:
        return libc_calls.openat2(root_fd, rel, os.O_PATH, _RESOLVE)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise MaskError(e.errno, f"{path}: {e.strerror}") from None


def _mask_one(root_fd: int, null_fd: int, path: str) -> None:
    target = _open_target(root_fd, path)
    if target is None:
        return
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            mount = _readonly_tmpfs()
        else:
            mount = libc_calls.open_tree(null_fd, "", libc_calls.OPEN_TREE_CLONE | libc_calls.AT_EMPTY_PATH
                                         | os.O_CLOEXEC)
        try:
            libc_calls.move_mount(mount, target)
        finally:
            os.close(mount)
    except MaskError:
        raise
    except OSError as e:
        raise MaskError(e.errno, f"masking {path}: {e.strerror}") from None
    finally:
        os.close(target)


def _readonly_tmpfs() -> int:
    ctx = libc_calls.fsopen("tmpfs")
    try:
        libc_calls.fsconfig(ctx, libc_calls.FSCONFIG_SET_FLAG, "ro")
        libc_calls.fsconfig(ctx, libc_calls.FSCONFIG_CMD_CREATE)
        return libc_calls.fsmount(ctx, libc_calls.MOUNT_ATTR_RDONLY | libc_calls.MOUNT_ATTR_NOSUID
                                  | libc_calls.MOUNT_ATTR_NODEV | libc_calls.MOUNT_ATTR_NOEXEC)
    finally:
        os.close(ctx)


def _readonly_one(root_fd: int, path: str) -> None:
    target = _open_target(root_fd, path)
    if target is None:
        return
    try:
        clone = libc_calls.open_tree(target, "", libc_calls.OPEN_TREE_CLONE | libc_calls.AT_EMPTY_PATH
                                     | libc_calls.AT_RECURSIVE | os.O_CLOEXEC)
        try:
            libc_calls.mount_setattr(clone, libc_calls.MOUNT_ATTR_RDONLY, recursive=True)
            libc_calls.move_mount(clone, target)
        finally:
            os.close(clone)
    except OSError as e:
        raise MaskError(e.errno, f"making {path} read-only: {e.strerror}") from None
    finally:
        os.close(target)


def mask_paths(root: str | int, masked: Sequence[str], readonly: Sequence[str]) -> None:
    """Apply read-only paths, then masked paths (runc's order), below `root` (a path or a dir fd)."""
    root_fd = root if isinstance(root, int) else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in readonly:
            _readonly_one(root_fd, path)
        if not masked:
            return
        null_fd = open_dev_null(root_fd)
        try:
            for path in masked:
                _mask_one(root_fd, null_fd, path)
        finally:
            os.close(null_fd)
    finally:
        if not isinstance(root, int):
            os.close(root_fd)
