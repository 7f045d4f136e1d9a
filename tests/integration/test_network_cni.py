"""CNI with Debian's containernetworking-plugins (bridge, host-local, portmap), and NetworkReady transitions."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.errors import FailedPrecondition
from cri_shim.network.cni import CniPluginError
from cri_shim.network.types import Bandwidth, DnsConfig, PortMapping, PortProtocol
from runtime.linux import netns
from tests.harness.daemon import make_workdir
from tests.integration.network_env import (
    CNI_BRIDGE, CNI_NETWORK, Env, bridge_conflist, host_address, http_get, http_get_in, httpd, link_exists,
    network_config, remove_workdir,
)

TCP = PortProtocol.TCP
# A plugin that fails every ADD (with a CNI error on stdout) and succeeds every DEL: it makes the chain fail
# after bridge and host-local have already given the pod an interface and an address.
FAILING_PLUGIN = """#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion": "1.0.0", "code": 999, "msg": "cstfail refuses", "details": "on purpose"}'
  exit 1
fi
exit 0
"""
# A plugin that records its stdin and environment, then passes prevResult on (to see what we send).
RECORDING_PLUGIN = """#!/bin/sh
input=$(cat)
echo "$input" > "$RECORD_DIR/$CNI_COMMAND.json"
env | grep '^CNI_' | sort > "$RECORD_DIR/$CNI_COMMAND.env"
if [ "$CNI_COMMAND" = ADD ]; then
  echo "$input" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))'
fi
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    workdir = make_workdir("cni")
    e = Env(workdir, network_config(workdir, mode="cni"))
    (workdir / "net.d" / "10-cstnet.conflist").write_text(bridge_conflist(workdir))
    yield e
    e.close()
    assert not link_exists(CNI_BRIDGE)
    remove_workdir(workdir)


def host_local_ips(env: Env) -> set[str]:
    d = env.workdir / "ipam" / CNI_NETWORK
    return {p.name for p in d.iterdir() if p.name[0].isdigit()} if d.is_dir() else set()


def bridge_ports() -> set[str]:
    d = Path("/sys/class/net") / CNI_BRIDGE / "brif"
    return set(os.listdir(d)) if d.is_dir() else set()


def test_cni_bridge_pods_reach_each_other_and_the_host_reaches_them(env: Env) -> None:
    a, b = env.spec("cni-a"), env.spec("cni-b")
    sa, sb = env.setup(a), env.setup(b)
    assert sa.network == CNI_NETWORK and sa.ip.startswith("10.232.") and sa.ip != sb.ip
    assert host_local_ips(env) >= {sa.ip, sb.ip}
    with httpd(sa.netns_path, env.workdir / "www-a", "cni a"), httpd(sb.netns_path, env.workdir / "www-b", "cni b"):
        assert http_get(sa.ip, 80) == "cni a"
        assert http_get_in(sa.netns_path, sb.ip, 80) == "cni b"
        assert http_get_in(sb.netns_path, sa.ip, 80) == "cni a"
    env.run(env.manager.check(a.sandbox_id, sa.netns_path))   # CNI CHECK of the cached result passes on a healthy pod
    for spec, st in ((a, sa), (b, sb)):
        env.teardown(spec.sandbox_id)
        assert st.ip not in host_local_ips(env), "host-local still holds the IP"
        assert not env.netns_path(spec.sandbox_id).exists()
        assert list((env.workdir / "root" / "cni" / "results").glob(f"*{spec.sandbox_id}*")) == []
    assert bridge_ports() == set()


def test_cni_hostport_via_portmap_on_loopback_and_the_host_address(env: Env) -> None:
    spec = env.spec("cni-hp", ports=(PortMapping(TCP, 80, 18180),))
    st = env.setup(spec)
    with httpd(st.netns_path, env.workdir / "www-hp", "cni published"):
        assert http_get("127.0.0.1", 18180) == "cni published"
        assert http_get(host_address(), 18180) == "cni published"
    env.teardown(spec.sandbox_id)
    with pytest.raises(OSError):
        http_get("127.0.0.1", 18180, timeout=2)


def test_failed_add_is_rolled_back_with_del_and_the_netns_removed(env: Env) -> None:
    plugin = env.workdir / "bin" / "cstfail"
    plugin.write_text(FAILING_PLUGIN)
    plugin.chmod(0o755)
    conf = env.workdir / "net.d" / "05-cstfail.conflist"   # sorts first: it is the network in use
    conf.write_text(bridge_conflist(env.workdir, [{"type": "cstfail"}]))
    try:
        before_ips, before_ports = host_local_ips(env), bridge_ports()
        spec = env.spec("doomed", ports=(PortMapping(TCP, 80, 18181),))
        with pytest.raises(CniPluginError, match="cstfail ADD .* cstfail refuses \\(on purpose\\)"):
            env.setup(spec)
        assert host_local_ips(env) == before_ips, "the IP the failed ADD allocated was not released"
        assert bridge_ports() == before_ports, "the veth of the failed ADD is still on the bridge"
        assert not env.netns_path(spec.sandbox_id).exists()
        assert list((env.workdir / "root" / "cni" / "results").glob(f"*{spec.sandbox_id}*")) == []
        assert env.store.query("SELECT * FROM network_hostports WHERE sandbox_id = ?", (spec.sandbox_id,)) == []
    finally:
        conf.unlink()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in env.registry.collect() for s in m.samples}
    assert samples[("cri_shim_cni_plugin_failures_total", (("command", "ADD"), ("plugin", "cstfail")))] == 1
    assert samples[("cri_shim_cni_plugin_duration_seconds_count", (("command", "ADD"), ("plugin", "bridge")))] >= 1


def test_del_uses_the_cached_config_after_the_conflist_is_gone_and_tolerates_a_missing_netns(env: Env) -> None:
    # Without ipMasq: bridge's DEL removes its masquerade chain only from inside the netns, so with the netns
    # gone that chain would stay on the host (a limitation of the plugin; containerd has it too).
    conf = env.workdir / "net.d" / "05-cstnomasq.conflist"
    plugins = json.loads(bridge_conflist(env.workdir))["plugins"]
    plugins[0]["ipMasq"] = False
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": plugins}))
    spec = env.spec("orphan")
    st = env.setup(spec)
    assert st.ip in host_local_ips(env)
    conf.unlink()                            # the config the pod was set up with is gone ...
    netns.remove(st.netns_path)              # ... and so is its netns
    env.teardown(spec.sandbox_id)
    env.teardown(spec.sandbox_id)
    assert st.ip not in host_local_ips(env)


def test_runtime_config_reaches_the_plugins(env: Env) -> None:
    record = env.workdir / "record"
    record.mkdir()
    plugin = env.workdir / "bin" / "cstrecord"
    plugin.write_text(RECORDING_PLUGIN)
    plugin.chmod(0o755)
    conf = env.workdir / "net.d" / "05-cstrecord.conflist"
    conf.write_text(bridge_conflist(env.workdir, [{"type": "cstrecord", "capabilities": {
        "portMappings": True, "dns": True, "bandwidth": True, "cgroupPath": True}}]))
    os.environ["RECORD_DIR"] = str(record)
    try:
        spec = env.spec("recorded", ports=(PortMapping(TCP, 80, 18182), PortMapping(TCP, 81)),
                        dns=DnsConfig(servers=("10.10.10.10",), searches=("svc.local",), options=("ndots:5",)),
                        bandwidth=Bandwidth(ingress_rate=10_000_000), cgroup_parent="/kubepods/cstnet")
        st = env.setup(spec)
        add = json.loads((record / "ADD.json").read_text())
        assert add["name"] == CNI_NETWORK and add["cniVersion"] == "1.0.0"
        assert add["prevResult"]["ips"][0]["address"].startswith(st.ip + "/")
        assert add["runtimeConfig"] == {
            "portMappings": [{"hostPort": 18182, "containerPort": 80, "protocol": "tcp", "hostIP": ""}],
            "dns": {"servers": ["10.10.10.10"], "searches": ["svc.local"], "options": ["ndots:5"]},
            "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 2**32 - 1},
            "cgroupPath": "/kubepods/cstnet",
        }
        env_lines = (record / "ADD.env").read_text().splitlines()
        assert f"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=cstnet;K8S_POD_NAME=recorded;" \
               f"K8S_POD_INFRA_CONTAINER_ID={spec.sandbox_id};K8S_POD_UID={spec.uid}" in env_lines
        assert f"CNI_NETNS={st.netns_path}" in env_lines and "CNI_IFNAME=eth0" in env_lines
        assert f"CNI_CONTAINERID={spec.sandbox_id}" in env_lines
        env.teardown(spec.sandbox_id)
        deleted = json.loads((record / "DEL.json").read_text())
        assert deleted["prevResult"]["ips"][0]["address"].startswith(st.ip + "/")   # DEL got the cached result
    finally:
        conf.unlink()
        del os.environ["RECORD_DIR"]


def test_network_ready_transitions_with_the_conf_dir() -> None:
    workdir = make_workdir("cniready")
    e = Env(workdir, network_config(workdir, mode="cni"))
    confdir = workdir / "net.d"
    try:
        r = e.manager.status()
        assert not r.ready and r.reason == "NetworkPluginNotReady"
        assert str(confdir) in r.message
        (confdir / "10-bad.conflist").write_text("{not json")
        r = e.manager.status()
        assert not r.ready and "10-bad.conflist: not valid JSON" in r.message
        (confdir / "20-unknown.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "cstnosuchplugin"}]}))
        r = e.manager.status()
        assert not r.ready and "plugin 'cstnosuchplugin' not found in" in r.message
        with pytest.raises(FailedPrecondition, match="the pod network is not ready: no usable network config"):
            e.setup(e.spec("too-early"))
        (confdir / "30-good.conflist").write_text(bridge_conflist(workdir))
        r = e.manager.status()
        assert r.ready and "30-good.conflist" in r.message   # ready at once: no watcher lag
        (confdir / "30-good.conflist").unlink()
        assert not e.manager.status().ready
        # "auto" falls back to the built-in network instead of being not ready.
        auto = e.new_manager(mode="auto")
        r = auto.status()
        assert r.ready and "built-in network" in r.message and "cstnosuchplugin" in r.message
    finally:
        e.close()
        remove_workdir(workdir)


SLOW_PLUGIN = """#!/bin/sh
cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
sleep 300 &
echo $! > "$PID_FILE"
wait
"""


def test_a_plugin_that_hangs_is_killed_with_its_children_at_the_timeout(env: Env) -> None:
    plugin = env.workdir / "bin" / "cstslow"
    plugin.write_text(SLOW_PLUGIN)
    plugin.chmod(0o755)
    conf = env.workdir / "net.d" / "05-cstslow.conflist"
    conf.write_text(bridge_conflist(env.workdir, [{"type": "cstslow"}]))
    pid_file = env.workdir / "slow.pid"
    os.environ["PID_FILE"] = str(pid_file)
    slow = env.new_manager(cni_plugin_timeout=1.0)
    fast, env.manager = env.manager, slow
    try:
        before = host_local_ips(env)
        spec = env.spec("hangs")
        with pytest.raises(CniPluginError, match=r"cstslow did not finish within 1 s \(network.cni_plugin_timeout\)"):
            env.setup(spec)
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), "the plugin's child outlived the timeout"
        assert host_local_ips(env) == before      # rolled back with DEL
    finally:
        env.manager = fast
        slow.close()
        conf.unlink()
        del os.environ["PID_FILE"]
