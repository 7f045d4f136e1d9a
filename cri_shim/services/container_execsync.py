"""ExecSync: run a command in a running container and wait; output capped at 16 MiB per stream.

A non-zero exit is an answer, not an error. On timeout the process group is
killed (critest checks `pgrep` finds nothing afterwards) and the caller gets
DEADLINE_EXCEEDED, which cri-client turns into ErrCommandTimedOut for probes.
"""

from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cri_shim.services.backend_errors import mapped
from cri_shim.services.runtime_state import EXEC_SYNC_OUTPUT_CAP, RuntimeState
from cri_shim.store.container import Container, ContainerState
from runtime import base

RESPONSE_OUTPUT_BUDGET = EXEC_SYNC_OUTPUT_CAP - (64 << 10)   # room for the rest of the message


def running(state: RuntimeState, container_id: str, what: str) -> Container:
    c = state.container(container_id)
    if c.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"{what}: container {c.id} is {c.state.value}, not running")
    return c


async def exec_sync(state: RuntimeState, request: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
    cmd = tuple(request.cmd)
    if not cmd or not cmd[0]:
        raise InvalidArgument("ExecSync: cmd is required (the program to run and its arguments)")
    if any("\0" in a for a in cmd):
        raise InvalidArgument("ExecSync: cmd arguments cannot contain NUL bytes")
    if request.timeout < 0:
        raise InvalidArgument(f"ExecSync: timeout {request.timeout} cannot be negative (0 = no timeout)")
    c = running(state, request.container_id, "ExecSync")
    backend = state.backend_of_container(c)
    with mapped(f"ExecSync in container {c.id}"):
        result = await backend.exec_sync(c.id, base.ExecSpec(args=cmd), float(request.timeout) or None,
                                         EXEC_SYNC_OUTPUT_CAP)
    if result.timed_out:
        raise DeadlineExceeded(f"ExecSync: {cmd[0]} did not finish within {request.timeout}s and was killed")
    # Both streams must fit in one response under the 16 MiB message limit kubelet's client enforces.
    stdout = result.stdout[:RESPONSE_OUTPUT_BUDGET]
    stderr = result.stderr[:RESPONSE_OUTPUT_BUDGET - len(stdout)]
    return pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=result.exit_code)
