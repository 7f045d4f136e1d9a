"""Configuration: TOML file (stdlib tomllib) + command-line overrides.

The schema is the set of dataclasses below; each field's `doc` is printed by
`cri-shim config default` and copied into deploy/config.toml. Unknown keys and
wrong types are errors naming the file, the key and the reason: a silently
ignored typo in a runtime's config is a support ticket waiting to happen.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_shim.errors import ConfigError, InvalidArgument
from cri_shim.images import platform, reference
from cri_shim.services.failpoints import parse_failpoints

DEFAULT_CONFIG_FILE = Path("/etc/cri-shim/config.toml")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def _doc(text: str, default: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class ServerConfig:
    socket: str = _doc("CRI endpoint (unix socket, mode 0660). kubelet: --container-runtime-endpoint=unix://<socket>.",
                       "/run/cri-shim/cri-shim.sock")
    root: str = _doc("Persistent state: metadata database, image content, snapshots, container bundles.",
                     "/var/lib/cri-shim")
    state: str = _doc("Volatile state (tmpfs): pod shim sockets, exit files, pinned namespaces.", "/run/cri-shim")
    log_level: str = _doc("One of debug, info, warning, error. info logs one line per RPC.", "info")
    shutdown_timeout: float = _doc("Seconds SIGTERM/SIGINT waits for in-flight RPCs before the daemon exits.", 10.0)
    metrics_address: str = _doc('Prometheus metrics on http://<address>/metrics; host:port on loopback, port 0 '
                                'picks a free one, "" disables.', "127.0.0.1:9460")


@dataclass(frozen=True)
class RuntimeConfig:
    cgroup_driver: str = _doc('"cgroupfs" or "systemd" (systemd only when systemd is PID 1). '
                              "Reported to kubelet by the RuntimeConfig RPC.", "cgroupfs")
    runc_path: str = _doc('The runc binary behind runtime handler "runc" (RuntimeClass handler: runc): pods of that '
                          'handler run in the same pod shims, their containers through runc. The handler exists only '
                          'when this file is there; "" disables it.', "/usr/sbin/runc")
    ksm: str = _doc('Kernel samepage merging (KSM) of the pod shims\' memory. "mark": the memory each shim shares '
                    "with its zygote is marked mergeable, so on a node running KSM (/sys/kernel/mm/ksm/run = 1) "
                    "the pages a shim copied only for CPython's reference counts are merged back (per-pod PSS "
                    '4.6 -> 0.95 MiB measured at 50 pods); nothing happens while KSM is off. "start": also '
                    "start KSM at daemon start if it is off (KSM then scans the memory marked mergeable: the shims', and "
                    'that of any other program that asked for it, e.g. VMs). "off": mark nothing. Containers '
                    "are never mergeable (the marks are on the shim's mappings, which execve discards).", "mark")


@dataclass(frozen=True)
class NetworkConfig:
    cni_conf_dir: str = _doc("Directory searched for the CNI network config (first .conflist/.conf by name).",
                             "/etc/cni/net.d")
    cni_bin_dirs: list[str] = _doc("Directories searched for CNI plugin binaries, in order.",
                                   ["/opt/cni/bin", "/usr/lib/cni"])
    mode: str = _doc('Which network pods get: "auto" = the CNI network when a usable config exists, else the '
                     'built-in bridge; "cni" = CNI only (NetworkReady is false without a config); "builtin" = '
                     "always the built-in bridge.", "auto")
    cni_plugin_timeout: float = _doc("Seconds one CNI plugin call (ADD, DEL, CHECK) may take before it is killed.",
                                     60.0)
    builtin_subnet: str = _doc("IPv4 subnet of the built-in network; the first address is the bridge's "
                               "(the pods' gateway), the others go to pods. Must not overlap a network of the host.",
                               "10.88.0.0/16")
    builtin_bridge: str = _doc("Name of the built-in network's bridge (created when the first pod needs it).",
                               "crishim0")
    builtin_masquerade: bool = _doc("Masquerade (SNAT) pod traffic leaving the built-in network, so pods reach "
                                    "other hosts without routes back to the pod subnet.", True)
    nft_table: str = _doc("nftables table (family ip) holding the built-in network's NAT and hostPort rules.",
                          "cri_shim")


@dataclass(frozen=True)
class StreamingConfig:
    address: str = _doc("IP address of the streaming server (Exec/Attach/PortForward URLs). Keep it on loopback: "
                        "kubelet proxies to it and the URLs carry no other authentication.", "127.0.0.1")
    port: int = _doc("TCP port of the streaming server; 0 picks a free port at start.", 0)
    idle_timeout: float = _doc("Seconds a streaming connection may stay silent before it is closed (4 h).", 14400.0)
    stream_creation_timeout: float = _doc("Seconds a client has to open all streams of a session (and both "
                                          "streams of a port-forward pair).", 30.0)
    max_tokens: int = _doc("Streaming URLs handed out but not yet used (each valid 1 minute); more are refused "
                           "with RESOURCE_EXHAUSTED.", 1000)


@dataclass(frozen=True)
class RegistryConfig:
    config_path: str = _doc("Directory of per-registry settings in containerd's hosts.toml format: "
                            "<config_path>/<host>/hosts.toml (mirrors tried in order, CA, skip_verify, plain http). "
                            '"" = every registry over https, no mirrors.', "")
    credentials_file: str = _doc('Registry credentials in Docker\'s config.json layout ({"auths": {"<host>": '
                                 '{"auth": "<base64 user:password>"}}}), read at each pull; "" = none.', "")


@dataclass(frozen=True)
class ImagesConfig:
    max_concurrent_downloads: int = _doc("Layers downloaded (and unpacked) at the same time, over all pulls.", 3)
    pull_progress_timeout: float = _doc("Seconds a pull may receive no data before it fails; 0 = no limit.", 300.0)
    pinned_images: list[str] = _doc("Images reported as pinned (kubelet never garbage-collects them).",
                                    ["registry.k8s.io/pause:3.10"])
    platform: str = _doc('Platform pulled from multi-platform images, os/arch[/variant]; "" = this machine\'s.', "")
    max_layer_bytes: int = _doc("Largest uncompressed layer accepted, in bytes (decompression bomb guard); "
                                "0 = no limit.", 64 << 30)


@dataclass(frozen=True)
class LifecycleConfig:
    cgroup_parent: str = _doc("cgroupfs parent of pods whose PodSandboxConfig has no cgroup_parent (crictl, critest): "
                              "each such pod gets <cgroup_parent>/<sandbox id>. kubelet always sends its own "
                              "(/kubepods/...). Must contain \"cri-shim\" so the pods are identifiable.",
                              "/cri-shim")
    creation_claim_timeout: float = _doc("Seconds a sandbox or container whose creator's deadline expired waits "
                                         "for kubelet's retry (same metadata) before it is cleaned up.", 120.0)
    failpoints: str = _doc('TEST ONLY: "phase=action,..." (actions: error, kill, delay:<s>) to inject failures '
                           'into RunPodSandbox/CreateContainer/StartContainer/StopContainer/Remove*. "" = off; '
                           "the CRI_SHIM_FAILPOINTS environment variable works the same way.", "")


@dataclass(frozen=True)
class WindowsConfig:
    state_dir: str = _doc("Windows nodes only: the Windows runtime's pod records and utility VM disks.",
                          "C:\\ProgramData\\cri-shim\\windows")
    owner: str = _doc("HCS Owner of every compute system this daemon creates. At start, systems with this owner "
                      "that no pod record names are terminated; use a distinct owner per daemon on one node.",
                      "cri-shim")
    grpc_port: int = _doc("Windows nodes only: the daemon serves gRPC on tcp://127.0.0.1:<grpc_port> (grpcio cannot "
                          "serve named pipes). Any local user can reach this port.", 10270)
    pipe: str = _doc("Windows nodes only: named pipe relayed to grpc_port, for kubelet "
                     "--container-runtime-endpoint=npipe://./pipe/cri-shim. \"\" = no relay (kubelet then uses "
                     "tcp://127.0.0.1:<grpc_port>).", "\\\\.\\pipe\\cri-shim")
    uvm_processor_count: int = _doc("Hyper-V handler (runhcs-wcow-hypervisor): virtual processors of each pod's "
                                    "utility VM.", 2)
    uvm_memory_mb: int = _doc("Hyper-V handler: memory of each pod's utility VM, in MiB.", 1024)
    operation_timeout: float = _doc("Seconds an HCS create/start may take before it is cancelled (hcsshim: 240).",
                                    240.0)
    test_fake_hcs: str = _doc("TEST ONLY, never on a node: a directory. When set (on Linux), the Windows runtime "
                              "handlers are registered on the fake HCS/HCN/layers/job objects of "
                              "runtime/windows/testing (in this daemon's memory, state under server.state), so CRI "
                              "flows for Windows pods can be tested; what the fake saw is written to "
                              "<dir>/fake-hcs.json at shutdown. \"\" = off (the default).", "")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    windows: WindowsConfig = field(default_factory=WindowsConfig)

    @property
    def socket_path(self) -> Path:
        return Path(self.server.socket)

    @property
    def root_dir(self) -> Path:
        return Path(self.server.root)

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


LOG_LEVELS = ("debug", "info", "warning", "error")
CGROUP_DRIVERS = ("cgroupfs", "systemd")
KSM_MODES = ("off", "mark", "start")     # as runtime.linux.backend.KSM_MODES (not importable on Windows)


def load(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read `path` (or the default file if it exists), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = str(path) if path else str(DEFAULT_CONFIG_FILE)
    if path is not None or DEFAULT_CONFIG_FILE.exists():
        raw = _read_toml(path or DEFAULT_CONFIG_FILE)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    config: Config = _build(Config, raw, source, "")
    _validate(config, source)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file (permission denied)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _build(cls: type[Any], raw: Any, source: str, prefix: str) -> Any:
    where = f"[{prefix}]" if prefix else "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a table, got {_toml_type(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {_key(prefix, key)} (known keys: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        key = _key(prefix, name)
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, key)  # type: ignore[arg-type]
        else:
            values[name] = _check_type(hint, value, source, key)
    return cls(**values)


def _check_type(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{source}: {key}: expected a list of {_type_name(item)}, got {_toml_type(value)}")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, types.UnionType) or not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {_type_name(hint)}, got {_toml_type(value)} {value!r}")
    return value


def _validate(config: Config, source: str) -> None:
    s = config.server
    for key in ("socket", "root", "state"):
        if not Path(getattr(s, key)).is_absolute():
            raise ConfigError(f"{source}: server.{key}: must be an absolute path, got {getattr(s, key)!r}")
    if len(s.socket.encode()) > UNIX_PATH_MAX:
        raise ConfigError(f"{source}: server.socket: path is {len(s.socket.encode())} bytes; "
                          f"unix sockets allow at most {UNIX_PATH_MAX}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"{source}: server.log_level: must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    if s.shutdown_timeout < 0:
        raise ConfigError(f"{source}: server.shutdown_timeout: must be >= 0, got {s.shutdown_timeout}")
    if s.metrics_address:
        parse_host_port(s.metrics_address, f"{source}: server.metrics_address")
    _validate_streaming(config.streaming, source)
    _validate_network(config.network, source)
    _validate_images(config, source)
    _validate_lifecycle(config.lifecycle, source)
    _validate_windows(config.windows, source)
    if config.runtime.runc_path and not Path(config.runtime.runc_path).is_absolute():
        raise ConfigError(f"{source}: runtime.runc_path: must be an absolute path or \"\", "
                          f"got {config.runtime.runc_path!r}")
    if config.runtime.ksm not in KSM_MODES:
        raise ConfigError(f"{source}: runtime.ksm: must be one of {', '.join(KSM_MODES)}, got {config.runtime.ksm!r}")
    if config.runtime.cgroup_driver not in CGROUP_DRIVERS:
        raise ConfigError(f"{source}: runtime.cgroup_driver: must be one of {', '.join(CGROUP_DRIVERS)}, "
                          f"got {config.runtime.cgroup_driver!r}")


def _validate_streaming(st: StreamingConfig, source: str) -> None:
    try:
        ipaddress.ip_address(st.address)
    except ValueError:
        raise ConfigError(f"{source}: streaming.address: must be an IP address (e.g. 127.0.0.1 or ::1), "
                          f"got {st.address!r}") from None
    if not 0 <= st.port <= 65535:
        raise ConfigError(f"{source}: streaming.port: must be 0-65535, got {st.port}")
    for key in ("idle_timeout", "stream_creation_timeout"):
        if getattr(st, key) <= 0:
            raise ConfigError(f"{source}: streaming.{key}: must be > 0 seconds, got {getattr(st, key)}")
    if st.max_tokens < 1:
        raise ConfigError(f"{source}: streaming.max_tokens: must be >= 1, got {st.max_tokens}")


NETWORK_MODES = ("auto", "cni", "builtin")
IFNAME_MAX = 15  # IFNAMSIZ - 1
_IFNAME_FORBIDDEN = set("/:\"' \t\n\0")


def _validate_network(n: NetworkConfig, source: str) -> None:
    if n.mode not in NETWORK_MODES:
        raise ConfigError(f"{source}: network.mode: must be one of {', '.join(NETWORK_MODES)}, got {n.mode!r}")
    if not Path(n.cni_conf_dir).is_absolute():
        raise ConfigError(f"{source}: network.cni_conf_dir: must be an absolute path, got {n.cni_conf_dir!r}")
    for d in n.cni_bin_dirs:
        if not Path(d).is_absolute():
            raise ConfigError(f"{source}: network.cni_bin_dirs: {d!r} is not an absolute path")
    if n.cni_plugin_timeout <= 0:
        raise ConfigError(f"{source}: network.cni_plugin_timeout: must be > 0 seconds, got {n.cni_plugin_timeout}")
    problem = builtin_subnet_problem(n.builtin_subnet)
    if problem:
        raise ConfigError(f"{source}: network.builtin_subnet: {problem}")
    b = n.builtin_bridge
    if not b or len(b) > IFNAME_MAX or b in (".", "..") or set(b) & _IFNAME_FORBIDDEN:
        raise ConfigError(f"{source}: network.builtin_bridge: {b!r} is not a valid interface name "
                          f"(1-{IFNAME_MAX} characters, no '/', ':', quotes or spaces)")
    if not _NFT_NAME.match(n.nft_table):
        raise ConfigError(f"{source}: network.nft_table: {n.nft_table!r} is not a valid nftables table name "
                          "(a letter, then letters, digits or '_', at most 64 characters)")


_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def builtin_subnet_problem(text: str) -> str:
    """Why `text` cannot be the built-in network's subnet, or "" when it can."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        return f"{text!r} is not an IPv4 subnet in CIDR form (e.g. 10.88.0.0/16): {e}"
    if not isinstance(net, ipaddress.IPv4Network):
        return f"{text!r} is IPv6; the built-in network is IPv4 only (use a CNI config for IPv6)"
    if not 8 <= net.prefixlen <= 30:
        return f"{text!r}: the prefix length must be 8-30 (room for a gateway and pods), got /{net.prefixlen}"
    for reserved, what in ((ipaddress.ip_network("127.0.0.0/8"), "loopback"),
                           (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
                           (ipaddress.ip_network("224.0.0.0/3"), "multicast/reserved"),
                           (ipaddress.ip_network("0.0.0.0/8"), "this-network")):
        if net.overlaps(reserved):
            return f"{text!r} overlaps the {what} range {reserved}"
    return ""


def _validate_images(config: Config, source: str) -> None:
    r, i = config.registry, config.images
    for key in ("config_path", "credentials_file"):
        value = getattr(r, key)
        if value and not Path(value).is_absolute():
            raise ConfigError(f"{source}: registry.{key}: must be an absolute path, got {value!r}")
    if i.max_concurrent_downloads < 1:
        raise ConfigError(f"{source}: images.max_concurrent_downloads: must be >= 1, got {i.max_concurrent_downloads}")
    if i.pull_progress_timeout < 0:
        raise ConfigError(f"{source}: images.pull_progress_timeout: must be >= 0, got {i.pull_progress_timeout}")
    if i.max_layer_bytes < 0:
        raise ConfigError(f"{source}: images.max_layer_bytes: must be >= 0, got {i.max_layer_bytes}")
    if i.platform:
        try:
            platform.parse(i.platform)
        except ValueError as e:
            raise ConfigError(f"{source}: images.platform: {e}") from None
    for name in i.pinned_images:
        try:
            reference.parse_lookup(name)
        except InvalidArgument as e:
            raise ConfigError(f"{source}: images.pinned_images: {e.message}") from None


_WINDOWS_ABS = re.compile(r"^([A-Za-z]:\\|/)")
PIPE_PREFIX = "\\\\.\\pipe\\"
_HCS_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _validate_windows(w: WindowsConfig, source: str) -> None:
    if not _WINDOWS_ABS.match(w.state_dir):
        raise ConfigError(f"{source}: windows.state_dir: must be an absolute path (C:\\...), got {w.state_dir!r}")
    if not _HCS_OWNER.match(w.owner):
        raise ConfigError(f"{source}: windows.owner: {w.owner!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not 1 <= w.grpc_port <= 65535:
        raise ConfigError(f"{source}: windows.grpc_port: must be 1-65535, got {w.grpc_port}")
    if w.pipe and (not w.pipe.lower().startswith(PIPE_PREFIX) or len(w.pipe) == len(PIPE_PREFIX)):
        raise ConfigError(f"{source}: windows.pipe: must be \"\" or \\\\.\\pipe\\<name>, got {w.pipe!r}")
    if w.uvm_processor_count < 1:
        raise ConfigError(f"{source}: windows.uvm_processor_count: must be >= 1, got {w.uvm_processor_count}")
    if w.uvm_memory_mb < 256:
        raise ConfigError(f"{source}: windows.uvm_memory_mb: must be >= 256, got {w.uvm_memory_mb}")
    if w.operation_timeout <= 0:
        raise ConfigError(f"{source}: windows.operation_timeout: must be > 0 seconds, got {w.operation_timeout}")
    if w.test_fake_hcs and (not w.test_fake_hcs.startswith("/") or sys.platform == "win32"):
        raise ConfigError(f"{source}: windows.test_fake_hcs: a test-only switch for Linux test runs; it takes an "
                          f"absolute directory and is refused on Windows, got {w.test_fake_hcs!r}")


def _validate_lifecycle(lc: LifecycleConfig, source: str) -> None:
    parent = lc.cgroup_parent
    if not parent.startswith("/") or parent == "/" or ".." in parent.split("/") or "cri-shim" not in parent:
        raise ConfigError(f"{source}: lifecycle.cgroup_parent: must be an absolute cgroup path below / that "
                          f"contains \"cri-shim\", got {parent!r}")
    if lc.creation_claim_timeout < 0:
        raise ConfigError(f"{source}: lifecycle.creation_claim_timeout: must be >= 0 seconds, "
                          f"got {lc.creation_claim_timeout}")
    if lc.failpoints:
        try:
            parse_failpoints(lc.failpoints)
        except ValueError as e:
            raise ConfigError(f"{source}: lifecycle.failpoints: {e}") from None


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(hint, str(hint))


def _toml_type(value: Any) -> str:
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
                    (list, "array"), (dict, "table")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def render_default() -> str:
    """The full default configuration as commented TOML (`cri-shim config default`)."""
    lines = ["# cri-shim configuration. Every key is shown with its default value.",
             "# Path: /etc/cri-shim/config.toml (or `cri-shim serve --config FILE`).", ""]
    defaults = Config()
    for section in dataclasses.fields(Config):
        lines.append(f"[{section.name}]")
        obj = getattr(defaults, section.name)
        for f in dataclasses.fields(obj):
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
