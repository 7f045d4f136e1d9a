"""A real registry for tests: Debian's `docker-registry` on a free loopback port, and its helpers.

- `start_registry(auth=None | "htpasswd" | "token")`: docker-registry 2.8 with its
  own storage dir under CRI_SHIM_TEST_TMP; with "htpasswd" it asks for Basic
  auth (bcrypt htpasswd file), with "token" for a Bearer token from
  `TokenServer`, a small token service of ours (RS256 JWTs signed with openssl,
  the registry trusts its self-signed certificate).
- `FaultProxy`: an HTTP proxy in front of a registry that can corrupt,
  truncate, stall or redirect chosen requests, and records what it was sent
  (to prove where credentials went).

Everything listens on 127.0.0.1 (the redirect target on "localhost", a
different origin), and `stop()` removes every file.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.daemon import make_workdir

USER = "cri-shim-user"

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{tls}{auth}"""

TLS = """  tls:
    certificate: {cert}
    key: {key}
"""

HTPASSWD_AUTH = """auth:
  htpasswd:
    realm: cri-shim-test
    path: {path}
"""

TOKEN_AUTH = """auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's crypt(3) does bcrypt ($2b$), which docker-registry requires
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # cost 4: fast tests


def wait_http(url: str, ok: Callable[[int], bool], proc: subprocess.Popen[bytes] | None, timeout: float = 20,
              cafile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if ok(r.status):
                    return
        except urllib.error.HTTPError as e:
            if ok(e.code):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


# ---------------------------------------------------------------- token server


@dataclass
class TokenRequest:
    method: str
    path: str
    authorization: str
    form: dict[str, list[str]]


class TokenServer:
    """A Bearer token service: Basic credentials (or a refresh token) in, a signed JWT out."""

    service = "cri-shim-test-registry"
    issuer = "cri-shim-test-issuer"

    def __init__(self, workdir: Path, password: str, refresh_token: str = "") -> None:
        self.workdir = workdir
        self.password = password
        self.refresh_token = refresh_token
        self.requests: list[TokenRequest] = []
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=cri-shim-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self._x5c = base64.b64encode(der).decode()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _b64(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def sign(self, subject: str, scopes: list[str]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, _actions = rest.rpartition(":")
            if kind == "repository" and name:
                # Every authenticated user may push and pull: tests only check *whether* credentials
                # arrive (and a comma-split scope from a simple client still gets what it needs).
                access.append({"type": kind, "name": name, "actions": ["pull", "push"]})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{self._b64(json.dumps(header).encode())}.{self._b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{self._b64(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, form: dict[str, list[str]]) -> None:
                authorization = self.headers.get("Authorization", "")
                server.requests.append(TokenRequest(self.command, self.path, authorization, form))
                subject = ""
                if authorization.startswith("Basic "):
                    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                    if user == USER and password == server.password:
                        subject = user
                    else:
                        return self._deny()
                elif form.get("grant_type") == ["refresh_token"]:
                    if server.refresh_token and form.get("refresh_token") == [server.refresh_token]:
                        subject = USER
                    else:
                        return self._deny()
                if not subject:
                    return self._deny()  # no anonymous access
                scopes = form.get("scope", [])
                token = server.sign(subject, [s for item in scopes for s in item.split(" ")])
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _deny(self) -> None:
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self._answer(urllib.parse.parse_qs(self.rfile.read(length).decode()))

        return Handler


# ---------------------------------------------------------------- the registry


@dataclass
class LocalRegistry:
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    password: str = ""
    token_server: TokenServer | None = None
    ca_cert: Path | None = None        # set when serving https: the certificate to trust

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_cert else 'http'}://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (USER, self.password) if self.password else None

    def log_text(self) -> str:
        path = self.workdir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.token_server is not None:
            self.token_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def self_signed(workdir: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is also the CA to trust)."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def start_registry(auth: str | None = None, refresh_token: str = "", tls: bool = False) -> LocalRegistry:
    """docker-registry on 127.0.0.1:<free port>; auth None, "htpasswd" (Basic) or "token" (Bearer); https with tls."""
    workdir = make_workdir("reg")
    port = free_port()
    tls_yaml = ""
    ca_cert = None
    if tls:
        ca_cert, key = self_signed(workdir, "registry")
        tls_yaml = TLS.format(cert=ca_cert, key=key)
    password = secrets.token_hex(12) if auth else ""
    token_server = None
    auth_yaml = ""
    if auth == "htpasswd":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt_hash(password)}\n")
        auth_yaml = HTPASSWD_AUTH.format(path=htpasswd)
    elif auth == "token":
        token_server = TokenServer(workdir, password, refresh_token)
        auth_yaml = TOKEN_AUTH.format(realm=token_server.realm, service=TokenServer.service,
                                      issuer=TokenServer.issuer, cert=token_server.cert)
    elif auth is not None:
        raise ValueError(f"unknown auth {auth!r}")
    cfg = workdir / "config.yml"
    cfg.write_text(CONFIG.format(root=workdir / "data", port=port, auth=auth_yaml, tls=tls_yaml))
    with open(workdir / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    reg = LocalRegistry(workdir, port, proc, password, token_server, ca_cert)
    try:
        wait_http(f"{reg.url}/v2/", lambda status: status in (200, 401), proc, cafile=ca_cert)
    except RuntimeError:
        log_text = reg.log_text()
        reg.stop()
        raise RuntimeError(f"docker-registry did not come up:\n{log_text}") from None
    return reg


# ---------------------------------------------------------------- a proxy that misbehaves on request


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Rule:
    """What to do with requests whose path matches `pattern` (first match wins)."""

    pattern: str
    action: str            # "corrupt", "truncate", "stall", "redirect", "status"
    status: int = 404
    times: int = -1        # how many requests it applies to; -1: all


@dataclass
class FaultProxy:
    """Forwards to `upstream` (host:port); `rules` change chosen answers. `seen` records every request.

    With a "redirect" rule, the answer is a 307 to the same path on
    `localhost:<redirect_port>`, a second listener (another origin) that
    serves the upstream's content and records what it was sent in `redirected`.
    """

    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    redirected: list[Seen] = field(default_factory=list)
    stall_seconds: float = 30.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._main = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler(self.seen, True))
        self._redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler(self.redirected, False))
        for s in (self._main, self._redirect):
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._main.server_port}"

    @property
    def redirect_origin(self) -> str:
        return f"http://localhost:{self._redirect.server_port}"

    def stop(self) -> None:
        self._stop.set()
        for s in (self._main, self._redirect):
            s.shutdown()
            s.server_close()

    def _rule(self, path: str) -> Rule | None:
        for rule in self.rules:
            if re.search(rule.pattern, path) and rule.times != 0:
                if rule.times > 0:
                    rule.times -= 1
                return rule
        return None

    def _handler(self, record: list[Seen], apply_rules: bool) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                self._handle()

            def _handle(self) -> None:
                record.append(Seen(self.command, self.path, dict(self.headers.items())))
                rule = proxy._rule(self.path) if apply_rules else None
                if rule is not None and rule.action == "status":
                    return self._send(rule.status, {"Content-Length": "0"}, b"")
                if rule is not None and rule.action == "redirect":
                    return self._send(307, {"Location": proxy.redirect_origin + self.path,
                                            "Content-Length": "0"}, b"")
                status, headers, body = self._forward()
                if rule is None or status != 200:
                    return self._send(status, headers, body)
                if rule.action == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                    return self._send(status, headers, body)
                if rule.action == "truncate":
                    self._send(status, headers, body[:len(body) // 2])
                    self.close_connection = True
                    return
                if rule.action == "stall":
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body[:1024])
                    self.wfile.flush()
                    proxy._stop.wait(proxy.stall_seconds)
                    self.close_connection = True
                    return
                raise ValueError(rule.action)

            def _forward(self) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                out = {k: v for k, v in resp.getheaders()
                       if k.lower() in ("content-type", "docker-content-digest", "www-authenticate", "location",
                                        "docker-distribution-api-version")}
                if "location" in {k.lower() for k in out}:
                    out = {k: (v.replace(proxy.upstream, proxy.host) if k.lower() == "location" else v)
                           for k, v in out.items()}
                out["Content-Length"] = str(len(body) if self.command != "HEAD" else resp.getheader(
                    "Content-Length", "0"))
                conn.close()
                return resp.status, out, b"" if self.command == "HEAD" else body

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

        return Handler
