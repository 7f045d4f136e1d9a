"""HCN namespaces and the CNI environment of Windows pods (fake HCN; the real HNS is Windows-only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.windows import network as N
from runtime.windows.testing.fakes import FakeHcn

EP = "5e3b7c1a-2d4f-4a6b-8c9d-0e1f2a3b4c5d"


def test_namespace_ids_are_stable_per_pod_and_distinct_per_instance() -> None:
    a, b = N.NamespaceManager(FakeHcn(), "node-a"), N.NamespaceManager(FakeHcn(), "node-b")
    assert a.namespace_id("pod1") == a.namespace_id("pod1")
    assert a.namespace_id("pod1") != a.namespace_id("pod2")
    assert a.namespace_id("pod1") != b.namespace_id("pod1")


def test_ensure_is_idempotent_and_delete_detaches_leftover_endpoints() -> None:
    hcn = FakeHcn()
    m = N.NamespaceManager(hcn, "t")
    ns = m.ensure("pod1")
    assert m.ensure("pod1") == ns
    assert [c for c, _ in hcn.calls] == ["create_namespace"]
    hcn.add_endpoint(ns, EP, "10.244.1.5", "00-15-5D-01-02-03")     # what CNI ADD left attached
    assert m.endpoints(ns) == [N.Endpoint(EP, "00-15-5D-01-02-03", "10.244.1.5")]
    m.delete(ns)
    m.delete(ns)                                                     # already gone: fine
    assert hcn.namespaces == {}
    detach = [json.loads(d) for c, d in hcn.calls if c == "modify_namespace"]
    assert detach == [{"ResourceType": "Endpoint", "RequestType": "Remove", "Settings": {"EndpointId": EP}}]


def test_delete_reports_real_failures() -> None:
    class Stuck(FakeHcn):
        def delete_namespace(self, namespace_id: str) -> None:
            raise N.HcnError("HcnDeleteNamespace", 0x80070005, '{"Error": "Access is denied."}')

    m = N.NamespaceManager(Stuck(), "t")
    ns = m.ensure("pod1")
    with pytest.raises(N.HcnError, match="0x80070005: Access is denied"):
        m.delete(ns)


def test_at_restart_our_namespaces_of_removed_pods_are_deleted_and_nothing_else(tmp_path: Path) -> None:
    hcn = FakeHcn()
    first = N.NamespaceManager(hcn, "t")
    first.attach_ledger(tmp_path / "hcn-namespaces")
    kept, gone, gone_attached = (first.ensure(p) for p in ("pod-kept", "pod-gone", "pod-gone-attached"))
    hcn.add_endpoint(gone_attached, EP, "10.244.1.5", "00-15-5D-01-02-03")   # CNI DEL never ran
    foreign = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
    hcn.create_namespace(foreign, '{"SchemaVersion":{"Major":2,"Minor":0}}')   # containerd's, or HNS's
    first.delete(first.ensure("pod-stopped"))                     # deleted normally: forgotten

    restarted = N.NamespaceManager(hcn, "t")                      # the next daemon, same state directory
    restarted.attach_ledger(tmp_path / "hcn-namespaces")
    assert sorted(restarted.gc({"pod-kept"})) == sorted([gone, gone_attached])
    assert sorted(hcn.namespaces) == sorted([kept, foreign])
    assert sorted(p.name for p in (tmp_path / "hcn-namespaces").iterdir()) == [kept]
    assert restarted.gc({"pod-kept"}) == []                       # idempotent


def test_gc_keeps_the_ledger_entry_of_a_namespace_it_could_not_delete(tmp_path: Path) -> None:
    class Stuck(FakeHcn):
        def delete_namespace(self, namespace_id: str) -> None:
            raise N.HcnError("HcnDeleteNamespace", 0x80070005, '{"Error": "Access is denied."}')

    m = N.NamespaceManager(Stuck(), "t")
    m.attach_ledger(tmp_path)
    ns = m.ensure("pod1")
    assert m.gc(set()) == []
    assert [p.name for p in tmp_path.iterdir()] == [ns]           # tried again at the next restart


def test_without_a_ledger_gc_touches_nothing() -> None:
    hcn = FakeHcn()
    m = N.NamespaceManager(hcn, "t")
    ns = m.ensure("pod1")
    assert m.gc(set()) == [] and list(hcn.namespaces) == [ns]


def test_query_filter_is_json_inside_a_string() -> None:
    assert N.query({"Name": "cbr0"}, detailed=True) == {
        "SchemaVersion": {"Major": 2, "Minor": 0}, "Flags": 1, "Filter": '{"Name":"cbr0"}'}
    assert N.namespace_settings() == {"SchemaVersion": {"Major": 2, "Minor": 0}}


def test_cni_gets_the_namespace_guid_as_netns() -> None:
    env = N.cni_environment("ADD", container_id="p" * 64, namespace="3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f",
                            ifname="eth0", plugin_path="C:\\opt\\cni\\bin",
                            args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"})
    assert env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "p" * 64,
                   "CNI_NETNS": "3a8c1f2e-7d6b-4c5a-9e8f-0a1b2c3d4e5f", "CNI_IFNAME": "eth0",
                   "CNI_PATH": "C:\\opt\\cni\\bin", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}


@pytest.mark.windows_only
def test_hcn_namespace_lifecycle_on_a_real_node() -> None:
    from runtime.windows.platform import windows_platform
    platform = windows_platform(lambda path: None, instance="cri-shim-test")  # type: ignore[arg-type,return-value]
    assert platform.namespaces is not None
    ns = platform.namespaces.ensure("windows-only-test")
    platform.namespaces.delete(ns)
