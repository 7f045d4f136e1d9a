"""CRI streaming: the HTTP server behind Exec/Attach/PortForward URLs (SPDY/3.1 and WebSocket).

The daemon creates one `StreamingServer(config.streaming, target)`, awaits
`start()`, answers Exec/Attach/PortForward with `exec_url`/`attach_url`/
`portforward_url`, and awaits `stop()` at shutdown.
"""

from cri_shim.streaming.requests import (AttachRequest, ExecRequest, PortForwardRequest, validate_attach,
                                         validate_exec, validate_port_forward)
from cri_shim.streaming.server import StreamingServer, StreamTarget

__all__ = ["AttachRequest", "ExecRequest", "PortForwardRequest", "StreamTarget", "StreamingServer",
           "validate_attach", "validate_exec", "validate_port_forward"]
