"""The small versioned protocol between the daemon, the zygote and pod shims.

Transport: a path-based AF_UNIX SOCK_SEQPACKET socket (mode 0600 in a 0700
directory; never abstract, CVE-2020-15257). SEQPACKET keeps message
boundaries, so one recvmsg is one message and file descriptors (SCM_RIGHTS)
travel with the message they belong to.

Messages:
- control: a JSON object. Requests carry {"v": VERSION, "op": ...}; replies are
  {"ok": true, ...} or {"ok": false, "error": {"kind", "message", "field"?}}.
- stream frames (an attach connection after its reply): one channel byte then
  raw bytes. STDIN/STDOUT/STDERR carry data, CLOSE_STDIN has no payload,
  CONTROL carries JSON ({"resize": [w, h]} to the shim, {"exit": code} from it).

One connection per request, except `events` (the shim pushes exit events on it)
and `attach` (becomes a stream).
"""

from __future__ import annotations

import array
import json
import os
import socket
from typing import Any

VERSION = 1
MAX_MESSAGE = 256 * 1024
MAX_FDS = 8
FRAME_DATA_MAX = 32 * 1024

STDIN, STDOUT, STDERR, CLOSE_STDIN, CONTROL = 0, 1, 2, 3, 4

# Error kinds carried in replies; the backend maps them to runtime.base failures.
NOT_FOUND = "not_found"
INVALID_SPEC = "invalid_spec"
UNSUPPORTED = "unsupported"
WRONG_STATE = "wrong_state"
FAILURE = "failure"


class ProtocolError(Exception):
    """A peer sent something that is not this protocol (or a newer version)."""


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"malformed message: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def request(op: str, **params: Any) -> dict[str, Any]:
    return {"v": VERSION, "op": op, **params}


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def error(kind: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"kind": kind, "message": message}
    if field:
        err["field"] = field
    return {"ok": False, "error": err}


def new_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send_raw(sock: socket.socket, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def send(sock: socket.socket, obj: dict[str, Any], fds: tuple[int, ...] | list[int] = ()) -> None:
    send_raw(sock, encode(obj), fds)


def recv_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it; b"" at EOF. Received fds are close-on-exec."""
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4),
                                               socket.MSG_CMSG_CLOEXEC)
    return data, _fds(ancdata)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds = recv_raw(sock)
    if not data:
        close_fds(fds)
        return None, []
    return decode(data), fds


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    out: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
            out.extend(arr)
    return out


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def frame(channel: int, payload: bytes = b"") -> bytes:
    return bytes((channel,)) + payload
