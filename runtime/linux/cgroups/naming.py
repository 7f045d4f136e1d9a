"""Where a cgroup lives: cgroupfs paths and systemd slice/scope names.

Kubelet hands the runtime a pod's cgroup parent in the form of its cgroup driver:
- cgroupfs: an absolute path, e.g. "/kubepods/burstable/pod1234-5678";
- systemd: the pod's slice, e.g. "kubepods-burstable-pod1234_5678.slice", either bare
  or expanded ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice").
  containerd and runc also use the "slice:prefix:name" form for a container's cgroupsPath.

`cgroup_path()` turns parent + name into the path below each hierarchy's mount point,
which is what `Hierarchy.cgroup()` takes. A parent in the other driver's form is the
classic driver-mismatch misconfiguration (containerd#4857): the error says so.
"""

from __future__ import annotations

import enum
import re

from runtime.linux.cgroups.errors import CgroupInvalid

PARENT_FIELD = "cgroup_parent"
PATH_FIELD = "linux.cgroupsPath"
# The prefix of the scopes we create, as "cri-containerd" is containerd's and "crio" CRI-O's.
SCOPE_PREFIX = "cri-shim"
# runc's default slice when a systemd cgroupsPath gives none.
DEFAULT_SLICE = "system.slice"
SLICE_SUFFIX = ".slice"
# Characters systemd accepts in a unit name (unit_name_is_valid); "\" escapes are not produced by us.
_UNIT_CHARS = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
_MAX_UNIT_NAME = 255


class Driver(enum.Enum):
    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


def default_driver() -> Driver:
    """systemd when it is PID 1 (then kubelet expects it), else cgroupfs."""
    from runtime.linux.host import systemd_pid1
    return Driver.SYSTEMD if systemd_pid1() else Driver.CGROUPFS


def driver_from(value: Driver | str) -> Driver:
    if isinstance(value, Driver):
        return value
    try:
        return Driver(value)
    except ValueError:
        raise CgroupInvalid("cgroup_driver", f"{value!r} is not a cgroup driver (use 'cgroupfs' or 'systemd')") \
            from None


def cgroup_path(driver: Driver | str, parent: str, name: str) -> str:
    """The cgroup path (below each hierarchy's mount point) of `name` under `parent`."""
    if driver_from(driver) is Driver.SYSTEMD:
        return systemd_path(parent, name)
    return cgroupfs_path(parent, name)


# ---------------------------------------------------------------- cgroupfs


def cgroupfs_path(parent: str, name: str) -> str:
    if parent.endswith(SLICE_SUFFIX) and not parent.startswith("/") or ":" in parent:
        raise CgroupInvalid(PARENT_FIELD, f"{parent!r} is a systemd slice, but the cgroup driver is cgroupfs; "
                            "set cgroup_driver = \"systemd\" or configure kubelet with cgroupDriver: cgroupfs")
    check_cgroup_path(parent, PARENT_FIELD, allow_root=True)
    _check_name(name)
    return parent.rstrip("/") + "/" + name


def check_cgroup_path(path: str, field_name: str = PATH_FIELD, *, allow_root: bool = False) -> str:
    """`path` if it is a clean absolute cgroup path; a clear error otherwise."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise CgroupInvalid(field_name, f"{path!r} must be an absolute cgroup path (like /kubepods/pod<uid>)")
    if "\0" in path or "\n" in path:
        raise CgroupInvalid(field_name, f"{path!r} contains a NUL or newline")
    parts = path.strip("/").split("/") if path.strip("/") else []
    if any(p in ("", ".", "..") for p in parts):
        raise CgroupInvalid(field_name, f"{path!r} must not contain empty, '.' or '..' components")
    if not parts and not allow_root:
        raise CgroupInvalid(field_name, "the root cgroup cannot be used; name a cgroup below it")
    return path


def _check_name(name: str, field_name: str = "name") -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name or "\n" in name:
        raise CgroupInvalid(field_name, f"{name!r} is not a valid cgroup name (non-empty, no '/')")


# ---------------------------------------------------------------- systemd


def systemd_path(parent: str, name: str) -> str:
    """The cgroup path of scope `<SCOPE_PREFIX>-<name>.scope` in slice `parent`, as runc's systemd driver makes it.

    `parent` is a slice name, an expanded slice path (kubelet's form; only its last
    component counts, as containerd's getCgroupsPath does) or "slice:prefix:name".
    """
    if ":" in parent:
        slice_name, prefix, unit = _split_triple(parent)
        if name and name != unit:
            raise CgroupInvalid(PARENT_FIELD, f"{parent!r} already names the unit {unit!r}, not {name!r}")
        name = unit
    else:
        slice_name, prefix = _slice_of(parent), SCOPE_PREFIX
    _check_name(name)
    unit_name = name if name.endswith(SLICE_SUFFIX) else f"{prefix}-{name}.scope"
    _check_unit_name(unit_name)
    base = expand_slice(slice_name)
    return base.rstrip("/") + "/" + unit_name


def _slice_of(parent: str) -> str:
    if not parent:
        return DEFAULT_SLICE
    if parent.startswith("/"):
        last = parent.rstrip("/").rsplit("/", 1)[-1]
        if not last.endswith(SLICE_SUFFIX):
            raise CgroupInvalid(PARENT_FIELD, f"{parent!r} is a cgroupfs path, but the cgroup driver is systemd; "
                                "set cgroup_driver = \"cgroupfs\" or configure kubelet with cgroupDriver: systemd")
        # An expanded path must be exactly what its last slice expands to, or it names something else.
        if parent.rstrip("/") != expand_slice(last):
            raise CgroupInvalid(PARENT_FIELD, f"{parent!r} is not the expansion of {last!r} "
                                f"(expected {expand_slice(last)!r})")
        return last
    return parent


def _split_triple(value: str) -> tuple[str, str, str]:
    parts = value.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise CgroupInvalid(PARENT_FIELD, f"expected the form \"slice:prefix:name\" for systemd cgroups, got {value!r}")
    return parts[0] or DEFAULT_SLICE, parts[1], parts[2]


def expand_slice(slice_name: str) -> str:
    """"a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root (systemd's unit_name_to_path)."""
    if not slice_name.endswith(SLICE_SUFFIX) or len(slice_name) <= len(SLICE_SUFFIX) or "/" in slice_name:
        raise CgroupInvalid(PARENT_FIELD, f"{slice_name!r} is not a systemd slice name (like kubepods.slice)")
    _check_unit_name(slice_name)
    stem = slice_name[: -len(SLICE_SUFFIX)]
    if stem == "-":
        return "/"
    path, prefix = "", ""
    for part in stem.split("-"):
        if not part:
            raise CgroupInvalid(PARENT_FIELD, f"{slice_name!r}: a slice name has no empty '-' components")
        path += f"/{prefix}{part}{SLICE_SUFFIX}"
        prefix += part + "-"
    return path


def _check_unit_name(unit: str) -> None:
    if len(unit) > _MAX_UNIT_NAME or not _UNIT_CHARS.match(unit):
        raise CgroupInvalid(PARENT_FIELD, f"{unit!r} is not a valid systemd unit name "
                            "(letters, digits, ':', '_', '.', '-'; at most 255 characters)")


def escape_systemd_component(part: str) -> str:
    """Kubelet's escaping of one cgroup name component for a slice name: '-' becomes '_'."""
    return part.replace("-", "_")


def slice_for(components: list[str]) -> str:
    """The slice kubelet names for a cgroup name, e.g. ["kubepods", "burstable", "pod12-34"] ->
    "kubepods-burstable-pod12_34.slice" (kubelet's CgroupName.ToSystemd basename)."""
    if not components:
        return "-.slice"
    return "-".join(escape_systemd_component(p) for p in components) + SLICE_SUFFIX
