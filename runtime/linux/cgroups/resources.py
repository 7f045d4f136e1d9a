"""OCI `linux.resources` JSON checked and turned into plain typed values.

Nothing here touches the filesystem: every malformed value is rejected (naming its
key) before any cgroup file is written. "Unset" is None. Like runc, 0 means unset for
the byte/share/quota fields, and -1 means "unlimited" where the kernel has one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.linux.cgroups.devices import DeviceRule, parse_rules
from runtime.linux.cgroups.errors import CgroupInvalid, CgroupUnsupported

log = logging.getLogger(__name__)

ROOT = "linux.resources"
UNLIMITED = -1
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
# cgroup v1 cpu.shares bounds (kernel MIN_SHARES/MAX_SHARES); runc rejects what the kernel would clamp.
MIN_SHARES, MAX_SHARES = 2, 262144
# CFS bandwidth bounds in microseconds (kernel min_cfs_quota_period / max_cfs_quota_period).
MIN_CFS_US, MAX_CFS_PERIOD_US = 1000, 1_000_000
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^[1-9][0-9]*(KB|MB|GB)$")
_UNIFIED_KEY = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_]+)+$")
# Core files that move, kill or restructure processes: never settable through `unified`.
_UNIFIED_FORBIDDEN = re.compile(r"^cgroup\.(?!max\.)")

_TOP_KEYS = {"cpu", "memory", "pids", "hugepageLimits", "devices", "unified", "blockIO", "network", "rdma"}
_CPU_KEYS = {"shares", "quota", "period", "burst", "realtimeRuntime", "realtimePeriod", "cpus", "mems", "idle"}
_MEMORY_KEYS = {"limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness", "disableOOMKiller",
                "useHierarchy", "checkBeforeUpdate"}
_BLKIO_KEYS = {"weight", "leafWeight", "weightDevice", "throttleReadBpsDevice", "throttleWriteBpsDevice",
               "throttleReadIOPSDevice", "throttleWriteIOPSDevice"}
THROTTLE_KEYS = ("throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
                 "throttleWriteIOPSDevice")


@dataclass(frozen=True)
class Cpu:
    shares: int | None = None
    quota: int | None = None          # microseconds per period; -1 unlimited
    period: int | None = None         # microseconds
    burst: int | None = None          # microseconds
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@dataclass(frozen=True)
class Memory:
    limit: int | None = None          # bytes; -1 unlimited
    reservation: int | None = None    # bytes; -1 unlimited
    swap: int | None = None           # memory+swap bytes (the OCI / cgroup v1 meaning); -1 unlimited
    swappiness: int | None = None
    disable_oom_killer: bool = False


@dataclass(frozen=True)
class HugepageLimit:
    page_size: str    # "2MB", "1GB" (the kernel's hugetlb.<size>.* spelling)
    limit: int        # bytes
    index: int


@dataclass(frozen=True)
class Throttle:
    key: str          # one of THROTTLE_KEYS
    major: int
    minor: int
    rate: int
    index: int


@dataclass(frozen=True)
class BlockIO:
    weight: int | None = None
    throttles: tuple[Throttle, ...] = ()


@dataclass(frozen=True)
class Resources:
    cpu: Cpu = field(default_factory=Cpu)
    memory: Memory = field(default_factory=Memory)
    pids_limit: int | None = None
    hugepages: tuple[HugepageLimit, ...] = ()
    devices: tuple[DeviceRule, ...] | None = None   # None: leave the device cgroup as it is
    block_io: BlockIO = field(default_factory=BlockIO)
    unified: Mapping[str, str] = field(default_factory=dict)


def parse(value: Mapping[str, Any] | None) -> Resources:
    if value is None:
        return Resources()
    section = _section(value, ROOT, _TOP_KEYS)
    _reject_if_set(section, "network", "the net_cls/net_prio controllers are not supported")
    _reject_if_set(section, "rdma", "the rdma controller is not supported")
    devices = section.get("devices")
    return Resources(
        cpu=_cpu(section.get("cpu")),
        memory=_memory(section.get("memory")),
        pids_limit=_pids(section.get("pids")),
        hugepages=_hugepages(section.get("hugepageLimits")),
        devices=None if devices is None else parse_rules(devices, f"{ROOT}.devices"),
        block_io=_block_io(section.get("blockIO")),
        unified=_unified(section.get("unified")),
    )


def _section(value: Any, name: str, keys: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CgroupInvalid(name, f"expected an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in set(value) - keys)
    if unknown:
        raise CgroupInvalid(f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(keys))})")
    return value


def _reject_if_set(section: Mapping[str, Any], key: str, why: str) -> None:
    value = section.get(key)
    if value and (not isinstance(value, Mapping) or any(v not in (None, 0, [], {}) for v in value.values())):
        raise CgroupUnsupported(f"{ROOT}.{key}", why)


def _int(section: Mapping[str, Any], key: str, name: str, lo: int, hi: int,
         zero_is_unset: bool = True) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupInvalid(f"{name}.{key}", f"expected an integer, got {value!r}")
    if value == 0 and zero_is_unset:
        return None
    if not lo <= value <= hi:
        raise CgroupInvalid(f"{name}.{key}", f"{value} is out of range ({lo}..{hi})")
    return value


def _bytes_or_unlimited(section: Mapping[str, Any], key: str, name: str) -> int | None:
    return _int(section, key, name, UNLIMITED, INT64_MAX)


def _cpu(value: Any) -> Cpu:
    name = f"{ROOT}.cpu"
    s = _section(value, name, _CPU_KEYS)
    quota = _int(s, "quota", name, UNLIMITED, INT64_MAX)
    if quota is not None and quota != UNLIMITED and quota < MIN_CFS_US:
        raise CgroupInvalid(f"{name}.quota", f"{quota} is below the kernel minimum of {MIN_CFS_US} microseconds "
                            "(or use -1 for unlimited)")
    runtime = _int(s, "realtimeRuntime", name, UNLIMITED, INT64_MAX)
    return Cpu(
        shares=_int(s, "shares", name, MIN_SHARES, MAX_SHARES),
        quota=quota,
        period=_int(s, "period", name, MIN_CFS_US, MAX_CFS_PERIOD_US),
        burst=_int(s, "burst", name, 0, UINT64_MAX, zero_is_unset=False),
        realtime_runtime=runtime,
        realtime_period=_int(s, "realtimePeriod", name, 1, UINT64_MAX),
        cpus=_cpu_list(s, "cpus", name),
        mems=_cpu_list(s, "mems", name),
        idle=_int(s, "idle", name, 0, 1, zero_is_unset=False),
    )


def _cpu_list(section: Mapping[str, Any], key: str, name: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _CPU_LIST.match(value.strip()):
        raise CgroupInvalid(f"{name}.{key}", f"{value!r} is not a list like '0-3,5'")
    for part in value.strip().split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise CgroupInvalid(f"{name}.{key}", f"{value!r}: range {part} runs backwards")
    return value.strip()


def _memory(value: Any) -> Memory:
    name = f"{ROOT}.memory"
    s = _section(value, name, _MEMORY_KEYS)
    for deprecated in ("kernel", "kernelTCP"):
        if s.get(deprecated):
            # Kernel memory limits are gone from cgroup v2 and deprecated in v1; runc ignores them too.
            log.info("%s.%s is deprecated and ignored", name, deprecated)
    limit = _bytes_or_unlimited(s, "limit", name)
    swap = _bytes_or_unlimited(s, "swap", name)
    if limit is not None and limit > 0 and swap is not None and swap != UNLIMITED and swap < limit:
        raise CgroupInvalid(f"{name}.swap", f"{swap} is memory+swap and must be >= memory.limit ({limit}), "
                            "or -1 for unlimited swap")
    swappiness = s.get("swappiness")
    if swappiness is not None:
        if isinstance(swappiness, bool) or not isinstance(swappiness, int):
            raise CgroupInvalid(f"{name}.swappiness", f"expected an integer, got {swappiness!r}")
        # -1 (and its uint64 spelling, as Docker passes it) means "leave the kernel default".
        if swappiness in (-1, UINT64_MAX):
            swappiness = None
        elif not 0 <= swappiness <= 100:
            raise CgroupInvalid(f"{name}.swappiness", f"{swappiness} is out of range (0..100)")
    disable = s.get("disableOOMKiller")
    if disable is not None and not isinstance(disable, bool):
        raise CgroupInvalid(f"{name}.disableOOMKiller", f"must be true or false, got {disable!r}")
    return Memory(limit=limit, reservation=_bytes_or_unlimited(s, "reservation", name), swap=swap,
                  swappiness=swappiness, disable_oom_killer=bool(disable))


def _pids(value: Any) -> int | None:
    name = f"{ROOT}.pids"
    s = _section(value, name, {"limit"})
    limit = s.get("limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit > INT64_MAX:
        raise CgroupInvalid(f"{name}.limit", f"expected an integer, got {limit!r}")
    return limit


def _hugepages(value: Any) -> tuple[HugepageLimit, ...]:
    name = f"{ROOT}.hugepageLimits"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CgroupInvalid(name, f"expected a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        s = _section(item, f"{name}[{i}]", {"pageSize", "limit"})
        size = s.get("pageSize")
        if not isinstance(size, str) or not _PAGE_SIZE.match(size):
            raise CgroupInvalid(f"{name}[{i}].pageSize", f"{size!r} is not a page size like '2MB' or '1GB'")
        limit = s.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= UINT64_MAX:
            raise CgroupInvalid(f"{name}[{i}].limit", f"expected a number of bytes, got {limit!r}")
        out.append(HugepageLimit(page_size=size, limit=limit, index=i))
    return tuple(out)


def _block_io(value: Any) -> BlockIO:
    name = f"{ROOT}.blockIO"
    s = _section(value, name, _BLKIO_KEYS)
    if s.get("leafWeight"):
        raise CgroupUnsupported(f"{name}.leafWeight", "leaf weights went away with the CFQ I/O scheduler")
    if s.get("weightDevice"):
        raise CgroupUnsupported(f"{name}.weightDevice", "per-device weights are not supported")
    throttles: list[Throttle] = []
    for key in THROTTLE_KEYS:
        items = s.get(key) or []
        if not isinstance(items, list):
            raise CgroupInvalid(f"{name}.{key}", f"expected a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            where = f"{name}.{key}[{i}]"
            t = _section(item, where, {"major", "minor", "rate"})
            numbers = [_uint(t.get(k), f"{where}.{k}") for k in ("major", "minor", "rate")]
            throttles.append(Throttle(key=key, major=numbers[0], minor=numbers[1], rate=numbers[2], index=i))
    return BlockIO(weight=_int(s, "weight", name, 10, 1000), throttles=tuple(throttles))


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise CgroupInvalid(where, f"expected a non-negative integer, got {value!r}")
    return value


def _unified(value: Any) -> Mapping[str, str]:
    name = f"{ROOT}.unified"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CgroupInvalid(name, f"expected an object of file name -> value, got {type(value).__name__}")
    out: dict[str, str] = {}
    for key, v in value.items():
        where = f"{name}[{key}]"
        if not isinstance(key, str) or not _UNIFIED_KEY.match(key):
            raise CgroupInvalid(where, "not a cgroup v2 interface file name (like memory.high)")
        if _UNIFIED_FORBIDDEN.match(key):
            raise CgroupInvalid(where, "cgroup.* core files (other than cgroup.max.*) cannot be set through unified")
        if not isinstance(v, str) or "\0" in v:
            raise CgroupInvalid(where, f"the value must be a string, got {v!r}")
        out[key] = v
    return out
