"""Command line: `cri-shim serve | config default | version | check`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

# gRPC's fork handlers can deadlock a forking child; the daemon never forks,
# and nothing it calls should try to make gRPC fork-aware either.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from cri_shim import __version__, config  # noqa: E402
from cri_shim.errors import ConfigError, StartupError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cri-shim", description="A Kubernetes container runtime (CRI v1).")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CRI daemon in the foreground")
    serve.add_argument("--config", type=Path, help=f"TOML config file (default {config.DEFAULT_CONFIG_FILE} if it exists)")
    serve.add_argument("--socket", help="CRI unix socket path (overrides server.socket)")
    serve.add_argument("--root", help="persistent state directory (overrides server.root)")
    serve.add_argument("--state", help="volatile state directory (overrides server.state)")
    serve.add_argument("--log-level", choices=config.LOG_LEVELS, help="overrides server.log_level")
    serve.add_argument("--metrics-address", help='host:port for /metrics, "" disables (overrides server.metrics_address)')
    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("default", help="print the full default configuration")
    sub.add_parser("version", help="print the version")
    check = sub.add_parser("check", help="report what this host supports")
    check.add_argument("--config", type=Path, help="config file whose CNI directories to check")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _serve(args: argparse.Namespace) -> int:
    overrides = {"server": {"socket": args.socket, "root": args.root, "state": args.state,
                            "log_level": args.log_level, "metrics_address": args.metrics_address}}
    cfg = config.load(args.config, overrides)
    import asyncio

    from cri_shim import logs, malloc
    from cri_shim.app import Daemon

    logs.setup(cfg.server.log_level)
    malloc.tune_for_streaming()  # before any thread starts: see cri_shim/malloc.py
    asyncio.run(Daemon(cfg).run())
    return 0


def _check(args: argparse.Namespace) -> int:
    from cri_shim.app import probe_host
    from cri_shim.network.cni_config import find_network_config

    cfg = config.load(args.config)
    host = probe_host()
    network = find_network_config(Path(cfg.network.cni_conf_dir), cfg.network.cni_bin_dirs)
    report: dict[str, Any] = dataclasses.asdict(host)
    report["cgroup_mode"] = host.cgroup_mode.value
    report["cgroup_driver_systemd_usable"] = host.systemd_pid1
    report["cni"] = {"ready": network.ready, "message": network.message}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        rows = [
            ("cgroups", f"{host.cgroup_mode.value}; controllers: {' '.join(host.cgroup_controllers) or 'none'}"),
            ("overlayfs", "yes" if host.overlayfs else "no"),
            ("seccomp", f"kernel {'yes' if host.seccomp_kernel else 'no'}; libseccomp {host.libseccomp or 'not found'}"),
            ("user namespaces", "yes" if host.user_namespaces else "no"),
            ("idmapped mounts", "kernel supports them" if host.idmapped_mounts_kernel else "kernel too old"),
            ("systemd cgroup driver", "usable" if host.systemd_pid1 else "not usable (systemd is not PID 1)"),
            ("CNI", network.message),
            ("kernel", host.kernel),
        ]
        width = max(len(k) for k, _ in rows)
        sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
        for problem in host.problems:
            sys.stdout.write(f"problem: {problem}\n")
    return 1 if host.problems else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            sys.stdout.write(config.render_default())
            return 0
        if args.command == "version":
            sys.stdout.write(f"cri-shim {__version__} (CRI v1, cri-api v0.37.2)\n")
            return 0
        return _check(args)
    except (ConfigError, StartupError) as e:
        sys.stderr.write(f"cri-shim: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
