"""Pulls that go wrong: bad content, slow or lying registries, authentication, credentials, sharing, deadlines.

A `FaultProxy` (tests/harness/registry.py) sits between the daemon and the
real registry and corrupts, truncates, stalls or redirects chosen requests.
After every failure nothing may be stored: no image, no blob, no snapshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from tests.conftest import stop_and_clean
from tests.harness import imagebuild as ib
from tests.harness.daemon import Daemon, make_workdir, new_daemon
from tests.harness.registry import USER, FaultProxy, LocalRegistry, Rule, start_registry
from tests.integration.images_env import listed, pull, remove, rpc_error, small_image, status, store_files, write_hosts


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry: LocalRegistry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host, stall_seconds=20)
    yield p
    p.stop()


@pytest.fixture
def hosts_dir() -> Iterator[Path]:
    path = make_workdir("hosts")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def daemon_for(hosts_dir: Path, **images: object) -> Daemon:
    return new_daemon({"registry": {"config_path": str(hosts_dir)}, "images": dict(images)}).start()


def insecure(hosts_dir: Path, host: str) -> None:
    write_hosts(hosts_dir, host, f'server = "http://{host}"\n')


def wait_clean(d: Daemon, timeout: float = 15) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        files = store_files(d)
        if files == ([], []) or time.monotonic() > deadline:
            return files
        time.sleep(0.1)


def layer_digests(image: ib.Image) -> list[str]:
    return [d["digest"] for d in image.manifest_json()["layers"]]


@pytest.mark.parametrize("action, fragment", [
    ("corrupt", "digest mismatch"),
    ("truncate", "truncated blob"),
])
def test_bad_layer_content_fails_the_pull_and_stores_nothing(registry: LocalRegistry, proxy: FaultProxy,
                                                            hosts_dir: Path, action: str, fragment: str) -> None:
    image = small_image(f"bad-{action}", extra=[ib.file("payload", os.urandom(200_000))])
    ib.push(image, registry.host, f"faults/{action}", "v1")
    bad_layer = layer_digests(image)[1]
    proxy.rules.append(Rule(pattern=f"/blobs/{bad_layer}", action=action))
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir)
    try:
        c = d.client()
        err = rpc_error(pull, c, f"{proxy.host}/faults/{action}:v1")
        assert fragment in err.details() and bad_layer in err.details(), err.details()
        assert listed(c) == []
        assert wait_clean(d) == ([], [])
    finally:
        stop_and_clean(d)


def test_manifest_that_lies_about_a_layer_size_is_refused(registry: LocalRegistry, hosts_dir: Path) -> None:
    image = small_image("lying-size")
    doc = image.manifest_json()
    doc["layers"][1]["size"] += 10  # the registry accepts it; the blob is shorter than declared
    lying = ib.Blob(image.top.media_type, ib.canonical_json(doc))
    ib.push(ib.Image(lying, {**image.blobs, lying.digest: lying}), registry.host, "faults/size", "v1")
    insecure(hosts_dir, registry.host)
    d = daemon_for(hosts_dir)
    try:
        err = rpc_error(pull, d.client(), f"{registry.host}/faults/size:v1")
        assert "truncated" in err.details() or "size mismatch" in err.details(), err.details()
        assert wait_clean(d) == ([], [])
    finally:
        stop_and_clean(d)


def test_unsupported_layer_media_type_is_refused_before_download(registry: LocalRegistry, hosts_dir: Path) -> None:
    image = small_image("lzma")
    doc = image.manifest_json()
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+lzma"
    odd = ib.Blob(image.top.media_type, ib.canonical_json(doc))
    ib.push(ib.Image(odd, {**image.blobs, odd.digest: odd}), registry.host, "faults/lzma", "v1")
    insecure(hosts_dir, registry.host)
    d = daemon_for(hosts_dir)
    try:
        err = rpc_error(pull, d.client(), f"{registry.host}/faults/lzma:v1")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "unsupported media type 'application/vnd.oci.image.layer.v1.tar+lzma'" in err.details()
        assert store_files(d) == ([], [])
    finally:
        stop_and_clean(d)


def test_diff_id_mismatch_is_refused(registry: LocalRegistry, hosts_dir: Path) -> None:
    image = small_image("diffid")
    config = json.loads(image.config_blob().data)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "e" * 64
    cfg = ib.Blob(image.config_blob().media_type, ib.canonical_json(config))
    doc = image.manifest_json()
    doc["config"] = cfg.descriptor()
    top = ib.Blob(image.top.media_type, ib.canonical_json(doc))
    ib.push(ib.Image(top, {**image.blobs, cfg.digest: cfg, top.digest: top}), registry.host, "faults/diffid", "v1")
    insecure(hosts_dir, registry.host)
    d = daemon_for(hosts_dir)
    try:
        err = rpc_error(pull, d.client(), f"{registry.host}/faults/diffid:v1")
        assert "diff_id" in err.details() and "sha256:" + "e" * 64 in err.details()
        assert wait_clean(d) == ([], [])
    finally:
        stop_and_clean(d)


def test_no_progress_times_out(registry: LocalRegistry, proxy: FaultProxy, hosts_dir: Path) -> None:
    image = small_image("stall", extra=[ib.file("payload", os.urandom(300_000))])
    ib.push(image, registry.host, "faults/stall", "v1")
    proxy.rules.append(Rule(pattern=f"/blobs/{layer_digests(image)[1]}", action="stall"))
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir, pull_progress_timeout=1.5)
    try:
        started = time.monotonic()
        err = rpc_error(pull, d.client(), f"{proxy.host}/faults/stall:v1")
        assert time.monotonic() - started < 10
        assert "no data for 1.5s" in err.details() and "pull_progress_timeout" in err.details()
        assert wait_clean(d) == ([], [])
    finally:
        stop_and_clean(d)


def test_a_caller_leaving_cancels_a_stalled_pull_at_once(registry: LocalRegistry, proxy: FaultProxy,
                                                          hosts_dir: Path) -> None:
    image = small_image("cancel", extra=[ib.file("payload", os.urandom(300_000))])
    ib.push(image, registry.host, "faults/cancel", "v1")
    proxy.rules.append(Rule(pattern=f"/blobs/{layer_digests(image)[1]}", action="stall"))
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir)  # progress timeout 300 s: only the caller's deadline can end this
    try:
        err = rpc_error(pull, d.client(), f"{proxy.host}/faults/cancel:v1", timeout=1.0)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_clean(d, timeout=5) == ([], [])
        assert "pull of" in d.log_text() and "cancelled" in d.log_text()
    finally:
        stop_and_clean(d)


def test_concurrent_pulls_share_one_download(registry: LocalRegistry, proxy: FaultProxy, hosts_dir: Path) -> None:
    image = small_image("shared", extra=[ib.file("payload", os.urandom(2 << 20))])
    ib.push(image, registry.host, "faults/shared", "v1")
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir)
    try:
        c = d.client()
        refs: list[str] = []
        threads = [threading.Thread(target=lambda: refs.append(pull(c, f"{proxy.host}/faults/shared:v1")))
                   for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert refs == [image.config_digest] * 5
        blob_gets = [s.path for s in proxy.seen if "/blobs/" in s.path]
        assert sorted(blob_gets) == sorted(set(blob_gets)), blob_gets  # each blob fetched once
        # a second image sharing the base layer downloads only its own layer
        other = small_image("shared-2")
        ib.push(other, registry.host, "faults/shared", "v2")
        proxy.seen.clear()
        pull(c, f"{proxy.host}/faults/shared:v2")
        fetched = {s.path.rsplit("/", 1)[1] for s in proxy.seen if "/blobs/" in s.path}
        assert layer_digests(other)[0] not in fetched and layer_digests(other)[1] in fetched
    finally:
        stop_and_clean(d)


def test_mirrors_in_order_then_upstream(registry: LocalRegistry, proxy: FaultProxy, hosts_dir: Path) -> None:
    image = small_image("mirrors")
    ib.push(image, registry.host, "mirrored/app", "v1")
    dead = "127.0.0.1:9"  # discard port: connection refused
    # the first mirror is down, the second answers 404, the third serves it
    proxy.rules.append(Rule(pattern="^/v2/mirrored/app/manifests/", action="status", status=404, times=1))
    write_hosts(hosts_dir, "upstream.invalid", f"""server = "http://{registry.host}"
[host."http://{dead}"]
[host."http://{proxy.host}"]
[host."http://{registry.host}/"]
  capabilities = ["pull", "resolve"]
""")
    d = daemon_for(hosts_dir)
    try:
        c = d.client()
        ref = pull(c, "upstream.invalid/mirrored/app:v1")
        assert ref == image.config_digest
        st = status(c, ref)
        assert st is not None and list(st.repo_tags) == ["upstream.invalid/mirrored/app:v1"]
        assert any(s.path.startswith("/v2/mirrored/app/manifests/v1") for s in proxy.seen)
        log = d.log_text()
        assert "http://127.0.0.1:9" in log and "connection refused" in log
    finally:
        stop_and_clean(d)


def test_plain_http_is_used_only_where_configured(registry: LocalRegistry, hosts_dir: Path) -> None:
    image = small_image("https-only")
    ib.push(image, registry.host, "tls/app", "v1")
    d = daemon_for(hosts_dir)  # no hosts.toml for this registry: https only
    try:
        err = rpc_error(pull, d.client(), f"{registry.host}/tls/app:v1")
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert f"https://{registry.host}" in err.details()
    finally:
        stop_and_clean(d)


# ---------------------------------------------------------------- authentication and credentials


@pytest.fixture(params=["htpasswd", "token"])
def auth_registry(request: pytest.FixtureRequest) -> Iterator[LocalRegistry]:
    reg = start_registry(auth=request.param, refresh_token="refresh-" + os.urandom(8).hex())
    yield reg
    reg.stop()


def auth_config(username: str, password: str) -> pb.AuthConfig:
    return pb.AuthConfig(username=username, password=password)


def test_auth_with_request_credentials(auth_registry: LocalRegistry, hosts_dir: Path) -> None:
    image = small_image("auth")
    ib.push(image, auth_registry.host, "private/app", "v1", auth=auth_registry.auth)
    insecure(hosts_dir, auth_registry.host)
    d = daemon_for(hosts_dir)
    name = f"{auth_registry.host}/private/app:v1"
    try:
        c = d.client()
        err = rpc_error(pull, c, name)  # no credentials
        assert "requires authentication" in err.details() or "refused" in err.details(), err.details()
        assert auth_registry.host in err.details()
        canary = "wrong-" + os.urandom(6).hex()
        err = rpc_error(pull, c, name, auth=auth_config(USER, canary))
        assert auth_registry.host in err.details() and canary not in err.details()
        assert pull(c, name, auth=auth_config(USER, auth_registry.password)) == image.config_digest
        remove(c, name)
        # the "auth" field (base64 user:password), scoped to this registry by server_address
        encoded = base64.b64encode(f"{USER}:{auth_registry.password}".encode()).decode()
        assert pull(c, name, auth=pb.AuthConfig(auth=encoded, server_address=f"http://{auth_registry.host}")) \
            == image.config_digest
        remove(c, name)
        # credentials addressed to another registry are not sent
        err = rpc_error(pull, c, name, auth=pb.AuthConfig(username=USER, password=auth_registry.password,
                                                          server_address="other.example"))
        assert re.search("none were sent|no credentials|anonymous", err.details()), err.details()
    finally:
        stop_and_clean(d)


def test_identity_token_and_credentials_file(hosts_dir: Path) -> None:
    refresh = "refresh-" + os.urandom(8).hex()
    reg = start_registry(auth="token", refresh_token=refresh)
    image = small_image("identity-token")
    ib.push(image, reg.host, "private/tok", "v1", auth=reg.auth)
    insecure(hosts_dir, reg.host)
    creds_file = hosts_dir / "config.json"
    creds_file.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(f"{USER}:{reg.password}".encode()).decode()}}}))
    d = new_daemon({"registry": {"config_path": str(hosts_dir), "credentials_file": str(creds_file)}}).start()
    try:
        c = d.client()
        assert pull(c, f"{reg.host}/private/tok:v1", auth=pb.AuthConfig(identity_token=refresh)) == image.config_digest
        assert reg.token_server is not None
        assert any(r.method == "POST" and r.form.get("grant_type") == ["refresh_token"]
                   for r in reg.token_server.requests)
        remove(c, f"{reg.host}/private/tok:v1")
        assert pull(c, f"{reg.host}/private/tok:v1") == image.config_digest  # from the credentials file
    finally:
        stop_and_clean(d)
        reg.stop()


def test_credentials_never_leak(hosts_dir: Path) -> None:
    """A canary password must not appear in logs, state, metadata, /proc cmdlines or environments."""
    reg = start_registry(auth="htpasswd")
    image = small_image("canary")
    ib.push(image, reg.host, "private/canary", "v1", auth=reg.auth)
    insecure(hosts_dir, reg.host)
    d = daemon_for(hosts_dir)
    try:
        c = d.client()
        wrong = "canary-" + os.urandom(8).hex()
        rpc_error(pull, c, f"{reg.host}/private/canary:v1", auth=auth_config(USER, wrong))
        pull(c, f"{reg.host}/private/canary:v1", auth=auth_config(USER, reg.password))
        secrets = [wrong.encode(), reg.password.encode(), base64.b64encode(f"{USER}:{reg.password}".encode())]
        for path in d.workdir.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < (64 << 20):
                data = path.read_bytes()
                for secret in secrets:
                    assert secret not in data, f"secret found in {path}"
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            for name in ("cmdline", "environ"):
                try:
                    data = (proc / name).read_bytes()
                except OSError:
                    continue
                for secret in secrets:
                    assert secret not in data, f"secret found in /proc/{proc.name}/{name}"
    finally:
        stop_and_clean(d)
        reg.stop()


def test_redirect_to_another_host_gets_no_credentials(hosts_dir: Path) -> None:
    reg = start_registry(auth="htpasswd")
    image = small_image("redirect")
    ib.push(image, reg.host, "private/redirect", "v1", auth=reg.auth)
    proxy = FaultProxy(reg.host)
    proxy.rules.append(Rule(pattern="/blobs/", action="redirect"))
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir)
    try:
        # The redirect target (another origin) is a plain proxy of the registry: without credentials it gets 401.
        err = rpc_error(pull, d.client(), f"{proxy.host}/private/redirect:v1", auth=auth_config(USER, reg.password))
        assert proxy.redirected, "the daemon never followed the redirect"
        assert all("Authorization" not in s.headers for s in proxy.redirected)
        assert any("Authorization" in s.headers for s in proxy.seen)  # the registry itself did get them
        assert re.search(r"401|refused|requires authentication", err.details()), err.details()
    finally:
        stop_and_clean(d)
        proxy.stop()
        reg.stop()


def test_kill_9_during_a_pull_leaves_nothing_after_restart(registry: LocalRegistry, proxy: FaultProxy,
                                                           hosts_dir: Path) -> None:
    image = small_image("crash", extra=[ib.file("payload", os.urandom(300_000))])
    ib.push(image, registry.host, "faults/crash", "v1")
    stalled = layer_digests(image)[1]
    proxy.rules.append(Rule(pattern=f"/blobs/{stalled}", action="stall"))
    insecure(hosts_dir, proxy.host)
    d = daemon_for(hosts_dir)
    try:
        c = d.client()
        caller = threading.Thread(target=lambda: rpc_error(pull, c, f"{proxy.host}/faults/crash:v1", timeout=30))
        caller.start()
        deadline = time.monotonic() + 10
        while not any(stalled in s.path for s in proxy.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the other layer has been committed by now; the stalled one is mid-download
        d.kill9()
        caller.join()
        d.start()
        c = d.client()
        assert listed(c) == []
        assert store_files(d) == ([], [])
        proxy.rules.clear()
        assert pull(c, f"{proxy.host}/faults/crash:v1") == image.config_digest
    finally:
        stop_and_clean(d)


# ---------------------------------------------------------------- TLS


def push_over_tls(reg: LocalRegistry, image: ib.Image, repo: str, tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:  # only the test's push trusts the CA; the daemon started later does not
        assert reg.ca_cert is not None
        m.setenv("SSL_CERT_FILE", str(reg.ca_cert))
        ib.push(image, reg.host, repo, tag, insecure=False, auth=reg.auth)


def test_https_registry_is_trusted_only_with_its_ca(hosts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = start_registry(tls=True)
    image = small_image("tls")
    push_over_tls(reg, image, "tls/app", "v1", monkeypatch)
    d = daemon_for(hosts_dir)
    name = f"{reg.host}/tls/app:v1"
    try:
        c = d.client()
        err = rpc_error(pull, c, name)
        assert "TLS certificate not trusted" in err.details() and "ca" in err.details(), err.details()
        write_hosts(hosts_dir, reg.host, f'server = "https://{reg.host}"\nca = "{reg.ca_cert}"\n')
        assert pull(c, name) == image.config_digest
        remove(c, name)
        write_hosts(hosts_dir, reg.host, f'server = "https://{reg.host}"\nskip_verify = true\n')
        assert pull(c, name) == image.config_digest
    finally:
        stop_and_clean(d)
        reg.stop()


def test_plain_http_token_realm_of_an_https_registry_gets_no_credentials(hosts_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    reg = start_registry(auth="token", tls=True)
    image = small_image("tls-token")
    push_over_tls(reg, image, "tls/private", "v1", monkeypatch)
    assert reg.token_server is not None
    seen_before = len(reg.token_server.requests)
    write_hosts(hosts_dir, reg.host, f'server = "https://{reg.host}"\nca = "{reg.ca_cert}"\n')
    d = daemon_for(hosts_dir)
    try:
        err = rpc_error(pull, d.client(), f"{reg.host}/tls/private:v1", auth=auth_config(USER, reg.password))
        assert "plain-http token realm" in err.details() and reg.password not in err.details()
        assert len(reg.token_server.requests) == seen_before
    finally:
        stop_and_clean(d)
        reg.stop()
