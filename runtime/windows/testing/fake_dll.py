"""A "DLL" made of CFUNCTYPE thunks, so the ctypes bindings run for real on Linux.

`FakeDll(impl, table)` exposes, for every name in an `_abi` signature table, a
C function pointer built with that signature whose body is `impl.<name>`. The
binding code (`hcs.bind`, `ComputeCoreApi`, ...) then calls through libffi with
the exact argument types it uses against the real DLL on Windows: UTF-16LE
buffers, out-pointers, structs. This tests marshalling, not the DLL.

`Allocator` plays the DLL's string allocator: it hands out NUL-terminated
UTF-16LE buffers and checks that each one is freed exactly once.
"""

from __future__ import annotations

import ctypes as C
import threading
from typing import Any

from runtime.windows import _abi


class FakeDll:
    def __init__(self, impl: object, table: dict[str, _abi.Signature]) -> None:
        self._thunks: dict[str, Any] = {}
        for name, (restype, argtypes) in table.items():
            body = getattr(impl, name, None)
            if body is None:
                body = _missing(name)
            prototype = C.CFUNCTYPE(restype, *argtypes)
            thunk = prototype(body)
            self._thunks[name] = thunk       # keep the thunk alive as long as the DLL
            setattr(self, name, thunk)

    def names(self) -> list[str]:
        return sorted(self._thunks)


def _missing(name: str) -> Any:
    def fail(*_: Any) -> int:
        raise AssertionError(f"{name} is bound but the fake does not implement it")
    return fail


class Allocator:
    """UTF-16LE strings the fake DLL returns; `free` must be called exactly once per string."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, C.Array[C.c_char]] = {}
        self.freed = 0
        self.errors: list[str] = []

    def string(self, text: str) -> int:
        raw = text.encode("utf-16-le") + b"\0\0"
        buf = C.create_string_buffer(raw, len(raw))
        address = C.addressof(buf)
        with self._lock:
            self._live[address] = buf
        return address

    def free(self, address: int) -> None:
        with self._lock:
            if self._live.pop(address, None) is None:
                self.errors.append(f"free of 0x{address:x}: not allocated here, or freed twice")
            else:
                self.freed += 1

    def outstanding(self) -> int:
        with self._lock:
            return len(self._live)


def put(slot: Any, value: int | None) -> None:
    """Write a pointer-sized value through an out-pointer argument (ignores NULL out-pointers)."""
    if slot:
        slot[0] = value


def read_in(address: int | None) -> str | None:
    """A PCWSTR argument as text; checks it is NUL-terminated UTF-16LE by construction of the read."""
    if not address:
        return None
    chars = C.cast(C.c_void_p(address), C.POINTER(C.c_uint16))
    n = 0
    while chars[n]:
        n += 1
    return C.string_at(address, 2 * n).decode("utf-16-le")
