"""Domain errors.

Code below the gRPC servicers raises these; `server/interceptor.py` maps each
class to its gRPC status code in exactly one place. Messages are shown to the
user (kubelet logs them, crictl prints them), so they must say what was wrong
and, where possible, what to do about it. They never contain secrets.
"""

from __future__ import annotations


class CriError(Exception):
    """Base of every error a CRI caller may see; maps to a gRPC status code."""

    code_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CriError):
    code_name = "INVALID_ARGUMENT"


class NotFound(CriError):
    code_name = "NOT_FOUND"


class AlreadyExists(CriError):
    code_name = "ALREADY_EXISTS"


class FailedPrecondition(CriError):
    code_name = "FAILED_PRECONDITION"


class Unavailable(CriError):
    code_name = "UNAVAILABLE"


class ResourceExhausted(CriError):
    code_name = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(CriError):
    code_name = "DEADLINE_EXCEEDED"


class Unimplemented(CriError):
    code_name = "UNIMPLEMENTED"


class Internal(CriError):
    """A failure of ours that the caller cannot fix; the message still says what failed."""

    code_name = "INTERNAL"


class ConfigError(Exception):
    """The configuration file or flags are wrong; `serve` exits non-zero with this message."""


class StartupError(Exception):
    """The daemon cannot start (socket in use, unusable directory, ...)."""
