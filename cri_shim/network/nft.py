"""nftables through libnftables (ctypes): the `nft` language in-process, no fork or exec.

One `Nft` owns one libnftables context. A buffer of commands given to `run`
is one netlink batch, so it is applied atomically: either every rule and
element in it exists afterwards or none does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

NFT_CTX_OUTPUT_JSON = 1 << 4
LIBRARY_NAMES = ("libnftables.so.1", "nftables")


class NftError(Exception):
    """An nft command failed; the message is libnftables' own error text."""


def _load_library() -> ctypes.CDLL:
    errors = []
    for name in LIBRARY_NAMES:
        path = name if name.endswith(".1") else ctypes.util.find_library(name)
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            errors.append(str(e))
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib
    raise NftError("libnftables is not installed (Debian package libnftables1, pulled in by nftables)"
                   + (f": {'; '.join(errors)}" if errors else ""))


class Nft:
    """A libnftables context; thread-safe (one command buffer at a time)."""

    def __init__(self) -> None:
        self._lib = _load_library()
        self._ctx = self._lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: str, json_output: bool = False) -> str:
        """Run `commands` (nft syntax, newline separated) as one batch; returns the output text."""
        with self._lock:
            if self._ctx is None:
                raise NftError("nftables context is closed")
            flags = self._lib.nft_ctx_output_get_flags(self._ctx)
            flags = flags | NFT_CTX_OUTPUT_JSON if json_output else flags & ~NFT_CTX_OUTPUT_JSON
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(error.strip() or f"nft failed (rc {rc})")
        return output

    def json(self, command: str) -> list[dict[str, Any]]:
        """A `list ...` command's objects (the "nftables" array without its metainfo entry)."""
        text = self.run(command, json_output=True)
        items: list[dict[str, Any]] = json.loads(text).get("nftables", []) if text.strip() else []
        return [i for i in items if "metainfo" not in i]

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


def missing(error: NftError) -> bool:
    """True when `error` says the object does not exist (ENOENT)."""
    return "No such file or directory" in str(error)


def quote(name: str) -> str:
    """An interface name as an nft string literal (names were validated: no quotes inside)."""
    return '"' + name + '"'
