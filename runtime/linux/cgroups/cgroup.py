"""One cgroup, present in every mounted hierarchy at the same path."""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.linux.cgroups import fsio, resources, v1, v2
from runtime.linux.cgroups.apply import Step, device_steps, file_steps, run_steps
from runtime.linux.cgroups.errors import CgroupBusy, CgroupError, CgroupUnsupported
from runtime.linux.cgroups.hierarchy import UNIFIED
from runtime.linux.cgroups.naming import PATH_FIELD
from runtime.linux.cgroups.stats import CgroupStats, read_v1, read_v2
from runtime.linux.host import CgroupMode

if TYPE_CHECKING:
    from runtime.linux.cgroups.hierarchy import Hierarchy

log = logging.getLogger(__name__)

FREEZE_TIMEOUT = 5.0
# Hierarchies pids() reads, best first: any of them lists every process of the cgroup.
_PIDS_SOURCES = ("pids", "freezer", "memory", "cpu", "devices")


class Cgroup:
    def __init__(self, hierarchy: Hierarchy, path: str) -> None:
        self.hierarchy = hierarchy
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, {self.hierarchy.mode.value})"

    # ------------------------------------------------------------ where

    def paths(self) -> dict[str, Path]:
        """{hierarchy name: directory}, e.g. {"memory": /sys/fs/cgroup/memory/<path>, "unified": ...}.

        Hierarchy names are the mount directories under the cgroup root ("cpu,cpuacct" where
        co-mounted, "systemd" for name=systemd), and "unified" for the cgroup v2 hierarchy.
        """
        rel = self.path.lstrip("/")
        return {name: mount / rel for name, mount in self.hierarchy.mounts.items()}

    def dirs(self) -> dict[str, str]:
        """paths() as strings (what a bind mount of the container's own cgroup takes)."""
        return {name: str(d) for name, d in self.paths().items()}

    def dir(self, controller: str) -> Path | None:
        """The directory serving `controller` (or hierarchy name, e.g. "unified"); None if not mounted."""
        name = self.hierarchy.hierarchy_of(controller) or (controller if controller in self.hierarchy.mounts else None)
        if name is None:
            return None
        return self.hierarchy.mounts[name] / self.path.lstrip("/")

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.paths().values())

    def procs_files(self) -> list[str]:
        """The cgroup.procs file of every hierarchy: a child writes its pid into each before exec."""
        return [str(d / "cgroup.procs") for d in self.paths().values()]

    def join_files(self, started_in_v2: bool = False) -> list[str]:
        """What a single-threaded child writes "0" into to enter this cgroup before exec; without the cgroup v2
        directory when the child was forked straight into it (`v2_dir`, clone3 CLONE_INTO_CGROUP).

        v1 hierarchies take `tasks` (the calling thread, which for a single-threaded child is the
        whole process): unlike cgroup.procs it does not take the global cgroup_threadgroup_rwsem for
        writing, whose RCU grace period can stall a container start for milliseconds. cgroup v2
        only has cgroup.procs.
        """
        return [str(d / ("cgroup.procs" if name == UNIFIED else "tasks")) for name, d in self.paths().items()
                if not (started_in_v2 and name == UNIFIED)]

    def v2_dir(self) -> Path | None:
        """This cgroup's directory in the cgroup v2 hierarchy (the unified one of a hybrid host), if mounted."""
        return self.paths().get(UNIFIED)

    # ------------------------------------------------------------ create

    def create(self) -> None:
        """mkdir -p in every hierarchy; idempotent; on failure removes what this call made."""
        made: list[Path] = []
        try:
            for name, d in self.paths().items():
                mount = self.hierarchy.mounts[name]
                for level in _levels(mount, d):
                    if level.is_dir():
                        continue
                    os.mkdir(level, 0o755)
                    made.append(level)
                    if "cpuset" in name.split(","):
                        _inherit_cpuset(level)
            if self.hierarchy.mode is CgroupMode.V2:
                self.enable_controllers(None)
        except OSError as e:
            for level in reversed(made):
                try:
                    os.rmdir(level)
                except OSError as undo_error:
                    log.warning("cannot remove %s after a failed create: %s", level, undo_error)
            where = e.filename or self.path
            raise CgroupUnsupported(PATH_FIELD, f"cannot create cgroup {self.path} ({where}): {e.strerror}") \
                from None

    def enable_controllers(self, wanted: set[str] | None) -> None:
        """Delegate controllers down the v2 tree to this cgroup (None: every available one, as runc does).

        A controller's files appear in a v2 cgroup only when every ancestor lists it in
        cgroup.subtree_control. Failures are left to the later file checks to report.
        """
        mount = self.hierarchy.mounts.get(UNIFIED)
        if mount is None:
            return
        for level in [mount, *_levels(mount, mount / self.path.lstrip("/"))][:-1]:
            try:
                available = set(fsio.read(level / "cgroup.controllers").split())
                enabled = set(fsio.read(level / "cgroup.subtree_control").split())
            except OSError:
                return
            missing = sorted((available if wanted is None else available & wanted) - enabled)
            if not missing:
                continue
            try:
                fsio.write(level / "cgroup.subtree_control", " ".join("+" + c for c in missing))
            except OSError:
                for c in missing:   # one by one, so one refused controller does not block the others
                    try:
                        fsio.write(level / "cgroup.subtree_control", "+" + c)
                    except OSError as e:
                        log.debug("cannot enable %s in %s: %s", c, level, e.strerror)

    # ------------------------------------------------------------ limits

    def apply(self, resources_spec: Mapping[str, Any] | None) -> None:
        """Apply OCI `linux.resources`: every value is checked before any file is written, and
        the files already written are restored if a later write fails."""
        res = resources.parse(resources_spec)
        if not self.exists():
            raise CgroupError(PATH_FIELD, f"cgroup {self.path} does not exist (create it first)")
        h = self.hierarchy
        hugetlb_in_unified = h.mode is not CgroupMode.V2 and h.hierarchy_of("hugetlb") == UNIFIED
        if res.hugepages and hugetlb_in_unified:
            self.enable_controllers({"hugetlb"})
        writes = v2.plan(res, self) if h.mode is CgroupMode.V2 else v1.plan(res, self, hugetlb_in_unified)
        steps: list[Step] = file_steps(self, writes)
        if res.devices is not None:
            steps += device_steps(self, res.devices)
        run_steps(steps)

    # View protocol for the planners
    def has_file(self, controller: str, file: str) -> bool:
        d = self.dir(controller)
        return d is not None and (d / file).exists()

    def read_value(self, controller: str, file: str) -> str | None:
        d = self.dir(controller)
        if d is None:
            return None
        try:
            return fsio.read(d / file).strip()
        except OSError:
            return None

    # ------------------------------------------------------------ processes

    def add_process(self, pid: int) -> None:
        for f in self.procs_files():
            try:
                fsio.write(f, str(pid))
            except OSError as e:
                raise CgroupError(PATH_FIELD, f"cannot move process {pid} into {f}: {e.strerror}") from None

    def pids(self) -> list[int]:
        """Every process in this cgroup and its descendants (sorted)."""
        d = self._pids_dir()
        if d is None:
            return []
        found: set[int] = set()
        for dirpath, _dirs, _files in os.walk(d):
            try:
                found.update(int(x) for x in fsio.read(os.path.join(dirpath, "cgroup.procs")).split())
            except OSError:
                continue   # removed while walking
        return sorted(found)

    def _pids_dir(self) -> Path | None:
        if self.hierarchy.mode is CgroupMode.V2:
            return self.dir(UNIFIED)
        for name in (*_PIDS_SOURCES, *self.hierarchy.mounts):
            d = self.dir(name)
            if d is not None:
                return d
        return None

    # ------------------------------------------------------------ freeze / kill

    def freeze(self) -> None:
        """Stop every process (v1 freezer, else v2 cgroup.freeze) and wait until they are stopped."""
        d = self.dir("freezer")
        if d is not None and self.hierarchy.hierarchy_of("freezer") != UNIFIED:
            _freeze_v1(d)
            return
        d = self.dir(UNIFIED)
        if d is None or not (d / "cgroup.freeze").exists():
            raise CgroupUnsupported("freezer", "this host has no cgroup freezer (v1 freezer or v2 cgroup.freeze)")
        _freeze_v2(d)

    def thaw(self) -> None:
        d = self.dir("freezer")
        if d is not None and self.hierarchy.hierarchy_of("freezer") != UNIFIED:
            _write_state(d / "freezer.state", "THAWED")
            return
        d = self.dir(UNIFIED)
        if d is not None and (d / "cgroup.freeze").exists():
            _write_state(d / "cgroup.freeze", "0")

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process. SIGKILL is race-free: v2 cgroup.kill, or on v1 freeze -> kill -> thaw,
        so a process forking meanwhile cannot leave a child behind."""
        if sig == signal.SIGKILL and self.hierarchy.mode is CgroupMode.V2:
            d = self.dir(UNIFIED)
            if d is not None and (d / "cgroup.kill").exists():
                try:
                    fsio.write(d / "cgroup.kill", "1")
                    return
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        return   # already gone
                    log.warning("cgroup.kill failed for %s (%s); signalling one by one", self.path, e.strerror)
        if sig != signal.SIGKILL:
            _signal_all(self.pids(), sig)
            return
        frozen = False
        try:
            self.freeze()
            frozen = True
        except CgroupError as e:
            log.warning("cannot freeze %s before killing it (%s); killing unfrozen", self.path, e)
        try:
            rounds = 1 if frozen else 10   # unfrozen, repeat to catch children forked meanwhile
            for _ in range(rounds):
                pids = self.pids()
                if not pids:
                    return
                _signal_all(pids, sig)
                if not frozen:
                    time.sleep(0.002)
        finally:
            if frozen:
                self.thaw()

    # ------------------------------------------------------------ numbers

    def oom_kill_count(self) -> int:
        """OOM kills in this cgroup (and below). Read it before destroy(): the count dies with the cgroup.

        v2: memory.events "oom_kill". v1: memory.oom_control "oom_kill" (Linux 4.13+); on older
        kernels memory.failcnt is used instead, which counts every time the limit was hit, so
        it can report an OOM where reclaim succeeded.
        """
        d = self.dir("memory")
        if d is None:
            return 0
        if self.hierarchy.hierarchy_of("memory") == UNIFIED:
            return fsio.read_keyed(d / "memory.events").get("oom_kill", 0)
        control = fsio.read_keyed(d / "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"]
        return fsio.read_int(d / "memory.failcnt") or 0

    def stats(self) -> CgroupStats:
        if self.hierarchy.mode is CgroupMode.V2:
            d = self.dir(UNIFIED)
            assert d is not None  # a v2 hierarchy always has its single mount
            return read_v2(d)
        return read_v1(self._v1_dir("cpuacct"), self._v1_dir("memory"), self._v1_dir("pids"))

    def _v1_dir(self, controller: str) -> Path | None:
        return None if self.hierarchy.hierarchy_of(controller) == UNIFIED else self.dir(controller)

    # ------------------------------------------------------------ destroy

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left, then rmdir this cgroup and its children everywhere; idempotent."""
        if not self.exists():
            return
        deadline = time.monotonic() + timeout
        if self.pids():
            self.kill_all(signal.SIGKILL)
        for d in self.paths().values():
            if not d.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(d, topdown=False):
                self._rmdir(Path(dirpath), deadline, timeout)

    def _rmdir(self, d: Path, deadline: float, timeout: float) -> None:
        while True:
            try:
                os.rmdir(d)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                # EBUSY: killed processes have not left yet (or a process/child cgroup appeared).
                if e.errno != errno.EBUSY:
                    raise CgroupError(PATH_FIELD, f"cannot remove {d}: {e.strerror}") from None
                if time.monotonic() > deadline:
                    raise CgroupBusy(PATH_FIELD, f"cannot remove {d}: still busy after {timeout:g}s "
                                     f"(processes: {self.pids() or 'none'})") from None
                time.sleep(0.005)


def _levels(mount: Path, d: Path) -> list[Path]:
    """The directories from just below `mount` down to `d`, top first."""
    rel = d.relative_to(mount)
    out, cur = [], mount
    for part in rel.parts:
        cur = cur / part
        out.append(cur)
    return out


def _inherit_cpuset(level: Path) -> None:
    # A new v1 cpuset cgroup starts with no CPUs and no memory nodes; no process can join until filled.
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not fsio.read(level / name).strip():
            fsio.write(level / name, fsio.read(level.parent / name).strip())


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _write_state(path: Path, value: str) -> None:
    try:
        fsio.write(path, value)
    except FileNotFoundError:
        pass   # the cgroup is already gone: nothing left to thaw


def _freeze_v1(d: Path) -> None:
    """Write FROZEN until the state reads FROZEN: a v1 freeze can stall in FREEZING while processes
    fork, so retry, thawing now and then to let it settle (runc's approach)."""
    state_file = d / "freezer.state"
    try:
        for attempt in range(1000):
            if attempt % 50 == 49:
                fsio.write(state_file, "THAWED")
                time.sleep(0.01)
            fsio.write(state_file, "FROZEN")
            state = fsio.read(state_file).strip()
            if state == "FROZEN":
                return
            if attempt % 25 == 24:
                time.sleep(0.0001)
    except OSError as e:
        _write_state(state_file, "THAWED")
        raise CgroupError("freezer", f"cannot freeze {d}: {e.strerror}") from None
    _write_state(state_file, "THAWED")
    raise CgroupBusy("freezer", f"{d} stayed FREEZING; thawed it again")


def _freeze_v2(d: Path) -> None:
    try:
        fsio.write(d / "cgroup.freeze", "1")
    except OSError as e:
        raise CgroupError("freezer", f"cannot freeze {d}: {e.strerror}") from None
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while fsio.read_keyed(d / "cgroup.events").get("frozen") != 1:
        if time.monotonic() > deadline:
            _write_state(d / "cgroup.freeze", "0")
            raise CgroupBusy("freezer", f"{d} did not report frozen within {FREEZE_TIMEOUT:g}s; thawed it again")
        time.sleep(0.001)

