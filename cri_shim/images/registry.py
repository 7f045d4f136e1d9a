"""OCI distribution API client: manifests and blobs from one registry name's hosts.

One `RegistryClient` serves one pull of one repository. It tries the hosts of
`hosts.HostsConfig` in order (mirrors, then the upstream), authenticates on a
401 challenge (Bearer token from the realm, or Basic), follows redirects, and
reads with a per-read timeout (the pull's progress timeout).

Where credentials may go: the registry's own hosts and the token realm it
names. An `Authorization` header is never sent to a redirect target on
another origin, and never over plain HTTP unless the registry host itself is
configured as plain HTTP. Error messages name the registry and the
reference; they never contain a secret or a token.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from cri_shim import __version__
from cri_shim.errors import CriError, FailedPrecondition, NotFound, Unavailable
from cri_shim.images import auth, manifest
from cri_shim.images.auth import Credentials
from cri_shim.images.cancel import Cancelled, CancelToken
from cri_shim.images.hosts import HostsConfig, RegistryHost
from cri_shim.images.manifest import Descriptor
from cri_shim.images.reference import Reference

log = logging.getLogger(__name__)

T = TypeVar("T")
USER_AGENT = f"cri-shim/{__version__}"
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 4096
MAX_TOKEN_RESPONSE = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)

CredentialSource = Callable[[RegistryHost], "Credentials | None"]


@dataclass(frozen=True)
class Origin:
    scheme: str
    netloc: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    return Origin(parts.scheme, parts.netloc)


@dataclass(frozen=True)
class Fetched:
    data: bytes
    media_type: str
    digest: str
    host: RegistryHost


class _TryNext(Exception):
    """This host cannot serve the request; the next host may. Carries the error to report."""

    def __init__(self, error: CriError) -> None:
        super().__init__(error.message)
        self.error = error


def describe(error: BaseException) -> str:
    """A short, secret-free description of a network error."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"TLS certificate not trusted ({error.verify_message}); "
                "give the registry's CA with `ca` in its hosts.toml")
    if isinstance(error, ssl.SSLError):
        return f"TLS error ({error.reason or error})"
    if isinstance(error, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, http.client.HTTPException):
        return f"bad HTTP response ({type(error).__name__})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return type(error).__name__


class Network:
    """Blocking network steps bound to a cancel token and a progress timeout."""

    def __init__(self, token: CancelToken, timeout: float | None) -> None:
        self.token = token
        self.timeout = timeout

    def run(self, fn: Callable[[], T], what: str) -> T:
        self.token.check()
        try:
            return fn()
        except socket.timeout:
            self.token.check()
            raise Unavailable(f"{what}: no data for {self.timeout:g}s "
                              "(images.pull_progress_timeout)") from None
        except (OSError, http.client.HTTPException) as e:
            self.token.check()  # cancel() shuts sockets down: report the cancellation, not the OSError
            raise Unavailable(f"{what}: {describe(e)}") from None


class _Connections:
    """Idle keep-alive connections per origin, shared by the threads of one pull."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: dict[tuple[object, ...], ssl.SSLContext] = {}

    def tls_context(self, host: RegistryHost | None) -> ssl.SSLContext:
        key: tuple[object, ...] = (host.skip_verify, host.ca_files, host.client_certs) if host else ()
        with self._lock:
            ctx = self._tls.get(key)
        if ctx is not None:
            return ctx
        ctx = ssl.create_default_context()
        if host is not None:
            try:
                for ca in host.ca_files:
                    ctx.load_verify_locations(cafile=ca)
                for cert, key_file in host.client_certs:
                    ctx.load_cert_chain(cert, key_file or None)
            except (OSError, ssl.SSLError) as e:
                raise FailedPrecondition(f"registry {host}: cannot load its CA or client certificate "
                                         f"({describe(e)})") from None
            if host.skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        with self._lock:
            self._tls[key] = ctx
        return ctx

    def get(self, origin: Origin, host: RegistryHost | None) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop()
        if origin.scheme == "https":
            return http.client.HTTPSConnection(origin.netloc, timeout=self._timeout, context=self.tls_context(host))
        return http.client.HTTPConnection(origin.netloc, timeout=self._timeout)

    def put(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(origin, []).append(conn)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


class Response:
    """An HTTP response bound to its connection; the connection is reused only after a full read."""

    def __init__(self, pool: _Connections, origin: Origin, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, net: Network, url: str) -> None:
        self.pool, self.origin, self.conn, self.resp, self.net = pool, origin, conn, resp, net
        self.url = url
        self.status = resp.status
        self._closed = False

    def header(self, name: str) -> str:
        return self.resp.getheader(name) or ""

    def read_capped(self, cap: int, what: str) -> bytes:
        length = self.header("Content-Length")
        if length.isdigit() and int(length) > cap:
            raise FailedPrecondition(f"{what} is {length} bytes, more than the {cap} allowed")
        data = self.net.run(lambda: self.resp.read(cap + 1), what)
        if len(data) > cap:
            raise FailedPrecondition(f"{what} is more than the {cap} bytes allowed")
        return data

    def error_summary(self) -> str:
        """`404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`: status and the registry's error codes."""
        text = f"{self.status} {self.resp.reason}"
        try:
            body = self.resp.read(MAX_ERROR_BODY)
            doc = json.loads(body)
            codes = [f"{e.get('code', '')}: {e.get('message', '')}" for e in doc.get("errors", [])
                     if isinstance(e, dict)]
            if codes:
                text += " (" + "; ".join(c[:200] for c in codes[:3]) + ")"
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass
        self.close(reusable=True)
        return text

    def close(self, reusable: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self.conn.sock is not None:
            self.net.token.unregister(self.conn.sock)
        if reusable and self.resp.isclosed() and not self.resp.will_close:
            self.pool.put(self.origin, self.conn)
        else:
            self.conn.close()

    def discard(self) -> None:
        """Drop a small body (error, redirect) and keep the connection if possible."""
        try:
            self.resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            pass
        self.close(reusable=True)


class BlobStream:
    """An open blob download yielding exactly the descriptor's size, then EOF.

    Reading stops at the declared size (extra bytes from the registry are not
    read); a connection that ends early raises, naming the blob.
    """

    def __init__(self, response: Response, desc: Descriptor, what: str) -> None:
        self._response = response
        self.remaining = desc.size
        self.what = what

    def readinto(self, buf: memoryview) -> int:
        if self.remaining <= 0:
            return 0
        view = buf[:min(len(buf), self.remaining)]
        count = self._response.net.run(lambda: self._response.resp.readinto(view), self.what)
        if count == 0:
            raise Unavailable(f"{self.what}: the connection ended {self.remaining} bytes before the end "
                              "(truncated blob)")
        self.remaining -= count
        return count

    def close(self) -> None:
        self._response.close(reusable=self.remaining == 0)


class RegistryClient:
    """Fetches one repository's manifests and blobs from its hosts, in order."""

    def __init__(self, hosts: HostsConfig, ref: Reference, credentials: CredentialSource,
                 timeout: float | None) -> None:
        self.hosts = hosts
        self.ref = ref
        self._credentials = credentials
        self._timeout = timeout
        self._pool = _Connections(timeout)
        self._auth: dict[tuple[str, str], str] = {}   # (host netloc, scope) -> Authorization value
        self._auth_lock = threading.Lock()
        self.scope = f"repository:{ref.path}:pull"

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------ public fetches

    def resolve(self, token: CancelToken) -> Fetched:
        """The document the reference names (an index or a manifest), with its digest verified."""
        capability = "pull" if self.ref.digest else "resolve"
        what = f"image {self.ref}"
        return self._first(capability, what, token, lambda h, net: self._get_manifest(h, net, self.ref.object))

    def fetch_manifest(self, desc: Descriptor, token: CancelToken) -> Fetched:
        what = f"image {self.ref}: manifest {desc.digest}"
        fetched = self._first("pull", what, token, lambda h, net: self._get_manifest(h, net, desc.digest))
        if len(fetched.data) != desc.size:
            raise FailedPrecondition(f"{what}: size is {len(fetched.data)} bytes, the index says {desc.size}")
        return fetched

    def fetch_blob(self, desc: Descriptor, cap: int, token: CancelToken, what: str) -> bytes:
        """A small blob (an image config) read whole, size and digest verified."""
        if desc.size > cap:
            raise FailedPrecondition(f"{what} is {desc.size} bytes, more than the {cap} allowed")

        def get(host: RegistryHost, net: Network) -> bytes:
            resp = self._blob_response(host, net, desc, what)
            try:
                data = resp.read_capped(desc.size, what)
            finally:
                resp.close(reusable=True)
            return data

        data = self._first("pull", what, token, get)
        verify(data, desc, what)
        return data

    def open_blob(self, desc: Descriptor, token: CancelToken, what: str) -> BlobStream:
        """A streaming download of a layer; the caller verifies the digest while reading."""
        return self._first("pull", what, token,
                           lambda host, net: BlobStream(self._blob_response(host, net, desc, what), desc, what))

    # ------------------------------------------------------------ host iteration

    def _first(self, capability: str, what: str, token: CancelToken,
               fn: Callable[[RegistryHost, Network], T]) -> T:
        hosts = [h for h in self.hosts.hosts if capability in h.capabilities]
        if not hosts:
            raise FailedPrecondition(f"{what}: no host in {self.hosts.source or 'the registry settings'} "
                                     f"has the {capability!r} capability")
        net = Network(token, self._timeout)
        failures: list[tuple[RegistryHost, CriError]] = []
        for host in hosts:
            try:
                return fn(host, net)
            except _TryNext as e:
                log.info("%s: %s: %s", what, host, e.error.message)
                failures.append((host, e.error))
            except Cancelled:
                raise
            except CriError as e:
                failures.append((host, e))
                if not host.is_mirror:
                    break  # the upstream's own failure is final
                log.info("%s: mirror %s failed, trying the next host: %s", what, host, e.message)
        raise _combine(what, failures)

    # ------------------------------------------------------------ requests

    def _get_manifest(self, host: RegistryHost, net: Network, obj: str) -> Fetched:
        what = f"image {self.ref}" if obj == self.ref.object else f"image {self.ref}: manifest {obj}"
        path = f"{host.api_root}/{self.ref.path}/manifests/{obj}"
        resp = self._request(host, net, path, manifest.ACCEPT, what)
        if resp.status == 404:
            raise _TryNext(NotFound(f"{what}: not found in registry {self.hosts.registry}"
                                    + (f" (mirror {host})" if host.is_mirror else "")))
        if resp.status != 200:
            raise _TryNext(Unavailable(f"{what}: registry {host} answered {resp.error_summary()}"))
        try:
            data = resp.read_capped(manifest.MAX_MANIFEST_BYTES, what)
        finally:
            resp.close(reusable=True)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if obj.startswith("sha256:") and digest != obj:
            raise FailedPrecondition(f"{what}: registry {host} sent content with digest {digest}, "
                                     f"not the {obj} asked for")
        claimed = resp.header("Docker-Content-Digest")
        if claimed.startswith("sha256:") and claimed != digest:
            raise FailedPrecondition(f"{what}: registry {host} says the digest is {claimed} "
                                     f"but the content it sent has {digest}")
        media_type = manifest.media_type_of(data, resp.header("Content-Type"), what)
        manifest.check_supported(media_type, what)
        return Fetched(data=data, media_type=media_type, digest=digest, host=host)

    def _blob_response(self, host: RegistryHost, net: Network, desc: Descriptor, what: str) -> Response:
        path = f"{host.api_root}/{self.ref.path}/blobs/{desc.digest}"
        resp = self._request(host, net, path, "*/*", what)
        if resp.status == 404:
            raise _TryNext(NotFound(f"{what}: not found in registry {host}"))
        if resp.status != 200:
            raise _TryNext(Unavailable(f"{what}: registry {host} answered {resp.error_summary()}"))
        return resp

    def _request(self, host: RegistryHost, net: Network, path: str, accept: str, what: str) -> Response:
        """GET `path` on `host`, authenticating on a 401 challenge and following redirects."""
        headers = {"Accept": accept, "User-Agent": USER_AGENT, **dict(host.headers)}
        authorization = self._cached_auth(host)
        for attempt in range(2):
            if authorization:
                headers["Authorization"] = authorization
            resp = self._follow(host, net, f"{host.url}{path}", headers, what)
            if resp.status != 401 or attempt == 1 or origin_of(resp.url) != origin_of(host.url):
                if resp.status in (401, 403):
                    resp.discard()
                    raise _TryNext(FailedPrecondition(
                        f"{what}: registry {host} refused access ({resp.status}); "
                        f"check the credentials for {host.netloc}" + ("" if authorization else " (none were sent)")))
                return resp
            challenge = resp.header("WWW-Authenticate")
            resp.discard()
            authorization = self._authorize(host, net, challenge, what)
        raise AssertionError("unreachable")

    def _follow(self, host: RegistryHost, net: Network, url: str, headers: dict[str, str], what: str) -> Response:
        start = origin_of(url)
        for _ in range(MAX_REDIRECTS + 1):
            current = origin_of(url)
            if current != start:
                # Never carry credentials (or custom headers) to another origin.
                headers = {k: v for k, v in headers.items() if k in ("Accept", "User-Agent")}
            resp = self._send(current, host if current == start else None, net, url, headers, what)
            if resp.status not in REDIRECTS:
                return resp
            location = resp.header("Location")
            resp.discard()
            if not location:
                raise Unavailable(f"{what}: registry {host} sent a redirect without a Location")
            target = urljoin(url, location)
            if origin_of(target).scheme not in ("http", "https"):
                raise Unavailable(f"{what}: registry {host} redirected to an unsupported URL scheme")
            if origin_of(target).scheme == "http" and start.scheme == "https":
                raise Unavailable(f"{what}: registry {host} redirected from https to plain http; refusing")
            url = target
        raise Unavailable(f"{what}: registry {host} redirected more than {MAX_REDIRECTS} times")

    def _send(self, origin: Origin, host: RegistryHost | None, net: Network, url: str,
              headers: dict[str, str], what: str, method: str = "GET", body: bytes | None = None) -> Response:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            conn = self._pool.get(origin, host)
            reused = conn.sock is not None
            try:
                if conn.sock is None:
                    net.run(conn.connect, f"{what}: connecting to {origin}")
                assert conn.sock is not None
                net.token.register(conn.sock)
                sock = conn.sock

                def exchange() -> http.client.HTTPResponse:
                    conn.request(method, target, body=body, headers=headers)
                    return conn.getresponse()

                try:
                    resp = net.run(exchange, f"{what}: {origin}")
                except Unavailable:
                    net.token.unregister(sock)
                    raise
            except Unavailable:
                conn.close()
                if reused and attempt == 0:
                    continue  # an idle keep-alive connection the server had closed: retry on a fresh one
                raise
            return Response(self._pool, origin, conn, resp, net, url)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ authentication

    def _cached_auth(self, host: RegistryHost) -> str:
        with self._auth_lock:
            return self._auth.get((host.netloc, self.scope), "")

    def _authorize(self, host: RegistryHost, net: Network, header: str, what: str) -> str:
        creds = self._credentials(host)
        challenges = auth.parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            if creds is not None and creds.registry_token:
                value = f"Bearer {creds.registry_token}"
            else:
                value = f"Bearer {self._fetch_token(host, net, bearer.params, creds, what)}"
        elif basic is not None and creds is not None and creds.username:
            if host.insecure and not _is_loopback(host.netloc):
                log.warning("sending Basic credentials over plain HTTP to %s (configured as insecure)", host)
            value = auth.basic_header(creds)
        else:
            raise _TryNext(FailedPrecondition(
                f"{what}: registry {host} requires authentication"
                + (" and no credentials were given for it" if creds is None else
                   " with a scheme cri-shim cannot use with the credentials given")))
        with self._auth_lock:
            self._auth[(host.netloc, self.scope)] = value
        return value

    def _fetch_token(self, host: RegistryHost, net: Network, params: dict[str, str], creds: Credentials | None,
                     what: str) -> str:
        realm = params.get("realm", "")
        realm_origin = origin_of(realm)
        if realm_origin.scheme not in ("http", "https") or not realm_origin.netloc:
            raise _TryNext(FailedPrecondition(f"{what}: registry {host} named an invalid token realm"))
        if realm_origin.scheme == "http" and not host.insecure:
            raise _TryNext(FailedPrecondition(f"{what}: registry {host} named a plain-http token realm "
                                              f"({realm_origin}); refusing to use it for an https registry"))
        scopes = [self.scope] + [s for s in params.get("scope", "").split(" ") if s and s != self.scope]
        query: list[tuple[str, str]] = [("scope", s) for s in scopes]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        body: bytes | None = None
        method = "GET"
        if creds is not None and creds.identity_token:
            method = "POST"
            form = [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                    ("client_id", "cri-shim"), *query]
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = realm
        else:
            sep = "&" if urlsplit(realm).query else "?"
            url = realm + sep + urlencode(query)
            if creds is not None and creds.username:
                headers["Authorization"] = auth.basic_header(creds)
        token_what = f"{what}: token from {realm_origin} for registry {host}"
        resp = self._send(realm_origin, host if realm_origin == origin_of(host.url) else None, net, url, headers,
                          token_what, method=method, body=body)
        if resp.status != 200:
            summary = resp.error_summary()
            raise _TryNext(FailedPrecondition(
                f"{what}: the token server of registry {host} refused "
                + ("the credentials given" if creds is not None else "anonymous access") + f" ({summary})"))
        try:
            data = resp.read_capped(MAX_TOKEN_RESPONSE, token_what)
        finally:
            resp.close(reusable=True)
        try:
            doc = json.loads(data)
            value = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value or any(c in value for c in "\r\n"):
            raise _TryNext(FailedPrecondition(f"{what}: the token server of registry {host} sent no usable token"))
        return value


def _is_loopback(netloc: str) -> bool:
    host = netloc.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _combine(what: str, failures: list[tuple[RegistryHost, CriError]]) -> CriError:
    errors = [e for _, e in failures]
    if all(isinstance(e, NotFound) for e in errors):
        return NotFound(errors[-1].message if len(errors) == 1 else
                        f"{what}: not found (" + "; ".join(f"{h}: not found" for h, _ in failures) + ")")
    last = errors[-1]
    if len(failures) == 1:
        return last
    others = "; ".join(f"{h}: {e.message}" for h, e in failures[:-1])
    return type(last)(f"{last.message} (also tried: {others})")


def verify(data: bytes, desc: Descriptor, what: str) -> None:
    if len(data) != desc.size:
        raise FailedPrecondition(f"{what}: size mismatch: got {len(data)} bytes, the manifest says {desc.size}")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != desc.digest:
        raise FailedPrecondition(f"{what}: digest mismatch: the content has {digest}, the manifest says {desc.digest}")
