"""Linux capabilities: names, the CRI add/drop rules, and applying sets to a process.

Two halves:
- pure logic the daemon (spec builder) and the parent use: `oci_capabilities`
  turns a CRI capability request into the OCI `process.capabilities` object,
  `CapabilitySets.from_oci` validates that object into bit masks;
- syscalls the container init calls in the child (`drop_bounding`,
  `set_keepcaps`, `set_process_caps`, `raise_ambient`, `set_no_new_privs`).

Rules (containerd's, plus the fixes for CVE-2022-29162): the default set is
containerd's 14; "ALL" in add gives every capability the kernel knows, "ALL"
in drop removes every one, then the individual adds and drops apply;
privileged gets all of them and ignores add/drop; inheritable and ambient are
empty unless ambient capabilities were asked for; a non-root user ends with
no effective or permitted capabilities except the ambient ones (the kernel
would drop them at execve anyway; we make the spec say what happens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.base import InvalidSpec
from runtime.linux import libc_calls

log = logging.getLogger(__name__)

# Every capability Linux 6.x defines, by number (include/uapi/linux/capability.h).
CAPABILITY_NUMBERS: Mapping[str, int] = MappingProxyType({
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
})
CAPABILITY_NAMES: Mapping[int, str] = MappingProxyType({v: k for k, v in CAPABILITY_NUMBERS.items()})

# containerd's default set (pkg/oci/spec.go), the same 14 kubelet's docs list.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

OCI_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")


def cap_last_cap(path: Path = CAP_LAST_CAP_FILE) -> int:
    """The highest capability number this kernel knows."""
    return int(path.read_text().strip())


def known_capabilities(last_cap: int | None = None) -> tuple[str, ...]:
    """Names of every capability of this kernel, in number order ("ALL")."""
    top = cap_last_cap() if last_cap is None else last_cap
    return tuple(CAPABILITY_NAMES[n] for n in sorted(CAPABILITY_NAMES) if n <= top)


def available_capabilities(last_cap: int | None = None, status: Path = Path("/proc/self/status")) -> tuple[str, ...]:
    """What "ALL" means here: capabilities this kernel knows that this process holds (permitted and bounding).

    A child can never gain a capability its parent lacks (containerd also
    takes "ALL" from its own current set). On the project machine that
    excludes CAP_SYS_RESOURCE.
    """
    fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
    held = int(fields["CapPrm"], 16) & int(fields["CapBnd"], 16)
    return tuple(name for name in known_capabilities(last_cap) if held >> CAPABILITY_NUMBERS[name] & 1)


def normalize(name: str, field_name: str) -> str:
    """"net_raw", "NET_RAW" or "CAP_NET_RAW" -> "CAP_NET_RAW"; an unknown name is an error naming the field."""
    if not isinstance(name, str) or not name:
        raise InvalidSpec(field_name, f"capability name must be a non-empty string, got {name!r}")
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in CAPABILITY_NUMBERS:
        raise InvalidSpec(field_name, f"unknown capability {name!r}")
    return full


@dataclass(frozen=True)
class CapabilityRequest:
    """The CRI `Capability` message of a container's security context."""

    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_ambient: tuple[str, ...] = ()


def _is_all(name: str) -> bool:
    return name.strip().upper() in ("ALL", "CAP_ALL")


def _ordered(names: Iterable[str], all_caps: tuple[str, ...]) -> list[str]:
    wanted = set(names)
    return [c for c in all_caps if c in wanted]


def oci_capabilities(request: CapabilityRequest | None, *, privileged: bool, uid: int,
                     available: tuple[str, ...] | None = None,
                     field_prefix: str = "linux.security_context.capabilities") -> dict[str, list[str]]:
    """The OCI `process.capabilities` object for a container.

    `uid` is the container's resolved user id (0 = root); `available` is what
    "ALL" and privileged mean (default: `available_capabilities()`).
    """
    all_caps = available_capabilities() if available is None else available
    req = request or CapabilityRequest()
    ambient = [normalize(c, f"{field_prefix}.add_ambient_capabilities") for c in req.add_ambient]
    if privileged:
        bounding = list(all_caps)
    else:
        bounding = _apply_add_drop(req, all_caps, field_prefix)
    ambient = _ordered(ambient, all_caps)
    missing = [c for c in ambient if c not in bounding]
    if missing:
        raise InvalidSpec(f"{field_prefix}.add_ambient_capabilities",
                          f"{', '.join(missing)} not in the container's capability set; "
                          "add them with add_capabilities too")
    granted = bounding if uid == 0 else ambient
    return {"bounding": bounding, "effective": list(granted), "permitted": list(granted),
            "inheritable": list(ambient), "ambient": list(ambient)}


def _apply_add_drop(req: CapabilityRequest, all_caps: tuple[str, ...], field_prefix: str) -> list[str]:
    # containerd's order: "ALL" in add, then "ALL" in drop, then the named adds, then the named drops.
    current = set(DEFAULT_CAPABILITIES)
    if any(_is_all(c) for c in req.add):
        current = set(all_caps)
    if any(_is_all(c) for c in req.drop):
        current = set()
    current |= {normalize(c, f"{field_prefix}.add_capabilities") for c in req.add if not _is_all(c)}
    current -= {normalize(c, f"{field_prefix}.drop_capabilities") for c in req.drop if not _is_all(c)}
    unavailable = sorted(current - set(all_caps))
    if unavailable:
        # The kernel would refuse them at start (capset: EPERM); say so at create time instead.
        raise InvalidSpec(f"{field_prefix}.add_capabilities",
                          f"{', '.join(unavailable)} not available on this host "
                          "(unknown to the kernel or not held by the runtime)")
    return _ordered(current, all_caps)


def mask(names: Iterable[str]) -> int:
    out = 0
    for name in names:
        out |= 1 << CAPABILITY_NUMBERS[name]
    return out


def names_of(bits: int) -> list[str]:
    return [CAPABILITY_NAMES[n] for n in sorted(CAPABILITY_NAMES) if bits >> n & 1]


@dataclass(frozen=True)
class CapabilitySets:
    """The five sets as bit masks, ready for the child (no name lookups after fork)."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int
    last_cap: int = field(default=40)

    @classmethod
    def from_oci(cls, caps: Mapping[str, Any] | None, last_cap: int | None = None,
                 field_prefix: str = "process.capabilities") -> CapabilitySets:
        """Validate an OCI `process.capabilities` object. None means no capabilities at all."""
        top = cap_last_cap() if last_cap is None else last_cap
        if caps is None:
            return cls(0, 0, 0, 0, 0, top)
        if not isinstance(caps, Mapping):
            raise InvalidSpec(field_prefix, "must be an object")
        unknown_keys = set(caps) - set(OCI_SETS)
        if unknown_keys:
            raise InvalidSpec(field_prefix, f"unknown capability set(s) {sorted(unknown_keys)}")
        masks = {name: _set_mask(caps.get(name), top, f"{field_prefix}.{name}") for name in OCI_SETS}
        sets = cls(last_cap=top, **masks)
        sets.check_consistent(field_prefix)
        return sets

    def check_consistent(self, field_prefix: str) -> None:
        # The kernel would refuse these at capset/prctl time in the child; say so at create time instead.
        if self.effective & ~self.permitted:
            raise InvalidSpec(f"{field_prefix}.effective",
                              f"{names_of(self.effective & ~self.permitted)} not in permitted")
        if self.ambient & ~(self.permitted & self.inheritable):
            raise InvalidSpec(f"{field_prefix}.ambient",
                              f"{names_of(self.ambient & ~(self.permitted & self.inheritable))} "
                              "must be in both permitted and inheritable")

    def to_oci(self) -> dict[str, list[str]]:
        return {name: names_of(getattr(self, name)) for name in OCI_SETS}


def _set_mask(names: Any, last_cap: int, field_name: str) -> int:
    if names is None:
        return 0
    if not isinstance(names, list):
        raise InvalidSpec(field_name, "must be a list of capability names")
    bits = 0
    for name in names:
        if not isinstance(name, str) or name not in CAPABILITY_NUMBERS:
            raise InvalidSpec(field_name, f"unknown capability {name!r}")
        number = CAPABILITY_NUMBERS[name]
        if number > last_cap:
            log.warning("%s: %s is not supported by this kernel; skipped", field_name, name)
            continue
        bits |= 1 << number
    return bits


# ---------------------------------------------------------------- child-side syscalls


def drop_bounding(keep: int, last_cap: int) -> None:
    """Remove every capability not in `keep` from the bounding set (needs CAP_SETPCAP)."""
    for number in range(last_cap + 1):
        if not keep >> number & 1:
            libc_calls.prctl(libc_calls.PR_CAPBSET_DROP, number)


def set_keepcaps(on: bool) -> None:
    """Keep permitted capabilities across a setuid away from root (PR_SET_KEEPCAPS)."""
    libc_calls.prctl(libc_calls.PR_SET_KEEPCAPS, 1 if on else 0)


def set_process_caps(effective: int, permitted: int, inheritable: int) -> None:
    libc_calls.capset(effective, permitted, inheritable)


def raise_ambient(ambient: int, last_cap: int) -> None:
    libc_calls.prctl(libc_calls.PR_CAP_AMBIENT, libc_calls.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in range(last_cap + 1):
        if ambient >> number & 1:
            libc_calls.prctl(libc_calls.PR_CAP_AMBIENT, libc_calls.PR_CAP_AMBIENT_RAISE, number)


def set_no_new_privs() -> None:
    libc_calls.prctl(libc_calls.PR_SET_NO_NEW_PRIVS, 1)


def bounding_set(last_cap: int | None = None) -> int:
    """The calling thread's bounding set as a mask (PR_CAPBSET_READ for each capability)."""
    top = cap_last_cap() if last_cap is None else last_cap
    return sum(1 << n for n in range(top + 1) if libc_calls.prctl(libc_calls.PR_CAPBSET_READ, n) == 1)
