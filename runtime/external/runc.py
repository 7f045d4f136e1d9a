"""Drive an installed runc with a cri-shim bundle: the "runc" runtime handler's building block.

The pod shim owns the container's stdio exactly as for native containers and
calls these methods; runc does the isolation. The shim must be a child
subreaper (PR_SET_CHILD_SUBREAPER): `runc create` exits once the container
is set up, and the container's init is re-parented to the shim, which reaps
it and records its exit status.

    runc = Runc(RuncConfig(root=f"{state}/runc"))
    pid = runc.create(cid, bundle, pid_file=..., stdio=(in_fd, out_fd, err_fd))
    runc.start(cid); runc.state(cid); runc.kill(cid, 15, all_processes=True); runc.delete(cid)
    runc.exec(cid, process_dict, pid_file=..., stdio=...)   # detached; the shim reaps it too

Every call is bounded by a timeout; errors come from runc's JSON log (never
from parsing free text on the container's stderr) and are raised as
`RuntimeFailure` (ObjectNotFound when runc says the container does not exist).
Calls are blocking: the shim is single-threaded and calls them between events.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.base import ObjectNotFound, OperationTimeout, RuntimeFailure, Unsupported

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class RuncConfig:
    root: str                      # runc's state dir (tmpfs); one per cri-shim instance
    binary: str = "runc"
    systemd_cgroup: bool = False
    timeout: float = DEFAULT_TIMEOUT
    # argv prefix runc is started through, e.g. ("/usr/bin/env", "--default-signal") from a caller that
    # ignores signals: ignored dispositions survive execve, and runc passes them on to the container.
    launcher: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuncState:
    id: str
    status: str                    # "creating", "created", "running", "paused", "stopped"
    pid: int
    bundle: str


Stdio = tuple[int, int, int]


class Runc:
    def __init__(self, config: RuncConfig) -> None:
        self.config = config
        resolved = shutil.which(config.binary)
        if resolved is None:
            raise Unsupported(f"runc: {config.binary!r} not found; install runc to use the runc handler")
        self.binary = resolved
        os.makedirs(config.root, mode=0o700, exist_ok=True)

    # ------------------------------------------------------------ plumbing

    def _run(self, args: list[str], *, stdio: Stdio | None = None, input_data: bytes | None = None,
             what: str) -> bytes:
        """Run `runc <global flags> args`; return stdout (empty when stdio is handed to the container)."""
        with tempfile.NamedTemporaryFile(dir=self.config.root, prefix=".log-", delete=True) as log_file:
            argv = [*self.config.launcher, self.binary, "--root", self.config.root, "--log", log_file.name,
                    "--log-format", "json"]
            if self.config.systemd_cgroup:
                argv.append("--systemd-cgroup")
            argv += args
            try:
                if stdio is not None:
                    proc = subprocess.run(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                                          timeout=self.config.timeout, check=False, close_fds=True)
                    out = b""
                else:
                    proc = subprocess.run(argv, input=input_data, capture_output=True,
                                          timeout=self.config.timeout, check=False, close_fds=True)
                    out = proc.stdout
            except subprocess.TimeoutExpired as e:
                raise OperationTimeout(f"runc {what}: no answer within {self.config.timeout}s") from e
            if proc.returncode != 0:
                raise self._failure(what, log_file.name, proc)
            return out

    @staticmethod
    def _failure(what: str, log_path: str, proc: subprocess.CompletedProcess[bytes]) -> RuntimeFailure:
        message = _last_error(log_path) or (proc.stderr or b"").decode(errors="replace").strip()
        message = message or f"exit status {proc.returncode}"
        text = f"runc {what}: {message}"
        if "does not exist" in message or ("not found" in message and "container" in message):
            return ObjectNotFound(text)
        return RuntimeFailure(text)

    # ------------------------------------------------------------ lifecycle

    def create(self, container_id: str, bundle: str, *, pid_file: str, stdio: Stdio,
               console_socket: str | None = None, no_pivot: bool = False) -> int:
        """Set up the container (process not yet running the program); returns its init pid."""
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        self._run([*args, container_id], stdio=stdio, what=f"create {container_id}")
        return _read_pid(pid_file)

    def start(self, container_id: str) -> None:
        self._run(["start", container_id], what=f"start {container_id}")

    def state(self, container_id: str) -> RuncState:
        raw = json.loads(self._run(["state", container_id], what=f"state {container_id}"))
        return RuncState(raw["id"], raw["status"], int(raw.get("pid") or 0), raw.get("bundle", ""))

    def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None:
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(signal)]
        self._run(args, what=f"kill {container_id}")

    def delete(self, container_id: str, force: bool = False) -> None:
        """Remove the container's runc state and cgroup. Idempotent: an unknown id is not an error."""
        try:
            self._run(["delete", *(["--force"] if force else []), container_id], what=f"delete {container_id}")
        except ObjectNotFound:
            log.debug("runc delete %s: already gone", container_id)

    def exec(self, container_id: str, process: Mapping[str, Any], *, pid_file: str, stdio: Stdio,
             console_socket: str | None = None) -> int:
        """Start an extra process (OCI `process` object) in the container, detached; returns its pid."""
        with tempfile.NamedTemporaryFile("w", dir=self.config.root, prefix=".process-", suffix=".json",
                                         delete=True) as spec:
            json.dump(process, spec)
            spec.flush()
            args = ["exec", "--detach", "--pid-file", pid_file, "--process", spec.name]
            if console_socket:
                args += ["--console-socket", console_socket]
            self._run([*args, container_id], stdio=stdio, what=f"exec in {container_id}")
        return _read_pid(pid_file)

    def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Apply OCI `linux.resources` to a live container."""
        self._run(["update", "--resources", "-", container_id], input_data=json.dumps(resources).encode(),
                  what=f"update {container_id}")

    def list_ids(self) -> list[str]:
        raw = json.loads(self._run(["list", "--format", "json"], what="list") or b"null")
        return [c["id"] for c in raw or []]

    def version(self) -> str:
        return self._run(["--version"], what="version").decode().splitlines()[0]


def _last_error(log_path: str) -> str:
    """The last error-level message of runc's JSON log, if any."""
    try:
        with open(log_path, "rb") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", ""))
    return ""


def _read_pid(pid_file: str) -> int:
    with open(pid_file) as f:
        return int(f.read().strip())
