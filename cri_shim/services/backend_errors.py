"""Runtime failures (runtime.base.RuntimeFailure family) -> CRI domain errors, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cri_shim import errors
from runtime import base


def to_cri(e: base.RuntimeFailure, what: str) -> errors.CriError:
    message = f"{what}: {e.message}"
    if isinstance(e, base.ObjectNotFound):
        return errors.NotFound(message)
    if isinstance(e, (base.InvalidSpec, base.Unsupported)):
        return errors.InvalidArgument(message)
    if isinstance(e, base.WrongState):
        return errors.FailedPrecondition(message)
    if isinstance(e, base.MonitorLost):
        return errors.Unavailable(message)
    if isinstance(e, base.OperationTimeout):
        return errors.DeadlineExceeded(message)
    return errors.Internal(message)


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Run a backend call; a RuntimeFailure comes out as the matching CriError prefixed with `what`."""
    try:
        yield
    except base.RuntimeFailure as e:
        raise to_cri(e, what) from None
