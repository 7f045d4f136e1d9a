"""A small lab for driving `LinuxBackend` directly (no gRPC, no daemon) in integration tests.

Everything lives under one short directory below CRI_SHIM_TEST_TMP (the pod
shim sockets must fit in 107 bytes), cgroups under "/cri-shim-linux-<name>",
network namespaces are pinned files in that directory (never /run/netns).
`Lab.close()` removes every pod, netns pin and directory it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runtime import base, oci
from runtime.linux.backend import LinuxBackend
from tests.harness.daemon import TMP_BASE

T = TypeVar("T")

# Every capability this host allows (it has no CAP_SYS_RESOURCE in its bounding set).
ALL_CAPS = tuple(f"CAP_{c}" for c in (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ").split())


def new_id() -> str:
    return secrets.token_hex(32)


@dataclass
class PodInfo:
    id: str
    dir: Path
    netns: str | None
    cgroup_parent: str
    status: base.SandboxStatus
    pid_mode: base.NamespaceMode = base.NamespaceMode.CONTAINER


@dataclass
class ContainerInfo:
    id: str
    pod: PodInfo
    bundle: Path
    scratch: Path
    log_path: Path
    spec: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class Lab:
    def __init__(self, rootfs: Path, name: str = "t") -> None:
        TMP_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="L", dir=TMP_BASE))
        self.state = self.root / "s"
        self.rootfs = rootfs
        self.cgroup_base = f"/cri-shim-linux-{self.root.name}-{name}"
        self.pods: list[PodInfo] = []
        self.netns_pins: list[Path] = []
        self._seq = 0

    @classmethod
    def reopen(cls, root: Path, rootfs: Path) -> Lab:
        """The same lab from another process (restart tests): same directories and cgroup names."""
        lab = cls.__new__(cls)
        lab.root, lab.state, lab.rootfs = root, root / "s", rootfs
        lab.cgroup_base = f"/cri-shim-linux-{root.name}-t"
        lab.pods, lab.netns_pins = [], []
        lab._seq = len(list(root.glob("p*")))
        return lab

    def backend(self, **kwargs: Any) -> LinuxBackend:
        return LinuxBackend(self.state, **kwargs)

    # ------------------------------------------------------------ pods

    def make_netns(self) -> str:
        pin = Path(tempfile.mkstemp(prefix="netns-", dir=self.root)[1])
        subprocess.run(["unshare", f"--net={pin}", "true"], check=True)
        self.netns_pins.append(pin)
        return str(pin)

    async def pod(self, b: LinuxBackend, *, network: base.NamespaceMode = base.NamespaceMode.POD,
                  pid: base.NamespaceMode = base.NamespaceMode.CONTAINER,
                  ipc: base.NamespaceMode = base.NamespaceMode.POD, hostname: str = "lab-pod",
                  sysctls: dict[str, str] | None = None) -> PodInfo:
        spec, info = self.pod_spec(network=network, pid=pid, ipc=ipc, hostname=hostname, sysctls=sysctls)
        info.status = await b.create_sandbox(spec)
        self.pods.append(info)
        return info

    def pod_spec(self, *, network: base.NamespaceMode = base.NamespaceMode.POD,
                 pid: base.NamespaceMode = base.NamespaceMode.CONTAINER,
                 ipc: base.NamespaceMode = base.NamespaceMode.POD, hostname: str = "lab-pod",
                 sysctls: dict[str, str] | None = None) -> tuple[base.SandboxSpec, PodInfo]:
        """The spec of a new pod and its directories (sandbox files, netns pin), without creating it."""
        sid = new_id()
        self._seq += 1
        pod_dir = self.root / f"p{self._seq}"
        (pod_dir / "sandbox").mkdir(parents=True)
        (pod_dir / "sandbox/hostname").write_text(hostname + "\n")
        (pod_dir / "sandbox/hosts").write_text(f"127.0.0.1 localhost\n10.9.9.9 {hostname}\n")
        (pod_dir / "sandbox/resolv.conf").write_text("nameserver 10.9.9.1\nsearch lab.local\n")
        netns = self.make_netns() if network == base.NamespaceMode.POD else None
        cgroup_parent = f"{self.cgroup_base}/pod{self._seq}"
        spec = base.SandboxSpec(
            id=sid, name=f"lab/pod{self._seq}", hostname=hostname, sandbox_dir=str(pod_dir / "sandbox"),
            log_directory=str(pod_dir / "logs"),
            linux=base.LinuxSandboxSpec(cgroup_parent=cgroup_parent, network=network, pid=pid, ipc=ipc,
                                        netns_path=netns, sysctls=sysctls or {}))
        status = base.SandboxStatus(id=sid, state=base.SandboxState.NOTREADY)
        return spec, PodInfo(id=sid, dir=pod_dir, netns=netns, cgroup_parent=cgroup_parent, status=status,
                             pid_mode=pid)

    # ------------------------------------------------------------ containers

    def container_spec(self, pod: PodInfo, cid: str, args: tuple[str, ...], *, tty: bool = False,
                       mounts: tuple[oci.Mount, ...] = (), resources: dict[str, Any] | None = None,
                       readonly: bool = False, env: tuple[str, ...] = (oci.DEFAULT_PATH_ENV,), cwd: str = "/",
                       user: oci.User | None = None, extra_namespaces: tuple[oci.Namespace, ...] | None = None,
                       privileged_caps: bool = False, oom_score_adj: int | None = None) -> dict[str, Any]:
        ns = pod.status.namespaces
        namespaces = [oci.Namespace("mount"), oci.Namespace("cgroup")]
        if "net" in ns:
            namespaces.append(oci.Namespace("network", ns["net"]))
        if "ipc" in ns:
            namespaces.append(oci.Namespace("ipc", ns["ipc"]))
        if "uts" in ns:
            namespaces.append(oci.Namespace("uts", ns["uts"]))
        if "pid" in ns:
            namespaces.append(oci.Namespace("pid", ns["pid"]))
        elif pod.pid_mode != base.NamespaceMode.NODE:
            namespaces.append(oci.Namespace("pid"))
        if extra_namespaces is not None:
            namespaces = list(extra_namespaces)
        caps = oci.Capabilities(ALL_CAPS, ALL_CAPS, ALL_CAPS) if privileged_caps else oci.Capabilities()
        config = oci.ContainerConfig(
            process=oci.Process(args=args, env=env, cwd=cwd, terminal=tty, user=user or oci.User(),
                                capabilities=caps, oom_score_adj=oom_score_adj),
            mounts=mounts, root_readonly=readonly,
            linux=oci.LinuxConfig(cgroups_path=f"{pod.cgroup_parent}/{cid}", namespaces=tuple(namespaces),
                                  resources=resources))
        return oci.build(config)

    async def container(self, b: LinuxBackend, pod: PodInfo, args: tuple[str, ...], *, start: bool = True,
                        stdin: bool = False, stdin_once: bool = False, tty: bool = False,
                        spec: dict[str, Any] | None = None, layers: tuple[Path, ...] = (),
                        **spec_kwargs: Any) -> ContainerInfo:
        cid = new_id()
        info = self.container_paths(pod, cid)
        info.spec = spec or self.container_spec(pod, cid, args, tty=tty, **spec_kwargs)
        oci.write(info.bundle, info.spec)
        cspec = base.ContainerSpec(
            id=cid, sandbox_id=pod.id, bundle_dir=str(info.bundle),
            rootfs=base.RootfsSpec(layers=(str(self.rootfs), *(str(x) for x in layers)), scratch=str(info.scratch)),
            stdio=base.StdioSpec(log_path=str(info.log_path), stdin=stdin, stdin_once=stdin_once, tty=tty))
        await b.create_container(cspec)
        if start:
            await b.start_container(cid)
        return info

    def container_paths(self, pod: PodInfo, cid: str) -> ContainerInfo:
        n = len(list(pod.dir.glob("c*")))
        cdir = pod.dir / f"c{n}"
        (cdir / "scratch").mkdir(parents=True)
        return ContainerInfo(id=cid, pod=pod, bundle=cdir / "bundle", scratch=cdir / "scratch",
                             log_path=pod.dir / "logs" / f"c{n}.log")

    # ------------------------------------------------------------ running and cleanup

    def run(self, body: Callable[[LinuxBackend], Awaitable[T]], **backend_kwargs: Any) -> T:
        async def main() -> T:
            b = self.backend(**backend_kwargs)
            try:
                return await body(b)
            finally:
                await self.remove_pods(b)
                await b.close()
        return asyncio.run(main())

    async def remove_pods(self, b: LinuxBackend) -> None:
        for pod in self.pods:
            with contextlib.suppress(base.RuntimeFailure):
                await b.stop_sandbox(pod.id, 0)
            await b.remove_sandbox(pod.id)
        self.pods.clear()

    def leftovers(self) -> dict[str, list[str]]:
        """What the runtime left behind in this lab: mounts, cgroups, processes, pod state."""
        out: dict[str, list[str]] = {}
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        left = [m for m in mounts if m.startswith(str(self.root)) and not self._is_netns_pin(m)]
        if left:
            out["mounts"] = left
        cgroups = [str(d / self.cgroup_base.lstrip("/")) for d in Path("/sys/fs/cgroup").iterdir()
                   if (d / self.cgroup_base.lstrip("/")).exists()]
        if cgroups:
            out["cgroups"] = cgroups
        procs = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        procs.append(pid)
        if procs:
            out["processes"] = procs
        pods_dir = self.state / "pods"
        if pods_dir.is_dir() and os.listdir(pods_dir):
            out["pod_state"] = os.listdir(pods_dir)
        return out

    def _is_netns_pin(self, path: str) -> bool:
        return os.path.dirname(path) == str(self.root) and os.path.basename(path).startswith("netns-")

    def close(self) -> None:
        """Remove what the test itself made (netns pins, directories); never the runtime's leftovers."""
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for pin in mounts:
            if self._is_netns_pin(pin):   # made by this test (or its driver processes), not by the runtime
                subprocess.run(["umount", "-l", pin], check=False, capture_output=True)
        self.netns_pins.clear()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        if not any(m.startswith(str(self.root)) for m in mounts):
            shutil.rmtree(self.root, ignore_errors=True)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()
