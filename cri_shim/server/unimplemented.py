"""Explicit UNIMPLEMENTED answers for the RPCs cri-shim does not serve yet.

Each missing method answers UNIMPLEMENTED with a message naming the RPC, so a
caller (and an operator reading kubelet's log) can tell "not built" from a
failure. The README's support table lists the same methods.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from cri_shim import __version__
from cri_shim.errors import Unimplemented


def _unimplemented(name: str) -> Any:
    async def method(self: object, request: object, context: object) -> None:
        raise Unimplemented(f"{name} is not implemented by cri-shim {__version__} "
                            "(see the RPC support table in the README)")

    method.__name__ = name
    return method


def fill_unimplemented(cls: type, service: ServiceDescriptor) -> list[str]:
    """Add an UNIMPLEMENTED handler for every method of `service` that `cls` lacks; returns their names."""
    missing = [m.name for m in service.methods if not hasattr(cls, m.name)]
    for name in missing:
        setattr(cls, name, _unimplemented(name))
    return missing
