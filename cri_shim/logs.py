"""Logging with request context.

Each RPC sets `rpc_context` (method and the ids it concerns); the formatter
appends them to every line logged while the RPC runs, including lines from
deep helpers that know nothing about gRPC.
"""

from __future__ import annotations

import contextvars
import logging
import sys

rpc_context: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_context", default="")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = rpc_context.get()
        record.ctx = f" [{ctx}]" if ctx else ""
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)s %(name)s%(ctx)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger is noisy at debug and says nothing an operator needs.
    logging.getLogger("grpc").setLevel(logging.WARNING)
