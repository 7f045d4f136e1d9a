"""Attach: a URL for the main process's stdio; `tty` must match the container's."""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import InvalidArgument
from cri_shim.services.container_exec import streaming
from cri_shim.services.container_execsync import running
from cri_shim.services.runtime_state import RuntimeState


async def attach_url(state: RuntimeState, request: pb.AttachRequest) -> pb.AttachResponse:
    urls = streaming(state)
    c = running(state, request.container_id, "Attach")
    if request.tty != c.config.tty:
        raise InvalidArgument(f"Attach: tty={request.tty} but the container was created with tty={c.config.tty}")
    if request.stdin and not c.config.stdin:
        raise InvalidArgument("Attach: stdin requested but the container was created without stdin")
    url = urls.attach_url(c.id, request.tty, request.stdin, request.stdout, request.stderr)
    return pb.AttachResponse(url=url)
