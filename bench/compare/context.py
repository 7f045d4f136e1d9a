"""What every workload gets: the started runtimes, the profile, a scratch dir; and the A B A B loop."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .profile import Profile
from .stats import RUNTIMES, WorkloadResult
from .targets import Target, Unavailable

log = logging.getLogger("bench")


@dataclass
class Context:
    targets: dict[str, Target]
    profile: Profile
    work: Path                      # scratch dir under CRI_SHIM_TEST_TMP
    registry_host: str
    critest: Path
    available: dict[str, str] = field(default_factory=dict)   # runtime -> "ok" | "could not run: …"

    def new_result(self, key: str, title: str) -> WorkloadResult:
        return WorkloadResult(key, title, status={r: self.available.get(r, "could not run: not started")
                                                  for r in RUNTIMES})


def describe_error(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


def attempt(result: WorkloadResult, runtime: str, fn: Callable[[], None]) -> bool:
    """Run one step for one runtime, turning an error into that runtime's status; False if it did not succeed.
    A runtime that already failed or could not run is skipped."""
    if result.status.get(runtime) != "ok":
        return False
    try:
        fn()
        return True
    except Unavailable as e:
        result.status[runtime] = f"could not run: {e}"
    except Exception as e:
        log.error("%s on %s failed:\n%s", result.key, runtime, traceback.format_exc())
        result.status[runtime] = f"failed: {describe_error(e)}"
    return False


def interleave(ctx: Context, result: WorkloadResult, rounds: int, step: Callable[[Target, int], None]) -> None:
    """Rounds of A B A B: each round runs `step` on cri-shim then containerd, so slow drift of the machine
    (other work, page cache, thermal) reaches both alike."""
    for r in range(rounds):
        for runtime in RUNTIMES:
            attempt(result, runtime, lambda: step(ctx.targets[runtime], r))
