"""How much of each workload a run does: the full benchmark (`make bench`) or the smoke mode (`make bench-smoke`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Profile:
    name: str
    # (1) critest -benchmark, per round and runtime (rounds alternate the runtimes)
    critest_rounds: int
    critest_containers: int
    critest_pods: int
    critest_images: int
    # (2) pod start: pods per runtime and network variant, split over rounds; warm-up pods are not counted
    podstart_pods: int
    podstart_rounds: int
    podstart_warmup: int
    # (3) density: pods running; the share of them replaced while lists are timed; list calls when quiet;
    # seconds of the idle CPU window
    density_sizes: tuple[int, ...]
    churn_fraction: float
    quiet_list_calls: int
    idle_window: float
    # (4) restart: done on the density pods of this size
    restart_pods: int
    # (5) pull: a 5-layer image of 5 x layer_mb MB, cold, per round and runtime
    pull_layer_mb: int
    pull_rounds: int


FULL = Profile("full", critest_rounds=2, critest_containers=25, critest_pods=50, critest_images=10,
               podstart_pods=200, podstart_rounds=4, podstart_warmup=5,
               density_sizes=(110, 500), churn_fraction=0.2, quiet_list_calls=300, idle_window=10.0,
               restart_pods=110, pull_layer_mb=40, pull_rounds=3)

SMOKE = Profile("smoke", critest_rounds=1, critest_containers=2, critest_pods=2, critest_images=2,
                podstart_pods=4, podstart_rounds=2, podstart_warmup=1,
                density_sizes=(5,), churn_fraction=0.4, quiet_list_calls=20, idle_window=1.0,
                restart_pods=5, pull_layer_mb=2, pull_rounds=1)

PROFILES = MappingProxyType({p.name: p for p in (FULL, SMOKE)})


def with_overrides(profile: Profile, settings: list[str]) -> Profile:
    """`field=value` settings (e.g. `density_sizes=110,500`, `podstart_pods=50`) applied to `profile`."""
    types = {f.name: f.type for f in dataclasses.fields(Profile)}
    changes: dict[str, object] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or name not in types or name == "name":
            raise ValueError(f"--set {setting!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(n for n in types if n != 'name')}")
        kind = str(types[name])
        try:
            if kind.startswith("tuple"):
                changes[name] = tuple(int(v) for v in value.split(","))
            elif kind == "float":
                changes[name] = float(value)
            else:
                changes[name] = int(value)
        except ValueError:
            raise ValueError(f"--set {setting!r}: {value!r} is not a {kind}") from None
    return dataclasses.replace(profile, **changes)  # type: ignore[arg-type]
