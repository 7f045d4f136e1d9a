"""The requests a streaming URL stands for, and their validation (called by the Exec/Attach/PortForward RPCs).

Validation here covers what the request itself gets wrong; whether the
container exists and runs is the RPC layer's check against its store.
"""

from __future__ import annotations

from dataclasses import dataclass

from cri_shim.errors import InvalidArgument

MAX_CMD_ARGS = 4096
MAX_CMD_BYTES = 1 << 20


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()   # informational: the SPDY/WebSocket-tunnel clients name ports per stream


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


def _check_streams(what: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise InvalidArgument(f"{what}: tty and stderr cannot both be true: with a terminal, stderr is "
                              "merged into stdout; set stderr=false")
    if not (stdin or stdout or stderr):
        raise InvalidArgument(f"{what}: at least one of stdin, stdout or stderr must be true")


def _check_id(what: str, field_name: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"{what}: {field_name} is required")


def validate_exec(container_id: str, cmd: list[str] | tuple[str, ...], tty: bool, stdin: bool, stdout: bool,
                  stderr: bool) -> ExecRequest:
    _check_id("Exec", "container_id", container_id)
    if not cmd or not cmd[0]:
        raise InvalidArgument("Exec: cmd is required (the program to run and its arguments)")
    if len(cmd) > MAX_CMD_ARGS or sum(len(a.encode()) for a in cmd) > MAX_CMD_BYTES:
        raise InvalidArgument(f"Exec: cmd is too long (at most {MAX_CMD_ARGS} arguments, {MAX_CMD_BYTES} bytes)")
    if any("\0" in a for a in cmd):
        raise InvalidArgument("Exec: cmd arguments cannot contain NUL bytes")
    _check_streams("Exec", tty, stdin, stdout, stderr)
    return ExecRequest(container_id, tuple(cmd), tty, stdin, stdout, stderr)


def validate_attach(container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> AttachRequest:
    _check_id("Attach", "container_id", container_id)
    _check_streams("Attach", tty, stdin, stdout, stderr)
    return AttachRequest(container_id, tty, stdin, stdout, stderr)


def validate_port_forward(sandbox_id: str, ports: list[int] | tuple[int, ...] = ()) -> PortForwardRequest:
    _check_id("PortForward", "pod_sandbox_id", sandbox_id)
    for p in ports:
        if not 0 < p < 65536:
            raise InvalidArgument(f"PortForward: port {p} is out of range (1-65535)")
    return PortForwardRequest(sandbox_id, tuple(ports))
