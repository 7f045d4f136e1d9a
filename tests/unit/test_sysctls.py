"""Sysctl validation: namespaced keys only, no injection, nothing that would reach the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.base import InvalidSpec
from runtime.linux import sysctls
from runtime.linux.sysctls import Namespaces, check_sysctl, check_sysctls

PRIVATE = Namespaces(net=True, ipc=True, uts=True)


@pytest.mark.parametrize("key, path", [
    ("net.ipv4.ip_local_port_range", ("net", "ipv4", "ip_local_port_range")),
    ("net/ipv4/conf/eth0.100/forwarding", ("net", "ipv4", "conf", "eth0.100", "forwarding")),
    ("kernel.shm_rmid_forced", ("kernel", "shm_rmid_forced")),
    ("kernel.shmmax", ("kernel", "shmmax")),
    ("kernel.msgmax", ("kernel", "msgmax")),
    ("kernel.sem", ("kernel", "sem")),
    ("fs.mqueue.msg_max", ("fs", "mqueue", "msg_max")),
    ("kernel.domainname", ("kernel", "domainname")),
])
def test_namespaced_sysctls_are_accepted(key: str, path: tuple[str, ...]) -> None:
    assert check_sysctl(key, "1", PRIVATE) == path


@pytest.mark.parametrize("key", ["kernel.core_pattern", "vm.overcommit_memory", "fs.file-max",
                                 "kernel.hostname", "kernel.modprobe", "kernel.semx"])
def test_host_wide_sysctls_are_rejected(key: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        check_sysctl(key, "1", PRIVATE)
    assert key in err.value.field


def test_net_sysctls_are_rejected_with_the_host_network() -> None:
    with pytest.raises(InvalidSpec, match="host network namespace"):
        check_sysctl("net.ipv4.ip_forward", "1", Namespaces(net=False, ipc=True))


def test_ipc_sysctls_are_rejected_with_the_host_ipc_namespace() -> None:
    for key in ("kernel.shm_rmid_forced", "kernel.msgmnb", "kernel.sem", "fs.mqueue.queues_max"):
        with pytest.raises(InvalidSpec, match="host IPC namespace"):
            check_sysctl(key, "1", Namespaces(net=True, ipc=False))


def test_domainname_is_rejected_with_the_host_uts_namespace() -> None:
    with pytest.raises(InvalidSpec, match="host UTS"):
        check_sysctl("kernel.domainname", "x", Namespaces(net=True, ipc=True, uts=False))


@pytest.mark.parametrize("value", [
    "1+kernel.core_pattern=|/tmp/x",   # CVE-2022-0811: CRI-O's pinns split on '+'
    "1=2", "1\nkernel.core_pattern=|/x", "1\r", "1\0",
])
def test_values_with_injection_characters_are_rejected(value: str) -> None:
    with pytest.raises(InvalidSpec, match="forbidden character"):
        check_sysctl("kernel.shm_rmid_forced", value, PRIVATE)


@pytest.mark.parametrize("key", [
    "kernel.shm_rmid_forced=1+kernel.core_pattern", "net..ipv4", "net/../kernel/core_pattern",
    "net/ipv4/../../kernel", "", "net.ipv4.ip forward", "net.ipv4.x\n", "net/./x",
])
def test_malformed_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidSpec, match="invalid sysctl name"):
        check_sysctl(key, "1", PRIVATE)


def test_valid_values_with_spaces_and_tabs_are_kept() -> None:
    out = check_sysctls({"net.ipv4.ip_local_port_range": "1024\t65000", "kernel.sem": "250 32000 32 128"},
                        PRIVATE)
    assert out == ((("kernel", "sem"), "250 32000 32 128"),
                   (("net", "ipv4", "ip_local_port_range"), "1024\t65000"))


def test_write_refuses_a_proc_sys_that_is_not_procfs(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/shm_rmid_forced").write_text("0")
    with pytest.raises(OSError, match="not procfs"):
        sysctls.write_sysctls(((("kernel", "shm_rmid_forced"), "1"),), str(tmp_path))
    assert (tmp_path / "kernel/shm_rmid_forced").read_text() == "0"
