"""A deliberately small cgroupfs v1 helper, used until `runtime.linux.cgroups` lands.

It mirrors the interface the cgroups module will provide (`open_hierarchy()`,
`Hierarchy.cgroup(path)`, `Cgroup.create/apply/add_process/pids/kill_all/
oom_kill_count/stats/destroy`), so switching is a one-line import change.
It covers what the pod shim needs on this host (cgroup v1 hybrid): memory,
pids, cpu shares/quota, cpuset, devices, freezer and OOM counting. cgroup v2
gets only the basics (procs, memory.max, pids.max, cpu.max, memory.events).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
# Hierarchies a container joins on v1 (name=systemd too, as runc does, so nothing of it stays in ours).
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd")
# Devices every container gets besides the spec's own (runc's AllowedDevices).
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m",
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",   # null zero full random urandom
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",              # tty console ptmx pts
)


class CgroupError(Exception):
    """A limit the host cannot apply, or a cgroup that cannot be made; `field` names the spec key."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class CgroupStats:
    cpu_usage_ns: int | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_limit_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    pids: int | None = None


class Hierarchy:
    def __init__(self, root: str = CGROUP_ROOT) -> None:
        # Plain strings and os.path, no pathlib: this runs in every pod shim, where each module
        # touched costs memory (see runtime.linux.shim).
        self.root = root
        self.v2 = os.path.exists(f"{root}/cgroup.controllers")
        self.mounts: dict[str, str] = {}
        if self.v2:
            self.mounts["unified"] = root
        else:
            for name in V1_CONTROLLERS:
                if os.path.exists(f"{root}/{name}/cgroup.procs"):
                    self.mounts[name] = f"{root}/{name}"

    def cgroup(self, path: str) -> Cgroup:
        return Cgroup(self, path)


def open_hierarchy() -> Hierarchy:
    return Hierarchy()


def cgroup_path(driver: str, parent: str, name: str) -> str:
    if driver != "cgroupfs":
        raise CgroupError("cgroup_driver", f"driver {driver!r} is not supported by this build (cgroupfs only)")
    return "/" + "/".join(p for p in (parent.strip("/"), name) if p)


class Cgroup:
    def __init__(self, hierarchy: Hierarchy, path: str) -> None:
        if not path.startswith("/") or ".." in path.split("/"):
            raise CgroupError("linux.cgroupsPath", f"{path!r} must be an absolute path without '..'")
        self.hierarchy = hierarchy
        self.path = path

    def dirs(self) -> dict[str, str]:
        return {name: mnt + self.path for name, mnt in self.hierarchy.mounts.items()}

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs().values())

    def create(self) -> None:
        for name, d in self.dirs().items():
            missing = []
            p = d
            while not os.path.exists(p):
                missing.append(p)
                p = os.path.dirname(p)
            for p in reversed(missing):
                os.mkdir(p, 0o755)
                if name == "cpuset":
                    _copy_cpuset_from_parent(p)

    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self.dirs().values()]

    def join_files(self) -> list[str]:
        """What a single-threaded child writes "0" into to enter this cgroup before exec.

        On v1 that is `tasks`, not `cgroup.procs`: moving only the calling thread (the whole process,
        for a single-threaded child) lets the kernel skip the global cgroup_threadgroup_rwsem, whose
        write lock waits for an RCU grace period (several ms, up to tens on a busy host)."""
        name = "cgroup.procs" if self.hierarchy.v2 else "tasks"
        return [f"{d}/{name}" for d in self.dirs().values()]

    def add_process(self, pid: int) -> None:
        for f in self.procs_files():
            _write(f, str(pid))

    def pids(self) -> list[int]:
        d = self._dir("pids") or self._dir("memory") or self._dir("unified")
        if d is None:
            return []
        try:
            with open(f"{d}/cgroup.procs") as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process; frozen meanwhile so a forking process cannot escape."""
        frozen = self.freeze()
        try:
            for _ in range(50):
                pids = self.pids()
                if not pids:
                    return
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if sig != signal.SIGKILL:
                    return
                if frozen:
                    break
                time.sleep(0.002)
        finally:
            if frozen:
                self.thaw()

    def freeze(self) -> bool:
        d = self._dir("freezer")
        if d is None:
            return False
        try:
            _write(f"{d}/freezer.state", "FROZEN")
            for _ in range(500):
                if _read(f"{d}/freezer.state").strip() == "FROZEN":
                    return True
                time.sleep(0.001)
        except OSError:
            return False
        return True

    def thaw(self) -> None:
        d = self._dir("freezer")
        if d is not None:
            try:
                _write(f"{d}/freezer.state", "THAWED")
            except OSError:
                pass

    def oom_kill_count(self) -> int:
        d = self._dir("memory")
        if d is not None:
            return _keyed(f"{d}/memory.oom_control").get("oom_kill", 0)
        d = self._dir("unified")
        if d is not None:
            return _keyed(f"{d}/memory.events").get("oom_kill", 0)
        return 0

    def apply(self, resources: Mapping[str, Any] | None) -> None:
        if not resources:
            return
        if self.hierarchy.v2:
            self._apply_v2(resources)
        else:
            self._apply_v1(resources)

    def _apply_v1(self, r: Mapping[str, Any]) -> None:
        mem = r.get("memory") or {}
        if mem.get("limit") is not None:
            self._set("memory", "memory.limit_in_bytes", _int(mem["limit"]), "linux.resources.memory.limit")
        if mem.get("swap") is not None:
            self._set("memory", "memory.memsw.limit_in_bytes", _int(mem["swap"]), "linux.resources.memory.swap")
        cpu = r.get("cpu") or {}
        if cpu.get("shares"):
            self._set("cpu", "cpu.shares", _int(cpu["shares"]), "linux.resources.cpu.shares")
        if cpu.get("period"):
            self._set("cpu", "cpu.cfs_period_us", _int(cpu["period"]), "linux.resources.cpu.period")
        if cpu.get("quota"):
            self._set("cpu", "cpu.cfs_quota_us", _int(cpu["quota"]), "linux.resources.cpu.quota")
        if cpu.get("cpus"):
            self._set("cpuset", "cpuset.cpus", str(cpu["cpus"]), "linux.resources.cpu.cpus")
        if cpu.get("mems"):
            self._set("cpuset", "cpuset.mems", str(cpu["mems"]), "linux.resources.cpu.mems")
        pids = r.get("pids") or {}
        if pids.get("limit"):
            limit = _int(pids["limit"])
            self._set("pids", "pids.max", "max" if limit <= 0 else limit, "linux.resources.pids.limit")
        if "devices" in r:
            self._apply_devices(r.get("devices") or [])
        if r.get("hugepageLimits"):
            raise CgroupError("linux.resources.hugepageLimits", "the hugetlb controller is not mounted on this host")
        if r.get("unified"):
            raise CgroupError("linux.resources.unified", "unified (cgroup v2) keys need a cgroup v2 host")

    def _apply_devices(self, rules: list[Mapping[str, Any]]) -> None:
        if self._dir("devices") is None:
            return
        self._set("devices", "devices.deny", "a", "linux.resources.devices")
        for i, rule in enumerate(rules):
            line = _device_rule(rule)
            if line == "a":
                if rule.get("allow"):
                    self._set("devices", "devices.allow", "a", f"linux.resources.devices[{i}]")
                continue
            self._set("devices", "devices.allow" if rule.get("allow") else "devices.deny", line,
                      f"linux.resources.devices[{i}]")
        for line in DEFAULT_DEVICE_RULES:
            self._set("devices", "devices.allow", line, "linux.resources.devices")

    def _apply_v2(self, r: Mapping[str, Any]) -> None:
        mem = r.get("memory") or {}
        if mem.get("limit") is not None:
            limit = _int(mem["limit"])
            self._set("unified", "memory.max", "max" if limit < 0 else limit, "linux.resources.memory.limit")
        cpu = r.get("cpu") or {}
        if cpu.get("quota"):
            self._set("unified", "cpu.max", f"{_int(cpu['quota'])} {_int(cpu.get('period') or 100000)}",
                      "linux.resources.cpu.quota")
        pids = r.get("pids") or {}
        if pids.get("limit"):
            self._set("unified", "pids.max", _int(pids["limit"]), "linux.resources.pids.limit")
        for key, value in (r.get("unified") or {}).items():
            if "/" in key or key.startswith("."):
                raise CgroupError(f"linux.resources.unified[{key}]", "not a cgroup file name")
            self._set("unified", key, value, f"linux.resources.unified[{key}]")

    def stats(self) -> CgroupStats:
        if self.hierarchy.v2:
            return self._stats_v2()
        out: dict[str, int | None] = {}
        d = self._dir("cpuacct")
        out["cpu_usage_ns"] = _read_int(f"{d}/cpuacct.usage") if d else None
        d = self._dir("memory")
        if d is not None:
            usage = _read_int(f"{d}/memory.usage_in_bytes")
            stat = _keyed(f"{d}/memory.stat")
            out["memory_usage_bytes"] = usage
            if usage is not None:
                out["memory_working_set_bytes"] = max(0, usage - stat.get("total_inactive_file", 0))
            out["memory_rss_bytes"] = stat.get("total_rss")
            out["page_faults"] = stat.get("total_pgfault")
            out["major_page_faults"] = stat.get("total_pgmajfault")
            out["memory_limit_bytes"] = _read_int(f"{d}/memory.limit_in_bytes")
        d = self._dir("pids")
        out["pids"] = _read_int(f"{d}/pids.current") if d else None
        return CgroupStats(**out)

    def _stats_v2(self) -> CgroupStats:
        d = self._dir("unified")
        assert d is not None
        cpu = _keyed(f"{d}/cpu.stat")
        mem = _keyed(f"{d}/memory.stat")
        usage = _read_int(f"{d}/memory.current")
        return CgroupStats(
            cpu_usage_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
            memory_usage_bytes=usage,
            memory_working_set_bytes=None if usage is None else max(0, usage - mem.get("inactive_file", 0)),
            memory_rss_bytes=mem.get("anon"), page_faults=mem.get("pgfault"),
            major_page_faults=mem.get("pgmajfault"), pids=_read_int(f"{d}/pids.current"))

    def destroy(self, timeout: float = 2.0) -> None:
        """Remove the cgroup directories (children first); processes still inside are killed first."""
        if self.pids():
            self.kill_all(signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for d in self.dirs().values():
            subdirs = [root for root, _dirs, _files in os.walk(d)][1:] if os.path.isdir(d) else []
            for sub in sorted(subdirs, key=len, reverse=True):
                _rmdir_retry(sub, deadline)
            _rmdir_retry(d, deadline)

    def _dir(self, name: str) -> str | None:
        mnt = self.hierarchy.mounts.get(name)
        return None if mnt is None else mnt + self.path

    def _set(self, controller: str, filename: str, value: object, field_name: str) -> None:
        d = self._dir(controller)
        if d is None:
            raise CgroupError(field_name, f"the {controller} controller is not available on this host")
        try:
            _write(f"{d}/{filename}", str(value))
        except FileNotFoundError:
            raise CgroupError(field_name, f"{filename} does not exist on this host (kernel/controller option off)") \
                from None
        except OSError as e:
            raise CgroupError(field_name, f"cannot set {filename} to {value}: {e.strerror}") from None


def _device_rule(rule: Mapping[str, Any]) -> str:
    kind = rule.get("type") or "a"
    if kind == "a" and rule.get("major") is None and rule.get("minor") is None:
        return "a"
    major = "*" if rule.get("major") is None or rule.get("major") == -1 else str(int(rule["major"]))
    minor = "*" if rule.get("minor") is None or rule.get("minor") == -1 else str(int(rule["minor"]))
    access = rule.get("access") or "rwm"
    return f"{kind} {major}:{minor} {access}"


def _copy_cpuset_from_parent(path: str) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(f"{path}/{name}").strip():
            _write(f"{path}/{name}", _read(f"{os.path.dirname(path)}/{name}").strip())


def _rmdir_retry(path: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY: a process that was just killed has not left the cgroup yet.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError("linux.resources", f"expected an integer, got {value!r}")
    return value


def _read_int(path: str) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in _read(path).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out
