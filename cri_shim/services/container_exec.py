"""Exec: validate, then a single-use URL on the streaming server (the session runs there)."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import Unavailable
from cri_shim.services.container_execsync import running
from cri_shim.services.runtime_state import RuntimeState, StreamUrls


def streaming(state: RuntimeState) -> StreamUrls:
    if state.streaming is None:
        raise Unavailable("the streaming server is not running")
    return state.streaming


async def exec_url(state: RuntimeState, request: pb.ExecRequest) -> pb.ExecResponse:
    urls = streaming(state)
    c = running(state, request.container_id, "Exec")
    url = urls.exec_url(c.id, list(request.cmd), request.tty, request.stdin, request.stdout, request.stderr)
    return pb.ExecResponse(url=url)
