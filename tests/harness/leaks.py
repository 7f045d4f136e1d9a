"""What a runtime can leak, snapshotted before and after a test run.

The integration suite compares a snapshot taken at session start with one at
the end; anything new (a mount, a netns, a cgroup, a network link, a cri-shim
process, a test directory) fails the run with the list of leftovers.

Scope: every daemon a test starts keeps its files under the test base
directory (CRI_SHIM_TEST_TMP), so mounts and processes are matched by that
path, which lets several suites run side by side on one machine. Cgroups are
matched by the test base's name in their path (tests put the cgroups they make
under a parent named after it, see `cgroup_tag`); netns and links are host-wide.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))


@dataclass(frozen=True)
class Snapshot:
    mounts: frozenset[str]
    netns: frozenset[str]
    cgroups: frozenset[str]
    links: frozenset[str]
    processes: frozenset[str]
    test_dirs: frozenset[str]

    def new_since(self, before: Snapshot) -> dict[str, list[str]]:
        out = {}
        for f in fields(self):
            added = sorted(getattr(self, f.name) - getattr(before, f.name))
            if added:
                out[f.name] = added
        return out


def _mounts(base: Path) -> frozenset[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return frozenset(p for p in (line.split()[4] for line in lines) if p.startswith(str(base)))


def _netns() -> frozenset[str]:
    out = set()
    for d in NETNS_DIRS:
        if d.is_dir():
            out.update(str(d / name) for name in os.listdir(d))
    return frozenset(out)


def cgroup_tag(base: Path) -> str:
    """The string every cgroup made by this test run must contain."""
    return base.name


def _cgroups(tag: str) -> frozenset[str]:
    out = set()
    if not CGROUP_ROOT.is_dir():
        return frozenset()
    for top in CGROUP_ROOT.iterdir():
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, _files in os.walk(top):
            if tag in dirpath[len(str(top)):]:
                out.add(dirpath)
    return frozenset(out)


def _links() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


def _processes(base: Path) -> frozenset[str]:
    me = os.getpid()
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmdline:
            out.add(f"{pid}: {cmdline.strip()[:200]}")
    return frozenset(out)


def _test_dirs(base: Path) -> frozenset[str]:
    return frozenset(str(base / n) for n in os.listdir(base)) if base.is_dir() else frozenset()


def snapshot(test_base: Path) -> Snapshot:
    return Snapshot(mounts=_mounts(test_base), netns=_netns(), cgroups=_cgroups(cgroup_tag(test_base)), links=_links(),
                    processes=_processes(test_base), test_dirs=_test_dirs(test_base))


def leaked(before: Snapshot, test_base: Path, settle: float = 10.0) -> dict[str, list[str]]:
    """New resources since `before`, after giving exiting processes up to `settle` seconds."""
    deadline = time.monotonic() + settle
    while True:
        diff = snapshot(test_base).new_since(before)
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.25)
