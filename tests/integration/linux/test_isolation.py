"""What a container sees: its own hostname, PID 1, mounts, limits, a read-only root, propagation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path

import pytest

from runtime import base, oci
from runtime.linux import cgroups, shim
from runtime.linux import init as cinit
from runtime.linux import syscalls as sc
from runtime.linux.backend import LinuxBackend
from runtime.linux.cgroups import Cgroup
from tests.harness.linux_lab import Lab, wait_for


async def run_to_exit(lab: Lab, b: LinuxBackend, pod: object, script: str, **kw: object) -> tuple[base.ContainerStatus, str]:
    c = await lab.container(b, pod, ("sh", "-c", script), **kw)  # type: ignore[arg-type]
    status = await _wait_exit(b, c.id)
    return status, _stdout(c.log_text())


async def _wait_exit(b: LinuxBackend, cid: str, timeout: float = 20) -> base.ContainerStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        status = await b.container_status(cid)
        if status.state == base.ContainerState.EXITED:
            return status
        await asyncio.sleep(0.02)
    return await b.container_status(cid)


def _stdout(log: str) -> str:
    """The stdout content of a CRI log, lines joined (P records joined with what follows)."""
    out = []
    for line in log.splitlines():
        _ts, stream, tag, content = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" "), "")
        if stream == "stdout":
            out.append(content + ("\n" if tag == "F" else ""))
    return "".join(out)


def test_container_sees_its_own_hostname_pid1_and_pod_files(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b, hostname="isolated-pod")
        status, out = await run_to_exit(lab, b, pod, "hostname; echo pid=$$; cat /etc/hostname; "
                                        "cat /etc/resolv.conf; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                                        "ls /proc | grep -c '^[0-9]'; ip link | grep -c '^[0-9]'")
        assert status.exit_code == 0, out
        lines = out.splitlines()
        assert lines[0] == "isolated-pod"
        assert lines[1] == "pid=1"
        assert lines[2] == "isolated-pod"          # /etc/hostname from the sandbox dir
        assert "nameserver 10.9.9.1" in lines[3]     # /etc/resolv.conf from the sandbox dir
        assert lines[5].startswith("sh -c hostname")  # PID 1 is the container's own entrypoint
        assert int(lines[6]) <= 3                    # it sees only its own processes
        assert int(lines[7]) == 1                    # a fresh netns: only lo
    lab.run(body)


def test_container_mounts_are_its_own(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        status, out = await run_to_exit(lab, b, pod, "cat /proc/self/mountinfo; ls -l /dev; cat /proc/kcore | wc -c")
        assert status.exit_code == 0, out
        mounts = {line.split()[4]: line for line in out.splitlines() if line.count(" - ") == 1}
        assert "overlay" in mounts["/"]
        for point in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
                      "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
            assert point in mounts, f"{point} not mounted: {sorted(mounts)}"
        assert " ro," in mounts["/sys"] or mounts["/sys"].split()[5].startswith("ro")
        # /dev/shm is the pod's (a tmpfs the shim holds), not the host's
        assert str(pod.dir) not in mounts["/dev/shm"]
        assert not any(str(lab.root) in p for p in mounts), "a host path leaked into the container's mount table"
        assert "null" in out and "pts" in out
        assert out.splitlines()[-1].strip() == "0"   # /proc/kcore is masked
    lab.run(body)


def test_memory_limit_kills_with_oomkilled_137(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "a=xxxxxxxxxxxxxxxx; while :; do a=$a$a; done"),
                                resources={"memory": {"limit": 32 << 20}})
        status = await _wait_exit(b, c.id, 60)
        assert status.state == base.ContainerState.EXITED
        assert status.exit_code == 137
        assert status.reason == base.REASON_OOM_KILLED
    lab.run(body)


def test_cgroup_limits_are_visible_inside(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        status, out = await run_to_exit(
            lab, b, pod, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us; cat /proc/self/cgroup | grep memory",
            resources={"memory": {"limit": 64 << 20}, "pids": {"limit": 50},
                       "cpu": {"quota": 50000, "period": 100000}})
        assert status.exit_code == 0, out
        lines = out.splitlines()
        assert lines[:3] == [str(64 << 20), "50", "50000"]
        assert lines[3].endswith(":/")               # cgroup namespace: its own cgroup is the root
    lab.run(body)


def test_readonly_rootfs_keeps_pod_files_writable(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        status, out = await run_to_exit(
            lab, b, pod, "touch /newfile 2>/dev/null && echo root-writable || echo root-readonly; "
            "echo 1.2.3.4 extra >> /etc/hosts && echo hosts-writable; touch /dev/shm/x && echo shm-writable",
            readonly=True)
        assert status.exit_code == 0, out
        assert out.splitlines() == ["root-readonly", "hosts-writable", "shm-writable"]
    lab.run(body)


def test_bind_mount_propagation_private_slave_shared(lab: Lab) -> None:
    src = lab.root / "prop"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "propsrc", str(src)], check=True)
    subprocess.run(["mount", "--make-shared", str(src)], check=True)
    try:
        async def body(b: LinuxBackend) -> None:
            pod = await lab.pod(b)
            mounts = (oci.Mount("/p-private", str(src), "bind", ("rbind", "rprivate")),
                      oci.Mount("/p-slave", str(src), "bind", ("rbind", "rslave")),
                      oci.Mount("/p-shared", str(src), "bind", ("rbind", "rshared")))
            ctl = lab.root / "ctl"
            ctl.mkdir()
            script = ("while [ ! -e /ctl/go ]; do sleep 0.05; done; "
                      "for d in p-private p-slave p-shared; do "
                      "  [ -e /$d/hostsub/marker ] && echo $d:sees-host-mount || echo $d:no-host-mount; done; "
                      "mkdir -p /p-shared/fromctr && mount -t tmpfs ctr /p-shared/fromctr && "
                      "touch /p-shared/fromctr/ctr-marker; touch /ctl/done; sleep 30")
            c = await lab.container(b, pod, ("sh", "-c", script), privileged_caps=True,
                                    mounts=mounts + (oci.Mount("/ctl", str(ctl), "bind", ("rbind",)),))
            (src / "hostsub").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "hostsub", str(src / "hostsub")], check=True)
            (src / "hostsub/marker").touch()
            (ctl / "go").touch()
            assert await wait_for(lambda: (ctl / "done").exists(), 10), c.log_text()
            # The shim writes the log on its own time: wait for the last of the three lines to land.
            assert await wait_for(lambda: "p-shared:" in _stdout(c.log_text()), 10), c.log_text()
            out = _stdout(c.log_text())
            assert "p-private:no-host-mount" in out
            assert "p-slave:sees-host-mount" in out
            assert "p-shared:sees-host-mount" in out
            # a mount made inside an rshared bind reaches the host
            assert (src / "fromctr/ctr-marker").exists(), c.log_text()
            await b.stop_container(c.id, 0)
        lab.run(body)
    finally:
        subprocess.run(["umount", "-R", "-l", str(src)], check=False)


def test_mount_destination_symlink_cannot_escape_the_root(lab: Lab) -> None:
    """CVE-2021-30465 class: the image's /evil points at a host path; the volume must land inside the root."""
    target = lab.root / "host-target"
    target.mkdir()
    data = lab.root / "data"
    data.mkdir()
    (data / "payload").write_text("from-volume")
    layer = lab.root / "evil-layer"
    layer.mkdir()
    os.symlink(str(target), layer / "evil")
    os.symlink("../../../../../../../../" + str(target).lstrip("/"), layer / "evil2")
    (layer / str(target).lstrip("/")).mkdir(parents=True)   # the same path exists inside the image
    os.symlink("/does/not/exist", layer / "dangling")

    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        mounts = (oci.Mount("/evil/vol", str(data), "bind", ("rbind",)),
                  oci.Mount("/evil2/vol2", str(data), "bind", ("rbind",)))
        status, out = await run_to_exit(lab, b, pod, "cat /evil/vol/payload; echo; cat /evil2/vol2/payload",
                                        mounts=mounts, layers=(layer,))
        assert status.exit_code == 0, out
        assert out.split() == ["from-volume", "from-volume"]
        assert list(target.iterdir()) == [], "a mount or directory was made on the host through the symlink"
        # a destination through a dangling symlink is refused with the mount named, nothing made
        try:
            await lab.container(b, pod, ("true",), mounts=(oci.Mount("/dangling/x", str(data), "bind", ("rbind",)),),
                                layers=(layer,))
            raise AssertionError("a mount through a dangling symlink was accepted")
        except base.InvalidSpec as e:
            assert e.field.startswith("mounts[") and "dangling" in e.message
        assert not Path("/does/not/exist").exists()
    lab.run(body)


def test_container_init_holds_no_host_fd_and_cwd_is_inside(lab: Lab) -> None:
    """CVE-2024-21626: the container's process has nothing open but its stdio, and its cwd is inside."""
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"), cwd="/work/dir")
        pid = (await b.container_status(c.id)).pid
        assert pid
        assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]
        assert os.readlink(f"/proc/{pid}/cwd").endswith("/work/dir")   # created inside the root
        assert os.readlink(f"/proc/{pid}/root") == "/"                 # (as seen from its own mount ns)
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", "pwd; ls /proc/self/fd | wc -l")), 10, 4096)
        assert r.stdout.split() == [b"/work/dir", b"4"]   # ls sees 0, 1, 2 and its own directory handle
        await b.stop_container(c.id, 0)
    lab.run(body)


def test_cwd_through_a_leaked_fd_path_stays_inside(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        for n in (3, 4, 5, 7, 8):
            try:
                c = await lab.container(b, pod, ("sh", "-c", "pwd; ls .. | head -3"), cwd=f"/proc/self/fd/{n}")
            except base.RuntimeFailure as e:
                assert "cwd" in e.message or "working directory" in e.message
                continue
            status = await _wait_exit(b, c.id)
            assert str(lab.root) not in c.log_text()
            del status
    lab.run(body)


def test_oom_score_adj_is_clamped_when_it_cannot_be_lowered(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        own = int(Path("/proc/self/oom_score_adj").read_text())
        status, out = await run_to_exit(lab, b, pod, "cat /proc/self/oom_score_adj", oom_score_adj=-900)
        assert status.exit_code == 0, out
        assert int(out.strip()) == own          # this host forbids lowering it: kept, not failed
        status, out = await run_to_exit(lab, b, pod, "cat /proc/self/oom_score_adj", oom_score_adj=900)
        assert int(out.strip()) == 900
    lab.run(body)


def test_host_pid_namespace_container_sees_host_processes(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b, pid=base.NamespaceMode.NODE)
        status, out = await run_to_exit(lab, b, pod, "echo $$; ls /proc | grep -c '^[0-9]'")
        assert status.exit_code == 0, out
        pid, count = (int(x) for x in out.split())
        assert pid != 1 and count > 20
    lab.run(body)


def test_files_left_in_writable_layer_are_removed_with_the_container(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "echo data > /written"))
        await _wait_exit(b, c.id)
        assert (c.scratch / "upper/written").exists()
        await b.delete_container(c.id)
        assert not (c.scratch / "upper").exists()
        assert os.listdir(c.scratch) == []
    lab.run(body)


def test_process_security_caps_user_and_seccomp_are_applied(lab: Lab) -> None:
    """CVE-2022-29162: inheritable/ambient empty; a non-root user has no effective capabilities;
    RuntimeDefault seccomp blocks unshare (runtime.linux.process_security, applied by the init)."""
    from runtime.linux import seccomp

    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        status, out = await run_to_exit(lab, b, pod, "grep -E '^Cap(Inh|Eff|Bnd|Amb)' /proc/self/status; id")
        assert status.exit_code == 0, out
        caps = dict(line.split(":\t") for line in out.splitlines()[:4])
        assert caps["CapInh"] == caps["CapAmb"] == "0000000000000000"
        assert caps["CapBnd"] == caps["CapEff"] == "00000000a80425fb"   # the 14 default capabilities
        assert out.splitlines()[4].startswith("uid=0(root)")
        status, out = await run_to_exit(lab, b, pod, "grep CapEff /proc/self/status; id",
                                        user=oci.User(uid=1000, gid=1000, additional_gids=(1234,)))
        assert out.splitlines()[0].split()[1] == "0000000000000000"
        assert out.splitlines()[1] == "uid=1000(app) gid=1000(app) groups=1234(extra)"
        cid = "e" * 64
        spec = lab.container_spec(pod, cid, ("sh", "-c", "unshare -U true && echo unshared || echo blocked"))
        spec["linux"]["seccomp"] = seccomp.runtime_default_profile(oci.DEFAULT_CAPABILITIES)
        c = await lab.container(b, pod, (), spec=spec)
        s = await _wait_exit(b, c.id)
        assert s.exit_code == 0 and "blocked" in _stdout(c.log_text()), c.log_text()
    lab.run(body)


def test_init_and_exec_processes_are_in_the_containers_cgroup_in_every_hierarchy(lab: Lab) -> None:
    """The init is forked straight into the v2 cgroup (clone3) and joins the v1 ones itself; an exec'd process
    the same. Inside the container's cgroup namespace its own cgroup is "/" in every hierarchy, so any line
    that is not ":/" is a hierarchy the process did not enter."""
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"))
        script = "cat /proc/1/cgroup; echo --; cat /proc/self/cgroup"
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", script)), 10, 1 << 20)
        assert r.exit_code == 0, r.stderr
        init, _, exec_ = r.stdout.decode().partition("--\n")
        for who, text in (("init", init), ("exec", exec_)):
            lines = text.split()
            assert any(line.startswith("0::") for line in lines), f"{who}: no cgroup v2 line in {lines}"
            assert len(lines) == len(list(Path("/proc/self/cgroup").read_text().split())), lines
            assert all(line.endswith(":/") for line in lines), f"{who} is outside its cgroup: {lines}"
    lab.run(body)


def _cgroup_of_child(cg: Cgroup, clone3: bool) -> list[str]:
    """/proc/self/cgroup of a child made by shim.fork_into after it wrote the files it was given."""
    r, w = os.pipe()
    pid, procs = shim.fork_into(cg, clone3)
    if pid == 0:
        try:
            os.close(r)
            cinit._enter_cgroup(procs)
            os.write(w, Path("/proc/self/cgroup").read_bytes())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text.split()


def test_fork_into_places_the_child_in_every_hierarchy_with_and_without_clone3(lab: Lab) -> None:
    assert sc.can_fork_into_cgroup(), f"kernel {os.uname().release} should have clone3 CLONE_INTO_CGROUP (5.7+)"
    hierarchy = cgroups.open_hierarchy()
    cg = hierarchy.cgroup(f"{lab.cgroup_base}/forked")
    cg.create()
    other_thread_may_end = threading.Event()
    try:
        for clone3 in (True, False):
            lines = _cgroup_of_child(cg, clone3)
            assert lines and all(line.split(":", 2)[2] == cg.path for line in lines), (clone3, lines)
        # With a second thread alive, clone3 takes the interpreter's full fork protocol (PyOS_*Fork*).
        other = threading.Thread(target=other_thread_may_end.wait)
        other.start()
        lines = _cgroup_of_child(cg, True)
        assert lines and all(line.split(":", 2)[2] == cg.path for line in lines), lines
    finally:
        other_thread_may_end.set()
        cg.destroy()
        hierarchy.cgroup(lab.cgroup_base).destroy()


def test_fork_into_a_cgroup_that_is_gone_fails_naming_the_field_and_forks_nothing(lab: Lab) -> None:
    cg = cgroups.open_hierarchy().cgroup(f"{lab.cgroup_base}/never-made")
    children_before = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
    with pytest.raises(shim.ShimError) as e:
        shim.fork_into(cg, True)
    assert e.value.field == "linux.cgroupsPath" and "never-made" in e.value.message
    assert Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text() == children_before


def test_a_terminal_container_has_its_pty_as_dev_console_and_others_have_none(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        script = ('[ "$(stat -L -c %t:%T /dev/console)" = "$(stat -L -c %t:%T "$(tty)")" ] && echo console-is-tty; '
                  'echo hello > /dev/console')
        status, out = await run_to_exit(lab, b, pod, script, tty=True)
        assert status.exit_code == 0, out
        assert "console-is-tty" in out and "hello" in out, out
        status, out = await run_to_exit(lab, b, pod, "[ -e /dev/console ] || echo no-console")
        assert (status.exit_code, out) == (0, "no-console\n")
    lab.run(body)
