"""A private Debian `docker-registry` on a free loopback port, for the layers tests.

The `images` helper owns the shared tests/harness/registry.py; this minimal
copy keeps the image-builder and test-image tests self-contained until that
one lands. Storage and config live under CRI_SHIM_TEST_TMP and are removed on stop.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.harness.daemon import make_workdir

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{auth}"""

AUTH = """auth:
  htpasswd:
    realm: cri-shim-test
    path: {path}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRegistry:
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the registry accepts only bcrypt), via libcrypt's $2b$ method."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


def start_registry(auth: tuple[str, str] | None = None) -> LocalRegistry:
    """A registry on a free loopback port; with `auth`, it demands HTTP Basic credentials (htpasswd)."""
    workdir = make_workdir("reg")
    port = free_port()
    cfg = workdir / "config.yml"
    auth_cfg = ""
    if auth is not None:
        (workdir / "htpasswd").write_text(htpasswd_line(*auth))
        auth_cfg = AUTH.format(path=workdir / "htpasswd")
    cfg.write_text(CONFIG.format(root=workdir / "data", port=port, auth=auth_cfg))
    log = (workdir / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    reg = LocalRegistry(workdir, port, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=2) as r:
                if r.status == 200:
                    return reg
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                return reg
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    reg.stop()
    raise RuntimeError(f"docker-registry did not come up: {(workdir / 'registry.log')}")
