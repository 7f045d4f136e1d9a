"""Version: the first call of every runtime client (its connection check)."""

from __future__ import annotations

from cri_shim import CRI_API_VERSION, RUNTIME_NAME, __version__
from cri_shim.api import api_pb2 as pb

# The kubelet-facing "version" of the runtime API this server implements.
KUBELET_API_VERSION = "0.1.0"


def version(request: pb.VersionRequest) -> pb.VersionResponse:
    # cri-client rejects the response if any of the four strings is empty.
    return pb.VersionResponse(
        version=KUBELET_API_VERSION,
        runtime_name=RUNTIME_NAME,
        runtime_version=__version__,
        runtime_api_version=CRI_API_VERSION,
    )
