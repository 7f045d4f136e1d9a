"""The CRI log writer lives in runtime/logs.py (shared with the Windows backend); kept here for the pod shim."""

from runtime.logs import MAX_LINE, STREAMS, CriLogWriter, rfc3339nano

__all__ = ["MAX_LINE", "STREAMS", "CriLogWriter", "rfc3339nano"]
