"""Pod networking on Windows: HCN namespaces (computenetwork.dll) and CNI.

As in containerd, the runtime owns only the namespace: it creates an HCN
namespace per pod, passes its GUID to CNI as `CNI_NETNS`, and the plugin
(win-bridge, win-overlay, flannel, Calico) creates the endpoint on an existing
HNS network and attaches it. Every container of the pod joins the namespace
through `Networking.Namespace`; a Hyper-V pod's utility VM gets one network
adapter per endpoint. HostProcess pods use the host network: no namespace.

`NamespaceManager` is idempotent: creating a namespace that exists (same pod,
after a restart) returns it, deleting one that is gone succeeds, and an
endpoint still attached at delete time is detached first.

Which namespaces are ours: HCN namespaces carry no owner or label, so the
manager keeps a ledger (`attach_ledger(dir)`: one file per namespace GUID
holding the pod id, written before HcnCreateNamespace, removed after the
delete). At daemon restart `gc(known pods)` deletes every ledger namespace
whose pod has no record any more, and never touches a namespace it did not
create (containerd's, HNS defaults).
"""

from __future__ import annotations

import ctypes as C
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.base import RuntimeFailure
from runtime.windows import _abi
from runtime.windows._marshal import Free, guid_in, take_wstr, wstr, wstr_in

log = logging.getLogger(__name__)

SCHEMA = {"Major": 2, "Minor": 0}
HCN_E_NAMESPACE_NOT_FOUND = 0x803B000C
HCN_E_ENDPOINT_NOT_FOUND = 0x803B0004
NOT_FOUND = frozenset({HCN_E_NAMESPACE_NOT_FOUND, HCN_E_ENDPOINT_NOT_FOUND, 0x80070490, 0x80070002})


class HcnError(RuntimeFailure):
    def __init__(self, call: str, hr: int, record: str | None) -> None:
        self.call, self.hr, self.record = call, _abi.unsigned(hr), record
        detail = ""
        if record:
            try:
                detail = ": " + str(json.loads(record).get("Error", record))
            except (ValueError, AttributeError):
                detail = f": {record[:200]}"
        super().__init__(f"{call} failed with 0x{self.hr:08X}{detail}")

    @property
    def not_found(self) -> bool:
        return self.hr in NOT_FOUND


@dataclass(frozen=True)
class Endpoint:
    id: str
    mac: str = ""
    ip: str = ""


# ---------------------------------------------------------------- documents


def namespace_settings() -> dict[str, Any]:
    return {"SchemaVersion": SCHEMA}


def endpoint_attach(endpoint_id: str, *, add: bool) -> dict[str, Any]:
    """HcnModifyNamespace request. hcsshim sends `EndpointId` (the HNS doc says `Id`; unverified which wins)."""
    return {"ResourceType": "Endpoint", "RequestType": "Add" if add else "Remove",
            "Settings": {"EndpointId": endpoint_id}}


def query(filter_: Mapping[str, Any] | None = None, *, detailed: bool = False) -> dict[str, Any]:
    """An HCN query: `Filter` is JSON inside a string."""
    out: dict[str, Any] = {"SchemaVersion": SCHEMA, "Flags": 1 if detailed else 0}
    if filter_:
        out["Filter"] = json.dumps(dict(filter_), separators=(",", ":"))
    return out


def namespace_endpoints(properties: Mapping[str, Any]) -> list[str]:
    """Endpoint ids from a namespace's properties (`Resources` of type Endpoint)."""
    out = []
    for r in properties.get("Resources") or []:
        if isinstance(r, Mapping) and r.get("Type") == "Endpoint":
            data = r.get("Data") or {}
            if isinstance(data, Mapping) and data.get("ID"):
                out.append(str(data["ID"]).lower())
    return out


def cni_environment(command: str, *, container_id: str, namespace: str, ifname: str, plugin_path: str,
                    args: Mapping[str, str]) -> dict[str, str]:
    """The CNI plugin environment for a Windows pod: the HCN namespace GUID is the netns."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": namespace,
        "CNI_IFNAME": ifname,
        "CNI_PATH": plugin_path,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in args.items()),
    }


# ---------------------------------------------------------------- the native surface


class HcnApi(Protocol):
    def create_namespace(self, namespace_id: str, settings: str) -> None: ...
    def namespace_properties(self, namespace_id: str) -> str | None:
        """Properties JSON, or None if the namespace does not exist."""
        ...
    def modify_namespace(self, namespace_id: str, request: str) -> None: ...
    def delete_namespace(self, namespace_id: str) -> None: ...
    def endpoint_properties(self, endpoint_id: str) -> str | None: ...


class ComputeNetworkApi:
    """`HcnApi` over computenetwork.dll (bound with `_abi.COMPUTENETWORK`); strings freed with CoTaskMemFree."""

    def __init__(self, dll: Any, free: Free) -> None:
        self._dll = dll
        self._free = free

    def _check(self, call: str, hr: int, record: C.c_void_p) -> None:
        text = take_wstr(record, self._free)
        if _abi.unsigned(hr) >= 0x80000000:
            raise HcnError(call, hr, text)

    def create_namespace(self, namespace_id: str, settings: str) -> None:
        g, s, handle, record = guid_in(namespace_id), wstr(settings), C.c_void_p(), C.c_void_p()
        hr = self._dll.HcnCreateNamespace(C.byref(g), s, C.byref(handle), C.byref(record))
        self._check("HcnCreateNamespace", hr, record)
        self._dll.HcnCloseNamespace(handle)

    def _open(self, namespace_id: str) -> C.c_void_p | None:
        g, handle, record = guid_in(namespace_id), C.c_void_p(), C.c_void_p()
        hr = self._dll.HcnOpenNamespace(C.byref(g), C.byref(handle), C.byref(record))
        try:
            self._check("HcnOpenNamespace", hr, record)
        except HcnError as e:
            if e.not_found:
                return None
            raise
        return handle

    def namespace_properties(self, namespace_id: str) -> str | None:
        handle = self._open(namespace_id)
        if handle is None:
            return None
        try:
            props, record = C.c_void_p(), C.c_void_p()
            q = wstr(json.dumps(query()))
            hr = self._dll.HcnQueryNamespaceProperties(handle, q, C.byref(props), C.byref(record))
            text = take_wstr(props, self._free)
            self._check("HcnQueryNamespaceProperties", hr, record)
            return text or "{}"
        finally:
            self._dll.HcnCloseNamespace(handle)

    def modify_namespace(self, namespace_id: str, request: str) -> None:
        handle = self._open(namespace_id)
        if handle is None:
            raise HcnError("HcnOpenNamespace", HCN_E_NAMESPACE_NOT_FOUND, None)
        try:
            record = C.c_void_p()
            hr = self._dll.HcnModifyNamespace(handle, wstr(request), C.byref(record))
            self._check("HcnModifyNamespace", hr, record)
        finally:
            self._dll.HcnCloseNamespace(handle)

    def delete_namespace(self, namespace_id: str) -> None:
        g, record = guid_in(namespace_id), C.c_void_p()
        hr = self._dll.HcnDeleteNamespace(C.byref(g), C.byref(record))
        self._check("HcnDeleteNamespace", hr, record)

    def endpoint_properties(self, endpoint_id: str) -> str | None:
        g, handle, record = guid_in(endpoint_id), C.c_void_p(), C.c_void_p()
        hr = self._dll.HcnOpenEndpoint(C.byref(g), C.byref(handle), C.byref(record))
        try:
            self._check("HcnOpenEndpoint", hr, record)
        except HcnError as e:
            if e.not_found:
                return None
            raise
        try:
            props, record = C.c_void_p(), C.c_void_p()
            hr = self._dll.HcnQueryEndpointProperties(handle, wstr_in(json.dumps(query())), C.byref(props),
                                                      C.byref(record))
            text = take_wstr(props, self._free)
            self._check("HcnQueryEndpointProperties", hr, record)
            return text or "{}"
        finally:
            self._dll.HcnCloseEndpoint(handle)


# ---------------------------------------------------------------- the manager


class NamespaceManager:
    """Pod namespaces, idempotent. The namespace id is derived from the pod id, so it survives a restart."""

    def __init__(self, hcn: HcnApi, instance: str = "cri-shim") -> None:
        self._hcn = hcn
        self._lock = threading.Lock()
        # Namespaced UUIDs make our namespaces recognisable per daemon instance.
        self._space = uuid.uuid5(uuid.NAMESPACE_URL, f"cri-shim:{instance}")
        self._ledger: Path | None = None

    def attach_ledger(self, directory: Path) -> None:
        """Record the namespaces this daemon creates under `directory` (persistent), so `gc` can find them."""
        directory.mkdir(parents=True, exist_ok=True)
        self._ledger = directory

    def namespace_id(self, sandbox_id: str) -> str:
        return str(uuid.uuid5(self._space, sandbox_id))

    def ensure(self, sandbox_id: str) -> str:
        ns = self.namespace_id(sandbox_id)
        with self._lock:
            if self._hcn.namespace_properties(ns) is None:
                self._record(ns, sandbox_id)      # before creating: a crash in between leaves it findable
                self._hcn.create_namespace(ns, json.dumps(namespace_settings()))
        return ns

    def _record(self, namespace: str, sandbox_id: str) -> None:
        if self._ledger is None:
            return
        tmp = self._ledger / f".{namespace}.tmp"
        tmp.write_text(sandbox_id)
        os.replace(tmp, self._ledger / namespace)

    def _forget(self, namespace: str) -> None:
        if self._ledger is not None:
            (self._ledger / namespace).unlink(missing_ok=True)

    def gc(self, known_sandboxes: set[str]) -> list[str]:
        """Delete our namespaces (those in the ledger) whose pod is not in `known_sandboxes`; their GUIDs."""
        if self._ledger is None:
            return []
        removed = []
        for entry in sorted(self._ledger.iterdir()):
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)          # a record cut short by a crash: its create never ran
                continue
            sandbox_id = entry.read_text().strip()
            if sandbox_id in known_sandboxes:
                continue
            try:
                self.delete(entry.name)
            except HcnError as e:
                log.warning("cannot delete the HCN namespace %s of the removed pod %s: %s", entry.name,
                            sandbox_id, e.message)
                continue
            log.info("removed the HCN namespace %s of pod %s, which no longer exists", entry.name, sandbox_id)
            removed.append(entry.name)
        return removed

    def endpoints(self, namespace: str) -> list[Endpoint]:
        props = self._hcn.namespace_properties(namespace)
        if props is None:
            return []
        out = []
        for ep in namespace_endpoints(json.loads(props)):
            raw = self._hcn.endpoint_properties(ep)
            if raw is None:
                continue
            data = json.loads(raw)
            ips = data.get("IpConfigurations") or []
            out.append(Endpoint(ep, str(data.get("MacAddress", "")),
                                str(ips[0].get("IpAddress", "")) if ips and isinstance(ips[0], Mapping) else ""))
        return out

    def delete(self, namespace: str) -> None:
        """Detach what CNI DEL left attached, then delete; a namespace that is gone is fine."""
        with self._lock:
            props = self._hcn.namespace_properties(namespace)
            if props is None:
                self._forget(namespace)
                return
            for ep in namespace_endpoints(json.loads(props)):
                try:
                    self._hcn.modify_namespace(namespace, json.dumps(endpoint_attach(ep, add=False)))
                except HcnError as e:
                    if not e.not_found:
                        raise
            try:
                self._hcn.delete_namespace(namespace)
            except HcnError as e:
                if not e.not_found:
                    raise
            self._forget(namespace)
