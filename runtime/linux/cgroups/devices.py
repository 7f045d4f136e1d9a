"""Device cgroup rules: the OCI `linux.resources.devices` list, checked and normalised.

cgroup v1 enforces them with devices.deny/devices.allow; cgroup v2 with an eBPF
program (see devicefilter.py). Either way a container starts from deny-all, then the
spec's rules apply in order, then DEFAULT_DEVICE_RULES (runc appends the same set to
every container, so the standard /dev nodes keep working whatever the spec says).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.linux.cgroups.errors import CgroupInvalid

FIELD = "linux.resources.devices"
WILDCARD = -1
_TYPES = ("a", "b", "c")
_MAX_NUMBER = (1 << 32) - 1
# Access bits as the kernel's BPF device hook reports them (include/uapi/linux/bpf.h BPF_DEVCG_ACC_*).
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
Key = tuple[str, int, int]   # (type "b"/"c", major, minor); -1 is a wildcard


@dataclass(frozen=True)
class DeviceRule:
    allow: bool
    type: str = "a"          # "a" (all), "b" (block) or "c" (char)
    major: int = WILDCARD    # -1 is the wildcard "*"
    minor: int = WILDCARD
    access: str = "rwm"      # subset of r (read), w (write), m (mknod)

    def v1_line(self) -> str:
        """The line written to devices.allow / devices.deny."""
        if self.type == "a":
            return "a"   # the kernel's "all devices"; major/minor are meaningless here
        major = "*" if self.major == WILDCARD else str(self.major)
        minor = "*" if self.minor == WILDCARD else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"

    def as_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allow": self.allow, "type": self.type, "access": self.access}
        if self.major != WILDCARD:
            out["major"] = self.major
        if self.minor != WILDCARD:
            out["minor"] = self.minor
        return out


def _char(major: int, minor: int) -> DeviceRule:
    return DeviceRule(allow=True, type="c", major=major, minor=minor, access="rwm")


# runc's specconv.AllowedDevices: mknod of anything, then the devices every container gets.
DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(allow=True, type="c", access="m"),
    DeviceRule(allow=True, type="b", access="m"),
    _char(1, 3),      # /dev/null
    _char(1, 8),      # /dev/random
    _char(1, 7),      # /dev/full
    _char(5, 0),      # /dev/tty
    _char(1, 5),      # /dev/zero
    _char(1, 9),      # /dev/urandom
    _char(136, WILDCARD),  # /dev/pts/*
    _char(5, 2),      # /dev/ptmx
    _char(10, 200),   # /dev/net/tun (runc kept it for compatibility, runc#3468)
)


def parse_rules(value: Any, field_name: str = FIELD) -> tuple[DeviceRule, ...]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise CgroupInvalid(field_name, f"expected a list of device rules, got {type(value).__name__}")
    return tuple(parse_rule(item, f"{field_name}[{i}]") for i, item in enumerate(value))


def parse_rule(item: Any, field_name: str) -> DeviceRule:
    if not isinstance(item, Mapping):
        raise CgroupInvalid(field_name, f"expected an object, got {type(item).__name__}")
    unknown = set(item) - {"allow", "type", "major", "minor", "access"}
    if unknown:
        raise CgroupInvalid(f"{field_name}.{sorted(unknown)[0]}", "unknown key")
    allow = item.get("allow")
    if not isinstance(allow, bool):
        raise CgroupInvalid(f"{field_name}.allow", f"must be true or false, got {allow!r}")
    kind = item.get("type") or "a"
    if kind not in _TYPES:
        raise CgroupInvalid(f"{field_name}.type", f"must be 'a', 'b' or 'c', got {kind!r}")
    access = item.get("access")
    access = "rwm" if access in (None, "") else access
    if not isinstance(access, str) or not set(access) <= set("rwm") or len(set(access)) != len(access):
        raise CgroupInvalid(f"{field_name}.access", f"must be made of the letters r, w, m (each once), got {access!r}")
    major = _number(item.get("major"), f"{field_name}.major")
    minor = _number(item.get("minor"), f"{field_name}.minor")
    # Normalise the access order so equal rules compare equal.
    return DeviceRule(allow=allow, type=kind, major=major, minor=minor, access="".join(c for c in "rwm" if c in access))


def _number(value: Any, field_name: str) -> int:
    if value is None:
        return WILDCARD
    if isinstance(value, bool) or not isinstance(value, int) or not WILDCARD <= value <= _MAX_NUMBER:
        raise CgroupInvalid(field_name, f"must be a device number (0..{_MAX_NUMBER}) or -1 for any, got {value!r}")
    return value


def effective_rules(spec_rules: Sequence[DeviceRule]) -> tuple[DeviceRule, ...]:
    """What a container's device cgroup enforces: deny-all, the spec's rules, then the defaults."""
    return (DeviceRule(allow=False), *spec_rules, *DEFAULT_DEVICE_RULES)


# ---------------------------------------------------------------- the kernel's v1 semantics


@dataclass
class DeviceState:
    """A device cgroup after a list of v1 writes: a default verdict plus exceptions to it.

    Mirrors security/device_cgroup.c: writing "a" to allow/deny sets the default and clears
    the exceptions; a rule with the other verdict adds its access to the exception for
    exactly that (type, major, minor); a rule with the default verdict removes it again.
    """

    default_allow: bool = True
    exceptions: dict[Key, int] = field(default_factory=dict)   # access bits

    @classmethod
    def of(cls, rules: Sequence[DeviceRule]) -> DeviceState:
        state = cls()
        for rule in rules:
            state.apply(rule)
        return state

    def apply(self, rule: DeviceRule) -> None:
        if rule.type == "a":
            self.default_allow = rule.allow
            self.exceptions.clear()
            return
        key = (rule.type, rule.major, rule.minor)
        bits = access_bits(rule.access)
        if rule.allow == self.default_allow:
            left = self.exceptions.get(key, 0) & ~bits
            if left:
                self.exceptions[key] = left
            else:
                self.exceptions.pop(key, None)
        else:
            self.exceptions[key] = self.exceptions.get(key, 0) | bits

    def allows(self, kind: str, major: int, minor: int, access: int) -> bool:
        """The kernel's verdict for one request (the reference the program is tested against)."""
        for (t, ma, mi), bits in self.exceptions.items():
            if t != kind or ma not in (WILDCARD, major) or mi not in (WILDCARD, minor):
                continue
            if self.default_allow and access & bits:
                return False    # deny-list: any denied bit refuses the request
            if not self.default_allow and access & ~bits == 0:
                return True     # allow-list: one exception must grant every bit asked for
        return self.default_allow

    def v1_list(self) -> list[str]:
        """What devices.list shows for this state (allow-list mode), sorted."""
        if self.default_allow:
            return ["a *:* rwm"]
        names = "".join
        return sorted(f"{t} {'*' if ma == WILDCARD else ma}:{'*' if mi == WILDCARD else mi} "
                      f"{names(c for c in 'rwm' if bits & ACCESS_BITS[c])}"
                      for (t, ma, mi), bits in self.exceptions.items())


def access_bits(access: str) -> int:
    out = 0
    for c in access:
        out |= ACCESS_BITS[c]
    return out
