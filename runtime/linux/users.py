"""Resolve a container's user, group and supplementary groups inside its image.

The CRI gives run_as_user / run_as_username / run_as_group, supplemental
groups with a policy, and the image config gives a USER string ("1002",
"www-data", "1003:1004", "www-data:1004", "www-data:staff"). The answer comes
from the image's own /etc/passwd and /etc/group, read

- relative to directory fds, one component at a time without following any
  symlink the kernel would follow for us: image symlinks are resolved by this
  code, always inside the image (an absolute target restarts at the image
  root, ".." stops at it) — so /etc/passwd -> /host/etc/shadow cannot escape;
- through the image's layer stack when no merged rootfs exists yet (topmost
  layer wins; overlay whiteouts and opaque directories are honoured);
- only if it is a regular file, and at most `MAX_USER_FILE_BYTES` of it
  (containerd's cap; a larger file is an error, never silently truncated).

Every id must be within 0..2^32-2: (uid_t)-1 means "unchanged" to the kernel
and larger values used to wrap around to root (CVE-2024-40635).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runtime.base import InvalidSpec

MAX_ID = 2**32 - 2
MAX_USER_FILE_BYTES = 10 << 20
MAX_SYMLINK_HOPS = 40
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class GroupsPolicy(enum.Enum):
    """CRI SupplementalGroupsPolicy: Merge (image memberships + requested) or Strict (requested only)."""

    MERGE = "Merge"
    STRICT = "Strict"


@dataclass(frozen=True)
class UserRequest:
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    policy: GroupsPolicy = GroupsPolicy.MERGE
    image_user: str = ""


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]  # the primary gid first, as containerd sets it
    username: str                     # "" when the uid has no /etc/passwd entry
    home: str                         # "/" when unknown

    def to_oci(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "additionalGids": list(self.additional_gids)}


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def check_id(value: Any, field_name: str) -> int:
    """An id within 0..2^32-2, else an error naming the field."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSpec(field_name, f"must be an integer, got {value!r}")
    if not 0 <= value <= MAX_ID:
        raise InvalidSpec(field_name, f"{value} is outside 0..{MAX_ID}")
    return value


def _numeric(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_image_user(user: str, field_name: str = "image.config.User") -> tuple[str, str]:
    """Split an image USER string into (user, group); either may be numeric or a name."""
    if any(c in user for c in "\n\r\0") or user.count(":") > 1:
        raise InvalidSpec(field_name, f"malformed user {user!r} (want user[:group])")
    name, _, group = user.partition(":")
    if ":" in user and (not name or not group):
        raise InvalidSpec(field_name, f"malformed user {user!r} (want user[:group])")
    return name, group


# ---------------------------------------------------------------- finding files in the image


@contextmanager
def _open_dirs(layers: Sequence[str]) -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        for layer in reversed(layers):  # topmost layer first
            fds.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _is_opaque(fd: int) -> bool:
    try:
        os.stat(OPAQUE_MARKER, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        pass
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(fd, name) == b"y":
                return True
        except OSError:
            continue
    return False


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lookup(dirs: list[int], name: str) -> tuple[str, int, str]:
    """Find `name` in the merged view of `dirs` (top first): ("missing"|"dir"|"link"|"file"|"other", fd, target)."""
    for fd in dirs:
        try:
            os.stat(WHITEOUT_PREFIX + name, dir_fd=fd, follow_symlinks=False)
            return "missing", -1, ""
        except FileNotFoundError:
            pass
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if _is_opaque(fd):
                return "missing", -1, ""
            continue
        if _whiteout(st):
            return "missing", -1, ""
        if stat.S_ISLNK(st.st_mode):
            return "link", fd, os.readlink(name, dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            return "dir", fd, ""
        if stat.S_ISREG(st.st_mode):
            return "file", fd, ""
        return "other", fd, ""
    return "missing", -1, ""


def _descend(dirs: list[int], name: str) -> list[int]:
    """Open `name` in every layer that contributes to the merged directory (stops at an opaque one or a non-dir)."""
    out: list[int] = []
    try:
        for fd in dirs:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if _is_opaque(fd) or _has_whiteout(fd, name):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            out.append(sub)
            if _is_opaque(sub):
                break
    except BaseException:
        for fd in out:
            os.close(fd)
        raise
    return out


def _has_whiteout(fd: int, name: str) -> bool:
    try:
        os.stat(WHITEOUT_PREFIX + name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def open_in_image(layers: Sequence[str], path: str) -> int | None:
    """Open regular file `path` of the image (layers lowest first, or one rootfs dir) read-only.

    Symlinks are resolved by hand inside the image; returns None if the file
    does not exist; raises OSError(EINVAL) if it exists but is not a regular
    file, OSError(ELOOP) on too many symlinks.
    """
    with _open_dirs(layers) as roots:
        return _walk(roots, _components(path))


def _walk(roots: list[int], todo: list[str]) -> int | None:
    stack: list[list[int]] = []  # directory fds of each level below the root
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            here = stack[-1] if stack else roots
            if name == "..":
                if stack:
                    _close_all(stack.pop())
                continue
            kind, fd, target = _lookup(here, name)
            if kind == "missing":
                return None
            if kind == "link":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "too many symlinks")
                if target.startswith("/"):
                    while stack:
                        _close_all(stack.pop())
                todo[:0] = _components(target)
            elif kind == "dir":
                stack.append(_descend(here, name))
            elif todo:
                return None  # a file used as a directory: ENOTDIR, treated as absent
            elif kind == "file":
                return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                               dir_fd=fd)
            else:
                raise OSError(errno.EINVAL, "not a regular file")
        return None  # the path named a directory
    finally:
        for level in stack:
            _close_all(level)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def read_image_file(layers: Sequence[str], path: str, field_name: str,
                    limit: int = MAX_USER_FILE_BYTES) -> str | None:
    """The text of a small image file, or None if it does not exist; capped at `limit` bytes."""
    try:
        fd = open_in_image(layers, path)
    except OSError as e:
        raise InvalidSpec(field_name, f"cannot read {path} in the image: {e.strerror or e}") from e
    if fd is None:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # re-checked on the open file itself
            raise InvalidSpec(field_name, f"{path} in the image is not a regular file")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise InvalidSpec(field_name, f"{path} in the image exceeds {limit} bytes")
    return b"".join(chunks).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- parsing


def parse_passwd(text: str) -> list[PasswdEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or line.startswith("#"):
            continue
        uid, gid = _numeric(parts[2]), _numeric(parts[3])
        if uid is None or gid is None or uid > MAX_ID or gid > MAX_ID:
            continue  # a malformed entry can never match, rather than wrap around
        out.append(PasswdEntry(parts[0], uid, gid, parts[5] or "/"))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        gid = _numeric(parts[2])
        if gid is None or gid > MAX_ID:
            continue
        members = tuple(m.strip() for m in parts[3].split(",") if m.strip())
        out.append(GroupEntry(parts[0], gid, members))
    return out


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class _ImageDb:
    layers: tuple[str, ...]
    field_prefix: str

    def passwd(self) -> list[PasswdEntry]:
        text = read_image_file(self.layers, "/etc/passwd", f"{self.field_prefix} (/etc/passwd)")
        return parse_passwd(text) if text is not None else []

    def group(self) -> list[GroupEntry]:
        text = read_image_file(self.layers, "/etc/group", f"{self.field_prefix} (/etc/group)")
        return parse_group(text) if text is not None else []


def resolve_user(root: str | Sequence[str], request: UserRequest,
                 field_prefix: str = "linux.security_context") -> ResolvedUser:
    """Resolve `request` against the image at `root` (a rootfs dir, or layer dirs lowest first)."""
    layers = (root,) if isinstance(root, str) else tuple(root)
    db = _ImageDb(layers, field_prefix)
    user_part, group_part, user_field, group_field = _pick_parts(request, field_prefix)
    uid, gid, username, home = _resolve_user_part(db, user_part, user_field)
    if group_part != "":
        gid = _resolve_group_part(db, group_part, group_field)
    requested = tuple(check_id(g, f"{field_prefix}.supplemental_groups") for g in request.supplemental_groups)
    image_groups: tuple[int, ...] = ()
    if request.policy is GroupsPolicy.MERGE and username:
        # containerd's rule: groups listing the user as a member, except the one named after the user.
        image_groups = tuple(g.gid for g in db.group() if username in g.members and g.name != username)
    additional = tuple(dict.fromkeys((gid, *requested, *image_groups)))
    return ResolvedUser(uid, gid, additional, username, home)


def _pick_parts(request: UserRequest, prefix: str) -> tuple[str, str, str, str]:
    if request.run_as_group is not None and request.run_as_user is None and not request.run_as_username:
        raise InvalidSpec(f"{prefix}.run_as_group", "run_as_group requires run_as_user or run_as_username")
    group = "" if request.run_as_group is None else str(check_id(request.run_as_group, f"{prefix}.run_as_group"))
    if request.run_as_user is not None:
        return str(check_id(request.run_as_user, f"{prefix}.run_as_user")), group, \
            f"{prefix}.run_as_user", f"{prefix}.run_as_group"
    if request.run_as_username:
        name = request.run_as_username
        if _numeric(name) is None and any(c in name for c in ":\n\r\0/"):
            raise InvalidSpec(f"{prefix}.run_as_username", f"invalid user name {name!r}")
        return name, group, f"{prefix}.run_as_username", f"{prefix}.run_as_group"
    user, image_group = parse_image_user(request.image_user)
    return user, image_group, "image.config.User", "image.config.User"


def _resolve_user_part(db: _ImageDb, user: str, field_name: str) -> tuple[int, int, str, str]:
    if user == "":
        user = "0"
    number = _numeric(user)
    entries = db.passwd()
    if number is not None:
        uid = check_id(number, field_name)
        found = next((e for e in entries if e.uid == uid), None)
        if found is None:
            return uid, 0, "", "/"
        return uid, found.gid, found.name, found.home
    found = next((e for e in entries if e.name == user), None)
    if found is None:
        raise InvalidSpec(field_name, f"user {user!r} not found in the image's /etc/passwd")
    return found.uid, found.gid, found.name, found.home


def _resolve_group_part(db: _ImageDb, group: str, field_name: str) -> int:
    number = _numeric(group)
    if number is not None:
        return check_id(number, field_name)
    found = next((g for g in db.group() if g.name == group), None)
    if found is None:
        raise InvalidSpec(field_name, f"group {group!r} not found in the image's /etc/group")
    return found.gid


def check_oci_user(user: Any, field_name: str = "process.user") -> tuple[int, int, tuple[int, ...]]:
    """Validate an OCI `process.user` object: (uid, gid, additionalGids), every id in range."""
    if not isinstance(user, dict):
        raise InvalidSpec(field_name, "must be an object")
    uid = check_id(user.get("uid", 0), f"{field_name}.uid")
    gid = check_id(user.get("gid", 0), f"{field_name}.gid")
    extra = user.get("additionalGids") or []
    if not isinstance(extra, list):
        raise InvalidSpec(f"{field_name}.additionalGids", "must be a list")
    if len(extra) > 65536:  # NGROUPS_MAX
        raise InvalidSpec(f"{field_name}.additionalGids", "more than 65536 groups")
    groups = tuple(check_id(g, f"{field_name}.additionalGids") for g in extra)
    return uid, gid, groups
