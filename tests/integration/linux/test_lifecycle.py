"""Exit codes, signals, stop, CRI logs, reopen, attach, exec, zombies, stats, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from runtime import base, oci
from runtime.linux.backend import LinuxBackend
from tests.harness.linux_lab import Lab, wait_for


async def wait_exit(b: LinuxBackend, cid: str, timeout: float = 20) -> base.ContainerStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        status = await b.container_status(cid)
        if status.state == base.ContainerState.EXITED:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"container {cid} did not exit within {timeout}s")


def records(log: str) -> list[tuple[str, str, str]]:
    """(stream, tag, content) of each CRI log line, checking the timestamp format on the way."""
    out = []
    for line in log.split("\n")[:-1]:
        ts, stream, tag, content = line.split(" ", 3)
        assert ts.endswith("Z") and "T" in ts, ts
        assert stream in ("stdout", "stderr") and tag in ("P", "F"), line[:80]
        out.append((stream, tag, content))
    return out


def processes_in(cgroup_parent: str, cid: str) -> list[int]:
    path = Path(f"/sys/fs/cgroup/pids{cgroup_parent}/{cid}/cgroup.procs")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


# ---------------------------------------------------------------- exits and signals


def test_exit_codes_and_reasons(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        ok = await lab.container(b, pod, ("true",))
        bad = await lab.container(b, pod, ("sh", "-c", "exit 3"))
        # Not PID 1 of its own namespace (PID 1 ignores signals it has no handler for): SIGTERM ends it.
        host_pid_pod = await lab.pod(b, pid=base.NamespaceMode.NODE)
        killed = await lab.container(b, host_pid_pod, ("sleep", "1000"))
        await b.kill_container(killed.id, signal.SIGTERM)
        s_ok, s_bad, s_killed = [await wait_exit(b, c.id) for c in (ok, bad, killed)]
        assert (s_ok.exit_code, s_ok.reason) == (0, base.REASON_COMPLETED)
        assert (s_bad.exit_code, s_bad.reason) == (3, base.REASON_ERROR)
        assert (s_killed.exit_code, s_killed.reason) == (128 + signal.SIGTERM, base.REASON_ERROR)
        for s in (s_ok, s_bad, s_killed):
            assert s.started_at >= s.created_at > 0 and s.finished_at >= s.started_at
    lab.run(body)


def test_stop_uses_the_stop_signal_then_kills_after_the_grace_period(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        trapping = await lab.container(b, pod, ("sh", "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done"))
        stubborn = await lab.container(b, pod, ("sh", "-c", "trap '' TERM; sleep 1000 & wait; sleep 1000"))
        assert await wait_for(lambda: "ready" in trapping.log_text())   # the trap is set
        t0 = time.monotonic()
        s1 = await b.stop_container(trapping.id, 10)
        assert s1.exit_code == 7 and time.monotonic() - t0 < 5
        t0 = time.monotonic()
        s2 = await b.stop_container(stubborn.id, 1)
        elapsed = time.monotonic() - t0
        assert s2.exit_code == 137 and 0.9 < elapsed < 8, elapsed
        assert processes_in(pod.cgroup_parent, stubborn.id) == []   # the orphaned sleep went too
        assert (await b.stop_container(stubborn.id, 1)).exit_code == 137  # idempotent
    lab.run(body)


def test_kill_with_sigkill_reaches_every_process_of_a_host_pid_container(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b, pid=base.NamespaceMode.NODE)
        c = await lab.container(b, pod, ("sh", "-c", "sleep 1000 & sleep 1000 & wait"))
        assert await wait_for(lambda: len(processes_in(pod.cgroup_parent, c.id)) == 3)
        await b.kill_container(c.id, signal.SIGKILL)
        s = await wait_exit(b, c.id)
        assert s.exit_code == 137
        assert await wait_for(lambda: processes_in(pod.cgroup_parent, c.id) == [])
    lab.run(body)


def test_custom_stop_signal_is_used(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        cid = "f" * 64
        info = lab.container_paths(pod, cid)
        (lab.root / "a-file").write_text("")
        oci.write(info.bundle, lab.container_spec(pod, cid, ("sh", "-c", "trap 'exit 9' USR1; echo ready; while :; do sleep 0.05; done")))
        await b.create_container(base.ContainerSpec(
            id=cid, sandbox_id=pod.id, bundle_dir=str(info.bundle),
            rootfs=base.RootfsSpec(layers=(str(lab.rootfs),), scratch=str(info.scratch)),
            stdio=base.StdioSpec(log_path=str(info.log_path)), stop_signal=signal.SIGUSR1))
        await b.start_container(cid)
        assert await wait_for(lambda: "ready" in info.log_text())
        assert (await b.stop_container(cid, 10)).exit_code == 9
    lab.run(body)


# ---------------------------------------------------------------- logs


def test_cri_log_long_lines_split_and_no_trailing_newline(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo; "
                                         "echo to-stderr >&2; printf 'with\\r\\n'; printf no-newline"))
        await wait_exit(b, c.id)
        recs = records(c.log_text())
        long = [r for r in recs if r[0] == "stdout" and set(r[2]) == {"a"}]
        assert [(t, len(x)) for _s, t, x in long] == [("P", 16384), ("P", 16384), ("F", 40000 - 32768)]
        assert ("stderr", "F", "to-stderr") in recs
        assert ("stdout", "F", "with") in recs            # a trailing \r\n is dropped like \n
        # A partial last line is written as P. Only the order within a stream is kept: when both
        # pipes are readable at once the shim may read stdout's end before stderr's line.
        assert [r for r in recs if r[0] == "stdout"][-1] == ("stdout", "P", "no-newline")
    lab.run(body)


def test_reopen_log_recreates_the_file_and_moves_writes_there(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.02; done"))
        assert await wait_for(lambda: c.log_text().count("\n") > 3)
        rotated = Path(str(c.log_path) + ".1")
        os.rename(c.log_path, rotated)
        await b.reopen_log(c.id)
        assert c.log_path.exists()   # the file exists when the call returns
        assert await wait_for(lambda: c.log_text().count("\n") > 3)
        size = rotated.stat().st_size
        await asyncio.sleep(0.3)
        assert rotated.stat().st_size == size   # the old file stopped growing
        records(c.log_text())
        await b.stop_container(c.id, 0)
    lab.run(body)


def test_logs_keep_flowing_while_nothing_reads_the_attach_streams(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' 'b' | fold -w 1000"))
        session = await b.attach(c.id, stdin=False, stdout=True, stderr=True)   # attached but never read
        s = await wait_exit(b, c.id, 30)
        assert s.exit_code == 0
        assert sum(len(x) for _s, _t, x in records(c.log_text())) == 3000000
        await session.close()
    lab.run(body)


# ---------------------------------------------------------------- attach and exec


def test_attach_stdin_stdout_with_stdin_once_and_two_attachers(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "while read l; do echo got:$l; done; echo bye"),
                                stdin=True, stdin_once=True)
        a1 = await b.attach(c.id, stdin=True, stdout=True, stderr=True)
        a2 = await b.attach(c.id, stdin=False, stdout=True, stderr=False)
        await a1.write_stdin(b"hello\n")
        assert await asyncio.wait_for(a1.read(), 5) == (base.StreamKind.STDOUT, b"got:hello\n")
        assert await asyncio.wait_for(a2.read(), 5) == (base.StreamKind.STDOUT, b"got:hello\n")
        await a1.close_stdin()   # stdin_once: the container's stdin closes with the first attacher's
        assert await asyncio.wait_for(a2.read(), 5) == (base.StreamKind.STDOUT, b"bye\n")
        assert await asyncio.wait_for(a2.wait(), 5) == 0
        assert (await wait_exit(b, c.id)).exit_code == 0
        await a1.close()
        await a2.close()
        assert [r[2] for r in records(c.log_text())] == ["got:hello", "bye"]
    lab.run(body)


def test_attach_to_a_tty_container_and_resize(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh",), stdin=True, tty=True)
        a = await b.attach(c.id, stdin=True, stdout=True, stderr=False)
        await a.resize(91, 37)
        await a.write_stdin(b"stty size; tty; exit 4\n")
        out = b""
        while (chunk := await asyncio.wait_for(a.read(), 5)) is not None:
            out += chunk[1]
        assert b"37 91" in out and b"/dev/pts/0" in out, out
        assert await a.wait() == 4
        await a.close()
    lab.run(body)


def test_exec_with_tty_and_resize(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"))
        s = await b.exec(c.id, base.ExecSpec(args=("sh",), tty=True, stdin=True))
        await s.resize(123, 45)
        await s.write_stdin(b"stty size; tty; echo $HOSTNAME-$$; exit 5\n")
        out = b""
        while (chunk := await asyncio.wait_for(s.read(), 5)) is not None:
            out += chunk[1]
        assert b"45 123" in out and b"/dev/pts/" in out, out
        assert await s.wait() == 5
        await s.close()
        await b.stop_container(c.id, 0)
    lab.run(body)


def test_exec_runs_in_the_container_with_its_env_and_cwd(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"), env=(oci.DEFAULT_PATH_ENV, "FOO=bar"), cwd="/tmp")
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", "echo $FOO; pwd; hostname; cat /proc/1/cmdline")),
                              10, 1 << 20)
        assert r.exit_code == 0 and not r.timed_out
        lines = r.stdout.decode().split("\n")
        assert lines[:3] == ["bar", "/tmp", "lab-pod"]
        assert lines[3].startswith("sleep")
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", "echo $FOO; pwd; echo err >&2; exit 3"),
                                                  env=("FOO=override",), cwd="/"), 10, 1 << 20)
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"override\n/\n", b"err\n")
        with pytest.raises(base.InvalidSpec) as e:
            await b.exec_sync(c.id, base.ExecSpec(args=("no-such-binary",)), 10, 1 << 20)
        assert "no-such-binary" in e.value.message
        await b.stop_container(c.id, 0)
        with pytest.raises(base.WrongState):
            await b.exec_sync(c.id, base.ExecSpec(args=("true",)), 10, 1 << 20)
    lab.run(body)


def test_exec_sync_timeout_kills_the_whole_process_group(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"))
        t0 = time.monotonic()
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", "sleep 500 & sleep 600 & echo started; wait")),
                              2.0, 1 << 20)   # time enough for sh to print on a loaded machine
        assert r.timed_out and time.monotonic() - t0 < 6
        assert r.stdout == b"started\n"
        # only the container's own init is left in its cgroup
        assert await wait_for(lambda: len(processes_in(pod.cgroup_parent, c.id)) == 1)
        await b.stop_container(c.id, 0)
    lab.run(body)


def test_exec_sync_output_is_capped(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sleep", "1000"))
        r = await b.exec_sync(c.id, base.ExecSpec(args=("sh", "-c", "head -c 5000000 /dev/zero; echo done >&2")),
                              20, 1 << 20)
        assert len(r.stdout) == 1 << 20 and r.stderr == b"done\n" and r.exit_code == 0
        await b.stop_container(c.id, 0)
    lab.run(body)


# ---------------------------------------------------------------- zombies


def _zombie_children(parent: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == parent:
            out.append(int(pid))
    return out


@pytest.mark.parametrize("pid_mode", [base.NamespaceMode.POD, base.NamespaceMode.NODE])
def test_orphans_are_reaped(lab: Lab, pid_mode: base.NamespaceMode) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b, pid=pid_mode)
        script = "for i in $(seq 60); do (sleep 0.2 &); done; echo spawned; sleep 1000"
        c = await lab.container(b, pod, ("sh", "-c", script))
        assert await wait_for(lambda: "spawned" in c.log_text())
        # the orphans have exited (sh exec'd its last command, so it is the one process left)...
        assert await wait_for(lambda: len(processes_in(pod.cgroup_parent, c.id)) == 1)
        reapers = [pod.status.monitor_pid or 0]
        if "pid" in pod.status.namespaces:
            reapers.append(int(pod.status.namespaces["pid"].split("/")[2]))   # the pod's PID 1
        for reaper in reapers:   # ...and a reaper of ours collected them: no zombie stays
            assert await wait_for(lambda: _zombie_children(reaper) == []), f"zombies under {reaper}"
        # ps shows who they are (set through /proc/self/comm, see syscalls.set_process_name)
        names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in reapers]
        assert names == ["cri-shim-pod", "cri-shim-init"][:len(reapers)], names
        await b.stop_container(c.id, 0)
    lab.run(body)


# ---------------------------------------------------------------- stats


def test_container_stats(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        c = await lab.container(b, pod, ("sh", "-c", "head -c 3000000 /dev/urandom > /blob; "
                                         "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"))
        assert await wait_for(lambda: (c.scratch / "upper/blob").exists()
                              and (c.scratch / "upper/blob").stat().st_size == 3000000)
        pids = Path(f"/sys/fs/cgroup/pids{pod.cgroup_parent}/{c.id}/pids.current")
        assert await wait_for(lambda: pids.read_text().strip() == "1")   # sh has reaped head (its zombie counts)
        await asyncio.sleep(0.3)   # some CPU time counted
        st = await b.container_stats(c.id)
        assert st.timestamp_ns > 0
        assert st.cpu_usage_ns and st.cpu_usage_ns > 1_000_000
        assert st.memory_usage_bytes and st.memory_working_set_bytes is not None
        assert st.pids == 1   # the shell exec'd its last command
        assert st.writable_layer_bytes and st.writable_layer_bytes >= 3000000
        assert st.writable_layer_inodes and st.writable_layer_inodes >= 1
        sst = await b.sandbox_stats(pod.id)
        assert c.id in sst.containers and sst.cpu_usage_ns and sst.cpu_usage_ns >= st.cpu_usage_ns
        await b.update_resources(c.id, {"memory": {"limit": 128 << 20}})
        limit = Path(f"/sys/fs/cgroup/memory{pod.cgroup_parent}/{c.id}/memory.limit_in_bytes").read_text()
        assert int(limit) == 128 << 20
        await b.stop_container(c.id, 0)
    lab.run(body)


# ---------------------------------------------------------------- bad input


def _shim_fds(pid: int | None) -> dict[str, str]:
    """The shim's open fds but its sockets (requests in flight come and go)."""
    fds = Path(f"/proc/{pid}/fd")
    targets = {f: os.readlink(fds / f) for f in os.listdir(fds)}
    return {f: t for f, t in targets.items() if not t.startswith("socket:")}


def test_bad_specs_fail_at_create_naming_the_field_and_leave_nothing(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        cases = [
            ({"extra_namespaces": (oci.Namespace("mount"), oci.Namespace("network", "/nonexistent/netns"))},
             base.InvalidSpec, "linux.namespaces[1].path"),
            ({"mounts": (oci.Mount("/data", "/nonexistent/source", "bind", ("rbind",)),)},
             base.InvalidSpec, "mounts["),
            ({"resources": {"hugepageLimits": [{"pageSize": "3MB", "limit": 1 << 21}]}},
             base.Unsupported, "linux.resources.hugepageLimits"),
            ({"resources": {"unified": {"memory.max": "1"}}}, base.Unsupported, "linux.resources.unified"),
            ({"resources": {"cpu": {"cpus": "999"}}}, base.Unsupported, "linux.resources.cpu.cpus"),
            ({"args": ("/no/such/entrypoint",)}, base.InvalidSpec, "process.args[0]"),
            ({"args": ("missing-from-path",)}, base.InvalidSpec, "process.args[0]"),
            ({"args": ()}, base.InvalidSpec, "process.args"),
            ({"user": oci.User(uid=2**32 - 1)}, base.InvalidSpec, "process.user.uid"),
        ]
        first = await lab.container(b, pod, ("true",))
        await wait_exit(b, first.id)
        await b.delete_container(first.id)
        fds_before = _shim_fds(pod.status.monitor_pid)
        for kwargs, error, field in cases:
            args = kwargs.pop("args", ("true",))
            with pytest.raises(error) as e:
                await lab.container(b, pod, args, start=False, **kwargs)  # type: ignore[arg-type]
            assert field in e.value.message, (field, e.value.message)
            assert "Traceback" not in e.value.message
        # nothing is left: no container cgroup, no container state, no writable layer, no fd in the shim
        assert _shim_fds(pod.status.monitor_pid) == fds_before
        assert [p.name for p in Path(f"/sys/fs/cgroup/memory{pod.cgroup_parent}").iterdir() if p.is_dir()] \
            == ["monitor"]
        assert os.listdir(lab.state / "pods" / pod.id / "containers") == []
        assert not any((d / "scratch/upper").exists() for d in pod.dir.glob("c*"))
        # and the pod still works
        c = await lab.container(b, pod, ("true",))
        assert (await wait_exit(b, c.id)).exit_code == 0
    lab.run(body)


def test_a_log_file_that_cannot_be_opened_fails_create_after_the_init_was_forked_and_leaves_nothing(lab: Lab) -> None:
    """The shim opens the log while the freshly forked init plans the spec; failing then must take the init
    down too (no process of the shim's but the pod's own)."""
    async def body(b: LinuxBackend) -> None:
        pod = await lab.pod(b)
        shim_pid = pod.status.monitor_pid
        children = Path(f"/proc/{shim_pid}/task/{shim_pid}/children")
        before = children.read_text()
        cid = "f" * 64
        info = lab.container_paths(pod, cid)
        (lab.root / "a-file").write_text("")
        oci.write(info.bundle, lab.container_spec(pod, cid, ("true",)))
        with pytest.raises(base.InvalidSpec) as e:
            await b.create_container(base.ContainerSpec(
                id=cid, sandbox_id=pod.id, bundle_dir=str(info.bundle),
                rootfs=base.RootfsSpec(layers=(str(lab.rootfs),), scratch=str(info.scratch)),
                stdio=base.StdioSpec(log_path=str(lab.root / "a-file" / "c.log"))))
        assert "log_path" in e.value.message and "a-file" in e.value.message
        assert children.read_text() == before
        assert os.listdir(lab.state / "pods" / pod.id / "containers") == []
        assert not (info.scratch / "upper").exists()
        assert [p.name for p in Path(f"/sys/fs/cgroup/unified{pod.cgroup_parent}").iterdir() if p.is_dir()] \
            == ["monitor"]
    lab.run(body)


def test_bad_pod_specs_fail_and_leave_nothing(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        with pytest.raises(base.InvalidSpec) as e:
            await b.create_sandbox(base.SandboxSpec(
                id="a" * 64, name="x/y", hostname="h", sandbox_dir=str(lab.root), log_directory=str(lab.root),
                linux=base.LinuxSandboxSpec(cgroup_parent=f"{lab.cgroup_base}/bad", netns_path="/nonexistent")))
        assert "netns_path" in e.value.message
        with pytest.raises(base.InvalidSpec) as e:
            await b.create_sandbox(base.SandboxSpec(
                id="b" * 64, name="x/y", hostname="h", sandbox_dir=str(lab.root), log_directory=str(lab.root),
                linux=base.LinuxSandboxSpec(cgroup_parent=f"{lab.cgroup_base}/bad", network=base.NamespaceMode.NODE,
                                            sysctls={"kernel.core_pattern": "|/evil"})))
        assert "kernel.core_pattern" in e.value.message
        with pytest.raises(base.InvalidSpec) as e:
            await b.create_sandbox(base.SandboxSpec(
                id="c" * 64, name="x/y", hostname="h", sandbox_dir=str(lab.root), log_directory=str(lab.root),
                linux=base.LinuxSandboxSpec(cgroup_parent=f"{lab.cgroup_base}/bad", network=base.NamespaceMode.NODE,
                                            sysctls={"net.ipv4.ip_forward": "1"})))
        assert "host" in e.value.message
        assert os.listdir(lab.state / "pods") == []
    lab.run(body)


def test_pod_sysctls_apply_inside_the_pod_only(lab: Lab) -> None:
    async def body(b: LinuxBackend) -> None:
        host = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip()
        pod = await lab.pod(b, sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"})
        c = await lab.container(b, pod, ("sh", "-c", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start "
                                         "/proc/sys/kernel/shm_rmid_forced"))
        await wait_exit(b, c.id)
        assert [r[2] for r in records(c.log_text())] == ["80", "1"]
        assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() == host
    lab.run(body)
