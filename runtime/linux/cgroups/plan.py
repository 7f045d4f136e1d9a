"""What applying resources means in files: an ordered list of writes, made before any is done."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from runtime.linux.cgroups.resources import UNLIMITED


@dataclass(frozen=True)
class Write:
    controller: str        # "memory", "cpu", ... (the hierarchy serving it is looked up at apply time)
    file: str              # e.g. "memory.limit_in_bytes"
    value: str
    field: str             # the OCI key this write comes from, for error messages
    optional: bool = False  # skip silently when the file does not exist (a feature the host may lack)
    retry_einval: bool = False  # EINVAL may be an ordering problem: try once more after the other writes


class View(Protocol):
    """Read access to the cgroup being planned for (current values decide some write orders)."""

    def has_file(self, controller: str, file: str) -> bool: ...

    def read_value(self, controller: str, file: str) -> str | None: ...


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2..262144] -> cgroup v2 cpu.weight [1..10000].

    The curve runc and crun use (opencontainers/cgroups ConvertCPUSharesToCgroupV2Value):
    a quadratic in log2(shares) through (2 -> 1), (1024 -> 100) and (262144 -> 10000),
    so the default share maps to the default weight.
    """
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    log2 = math.log2(shares)
    return int(math.ceil(10 ** ((log2 * log2 + 125 * log2) / 612.0 - 7.0 / 34.0)))


def swap_to_v2(swap: int | None, memory: int | None) -> int | None:
    """OCI memory.swap (memory+swap, the v1 meaning) -> cgroup v2 memory.swap.max (swap only).

    None means "do not write". Follows runc's ConvertMemorySwapToCgroupV2Value.
    """
    if memory == UNLIMITED and swap is None:
        return UNLIMITED   # unlimited memory with swap unset: unlimited swap too, as on v1
    if swap is None or swap == UNLIMITED or memory is None or memory == UNLIMITED:
        return swap
    return swap - memory   # resources.parse already checked swap >= memory


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight [10..1000] -> io.weight [1..10000], linearly (runc's ConvertBlkIOToIOWeightValue)."""
    return 1 + (weight - 10) * 9999 // 990


def v2_limit(value: int) -> str:
    return "max" if value == UNLIMITED else str(value)
