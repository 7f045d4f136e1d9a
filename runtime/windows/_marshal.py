"""UTF-16LE strings and GUIDs across the ctypes boundary.

We never use `c_wchar_p`: on Linux it is UTF-32 and the tests must run the
exact bytes Windows sees. Returned strings are read and freed in `take_wstr`,
the one place that frees DLL memory (the allocator is injected: LocalFree
for computecore/computestorage per Microsoft's docs, CoTaskMemFree for HCN).
"""

from __future__ import annotations

import ctypes as C
import uuid
from collections.abc import Callable

from runtime.windows import _abi

Free = Callable[[int], object]


def wstr(text: str) -> C.Array[C.c_char]:
    """A NUL-terminated UTF-16LE buffer; the caller keeps it alive for the call."""
    if "\0" in text:
        raise ValueError("a string passed to a Windows API must not contain NUL")
    raw = text.encode("utf-16-le") + b"\0\0"
    return C.create_string_buffer(raw, len(raw))


def wstr_in(text: str | None) -> C.Array[C.c_char] | None:
    """`wstr`, or NULL for None (optional PCWSTR arguments)."""
    return None if text is None else wstr(text)


def read_wstr(address: int) -> str:
    """Read a NUL-terminated UTF-16LE string at `address` without freeing it."""
    chars = C.cast(C.c_void_p(address), C.POINTER(C.c_uint16))
    n = 0
    while chars[n]:
        n += 1
    return C.string_at(address, 2 * n).decode("utf-16-le", errors="replace")


def take_wstr(slot: C.c_void_p, free: Free) -> str | None:
    """Read a string the DLL returned through a PWSTR* slot, free it exactly once, clear the slot."""
    address = slot.value
    if not address:
        return None
    try:
        return read_wstr(address)
    finally:
        slot.value = None
        free(address)


def guid_in(value: str | uuid.UUID) -> _abi.GUID:
    raw = (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).bytes_le
    return _abi.GUID.from_buffer_copy(raw)


def guid_out(g: _abi.GUID) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(g))


def check_hr(hr: int) -> int:
    """Normalise a ctypes int32 HRESULT to unsigned; callers compare with `_abi.HResult`."""
    return _abi.unsigned(hr)
