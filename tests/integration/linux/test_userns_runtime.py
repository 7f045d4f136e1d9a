"""The native runtime's user namespaces driven directly (no daemon): pods whose netns the caller made in the
host's user namespace (or that use the host network), where the pod shim makes the user namespace itself."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

import pytest

from runtime import base
from runtime.linux import netns
from runtime.linux.backend import LinuxBackend
from tests.harness.linux_lab import Lab, wait_for

HOST_ID = 200000
RANGE = (base.IdMapping(container_id=0, host_id=HOST_ID, size=65536),)


def status_ids(pid: int) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


@pytest.mark.parametrize("network", [base.NamespaceMode.POD, base.NamespaceMode.NODE])
def test_shim_makes_the_user_namespace_when_the_netns_is_the_hosts(lab: Lab, network: base.NamespaceMode) -> None:
    async def body(b: LinuxBackend) -> None:
        spec, pod = lab.pod_spec(network=network)
        assert spec.linux is not None
        spec = dataclasses.replace(spec, linux=dataclasses.replace(spec.linux, uid_mappings=RANGE,
                                                                   gid_mappings=RANGE))
        pod.status = await b.create_sandbox(spec)
        lab.pods.append(pod)
        assert "user" in pod.status.namespaces
        cid = "c-userns"
        oci_spec = lab.container_spec(pod, cid, ("sh", "-c", "id -u; stat -c %u /bin/sh /etc/hosts; sleep 100"))
        oci_spec["linux"]["namespaces"].append({"type": "user", "path": pod.status.namespaces["user"]})
        oci_spec["linux"]["uidMappings"] = oci_spec["linux"]["gidMappings"] = [
            {"containerID": 0, "hostID": HOST_ID, "size": 65536}]
        c = await lab.container(b, pod, (), spec=oci_spec)
        assert await wait_for(lambda: len(c.log_text().splitlines()) >= 3)
        assert [line.split(" ", 3)[-1] for line in c.log_text().splitlines()] == ["0", "0", "0"]
        st = await b.container_status(c.id)
        assert st.pid is not None and status_ids(st.pid) == (str(HOST_ID), str(HOST_ID))
    lab.run(body)


@pytest.mark.parametrize("pod_host_id", [HOST_ID, HOST_ID + 65536])
def test_shim_uses_the_netns_user_namespace_only_if_it_maps_the_pods_ranges(lab: Lab, pod_host_id: int) -> None:
    """A netns made in a user namespace (as the daemon does for userns pods): the shim pins that namespace,
    after checking it maps exactly the pod's ranges; a mismatch fails the pod and leaves nothing."""
    async def body(b: LinuxBackend) -> None:
        spec, pod = lab.pod_spec()
        assert spec.linux is not None
        owned = lab.root / "netns-owned"           # the lab removes its netns-* pins
        await netns.create_in_new_userns_async(owned, [(0, HOST_ID, 65536)], [(0, HOST_ID, 65536)])
        ranges = (base.IdMapping(container_id=0, host_id=pod_host_id, size=65536),)
        spec = dataclasses.replace(spec, linux=dataclasses.replace(spec.linux, netns_path=str(owned),
                                                                   uid_mappings=ranges, gid_mappings=ranges))
        if pod_host_id != HOST_ID:
            with pytest.raises(base.InvalidSpec, match="not the pod's"):
                await b.create_sandbox(spec)
            return
        pod.status = await b.create_sandbox(spec)
        lab.pods.append(pod)
        user = pod.status.namespaces["user"]
        fd = os.open(owned, os.O_RDONLY)
        try:
            owner = fcntl.ioctl(fd, 0xB701)           # NS_GET_USERNS
        finally:
            os.close(fd)
        try:
            assert os.stat(user).st_ino == os.fstat(owner).st_ino   # the very namespace owning the netns
        finally:
            os.close(owner)
    lab.run(body)
