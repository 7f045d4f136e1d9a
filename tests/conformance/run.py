"""Run critest against a fresh cri-shim and check the committed list of passing specs.

    python -m tests.conformance.run --critest bin/critest            # check (CI)
    python -m tests.conformance.run --critest bin/critest --update   # also add newly passing specs

The list (tests/conformance/passing.txt) only grows: any listed spec that does
not pass fails the check. Specs that cannot pass on this kind of host are in
known-failures.txt with the reason, and are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import stop_and_clean
from tests.harness.daemon import CNI_BRIDGE, TMP_BASE, Daemon, make_workdir, new_daemon
from tests.harness.leaks import cgroup_tag
from tests.harness.registry import LocalRegistry, start_registry
from tests.harness.testimages import push_all

HERE = Path(__file__).resolve().parent
PASSING = HERE / "passing.txt"
KNOWN = HERE / "known-failures.txt"
log = logging.getLogger("conformance")

# critest pulls these by their upstream names; the daemon fetches them from the local registry instead.
MIRRORED_REGISTRIES = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")


def start_mirror() -> tuple[LocalRegistry, Path]:
    """A local registry holding the critest image set under the original repository paths, and a hosts.toml
    directory that mirrors registry.k8s.io, gcr.io and k8s.gcr.io to it (names are kept)."""
    registry = start_registry()
    hosts = make_workdir("hosts")
    try:
        for name in MIRRORED_REGISTRIES:
            (hosts / name).mkdir()
            (hosts / name / "hosts.toml").write_text(
                f'server = "https://{name}"\n[host."http://{registry.host}"]\ncapabilities = ["pull", "resolve"]\n')
        started = time.monotonic()
        push_all(registry.host)
        log.info("critest images pushed to %s in %.1fs", registry.host, time.monotonic() - started)
    except BaseException:
        registry.stop()
        shutil.rmtree(hosts, ignore_errors=True)
        raise
    return registry, hosts


def read_list(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split("  #")[0].strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def spec_name(report: dict[str, object]) -> str:
    return " ".join([*report["ContainerHierarchyTexts"], report["LeafNodeText"]])  # type: ignore[misc]


def run_critest(critest: Path, daemon: Daemon, extra: list[str]) -> dict[str, str]:
    report = daemon.workdir / "critest-report.json"
    skip = "|".join(re.escape(s) for s in read_list(KNOWN))
    args = [str(critest), f"-runtime-endpoint={daemon.endpoint}", f"-image-endpoint={daemon.endpoint}",
            f"-ginkgo.json-report={report}", "-ginkgo.timeout=40m", "-ginkgo.no-color"]
    if skip:
        args.append(f"-ginkgo.skip={skip}")
    out = daemon.workdir / "critest.log"
    with open(out, "w") as f:
        subprocess.run(args + extra, stdout=f, stderr=subprocess.STDOUT, cwd=daemon.workdir, timeout=3000)
    if not report.exists():
        raise SystemExit(f"critest wrote no report; its output:\n{out.read_text()[-4000:]}")
    specs = json.loads(report.read_text())[0]["SpecReports"]
    return {spec_name(s): s["State"] for s in specs if s["LeafNodeType"] == "It"}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--critest", type=Path, required=True)
    ap.add_argument("--update", action="store_true", help="add newly passing specs to passing.txt")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, report)")
    ap.add_argument("--network", choices=("cni", "builtin"), default="cni",
                    help="pod network of the daemon: a CNI bridge conflist, or the built-in network")
    ap.add_argument("--builtin-bridge", default="cstcrit0", help="bridge name of the built-in network")
    ap.add_argument("--nft-table", default="cst_critest", help="nftables table of the built-in network")
    ap.add_argument("--builtin-subnet", default="10.216.0.0/16", help="subnet of the built-in network")
    ap.add_argument("--runc-path", default=None,
                    help='runtime.runc_path of the daemon (handler "runc"; pass -runtime-handler=runc to critest)')
    ap.add_argument("critest_args", nargs="*", help="extra critest flags, e.g. -ginkgo.focus=...")
    args = ap.parse_args()

    critest = args.critest.resolve()
    bridge = args.builtin_bridge if args.network == "builtin" else CNI_BRIDGE
    bridge_existed = os.path.exists(f"/sys/class/net/{bridge}")
    registry, hosts = start_mirror()
    try:
        # Pods critest makes without a cgroup parent go under one named after the test base (the leak check's tag).
        network = {"mode": "builtin", "builtin_bridge": args.builtin_bridge, "nft_table": args.nft_table,
                   "builtin_subnet": args.builtin_subnet} if args.network == "builtin" else {}
        runtime = {"runc_path": args.runc_path} if args.runc_path is not None else {}
        daemon = new_daemon({"registry": {"config_path": str(hosts)}, "network": network, "runtime": runtime,
                             "lifecycle": {"cgroup_parent": f"/cri-shim-{cgroup_tag(TMP_BASE)}"}},
                            cni=args.network == "cni", log_level="info").start()
    except BaseException:
        registry.stop()
        shutil.rmtree(hosts, ignore_errors=True)
        raise
    try:
        results = run_critest(critest, daemon, args.critest_args)
    finally:
        registry.stop()
        shutil.rmtree(hosts, ignore_errors=True)
        workdir = daemon.workdir
        if args.keep:
            daemon.stop()
            log.info("work dir kept: %s", workdir)
        else:
            saved = Path("/tmp/cri-shim-conformance-last")
            shutil.rmtree(saved, ignore_errors=True)
            for name in ("critest.log", "daemon.log", "critest-report.json"):
                if (workdir / name).exists():
                    saved.mkdir(exist_ok=True)
                    shutil.copy(workdir / name, saved / name)
            stop_and_clean(daemon)
        if not bridge_existed:   # host-wide: the bridge (and the built-in network's table) this run made
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            if args.network == "builtin":
                subprocess.run(["nft", "delete", "table", "ip", args.nft_table], capture_output=True, check=False)

    passed = sorted(n for n, state in results.items() if state == "passed")
    listed = read_list(PASSING)
    # A focused run (extra critest flags) checks only the listed specs it ran.
    focused = bool(args.critest_args)
    regressed = [n for n in listed
                 if results.get(n) != "passed" and not (focused and results.get(n) in (None, "skipped"))]
    new = [n for n in passed if n not in listed]
    counts: dict[str, int] = {}
    for state in results.values():
        counts[state] = counts.get(state, 0) + 1
    log.info("critest: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    log.info("listed as passing: %d; passing now: %d", len(listed), len(passed))
    for n in new:
        log.info("newly passing: %s", n)
    if args.update and new:
        PASSING.write_text("\n".join(sorted(set(listed) | set(new))) + "\n")
        log.info("added %d specs to %s", len(new), PASSING)
    if regressed:
        for n in regressed:
            log.error("REGRESSION: listed spec did not pass (%s): %s", results.get(n, "not run"), n)
        log.error("logs of this run: /tmp/cri-shim-conformance-last")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
