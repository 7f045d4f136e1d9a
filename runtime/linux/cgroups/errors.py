"""Errors of the cgroups library, all in the runtime.base.RuntimeFailure family.

Every error names the spec field at fault (`field`, e.g. "linux.resources.memory.limit")
and says what is wrong (`message`). `str(error)` is "<field>: <message>", the text a
CRI caller sees. `message` and `field` are kept apart so the pod shim can send them
over its protocol separately (the daemon puts them back together).
"""

from __future__ import annotations

from runtime.base import InvalidSpec, RuntimeFailure, Unsupported, WrongState


class CgroupError(RuntimeFailure):
    """A cgroup operation failed; `field` names the spec key, `message` says why."""

    def __init__(self, field_name: str, message: str) -> None:
        RuntimeFailure.__init__(self, f"{field_name}: {message}")
        self.field = field_name
        # Bare reason without the field (the shim protocol carries the field on its own).
        self.message = message


class CgroupInvalid(CgroupError, InvalidSpec):
    """The requested value is malformed or out of range (a caller error)."""


class CgroupUnsupported(CgroupError, Unsupported):
    """The value is valid but this host cannot apply it (controller missing, kernel refuses)."""


class CgroupBusy(CgroupError, WrongState):
    """The cgroup still holds processes (or children) and cannot be removed in time."""
