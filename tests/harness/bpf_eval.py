"""A classic-BPF interpreter for seccomp programs, so unit tests can ask a compiled filter what it does.

It runs the exact bytes the child would hand to seccomp(2) against a
`struct seccomp_data` built here, which checks both libseccomp's output as
we drive it and our own ENOSYS prologue without loading anything into a kernel.
"""

from __future__ import annotations

import struct

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_LOG = 0x7FFC0000

_M32 = 0xFFFFFFFF


def seccomp_data(nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> bytes:
    full = tuple(args) + (0,) * (6 - len(args))
    return struct.pack("=iIQ6Q", nr, arch, 0, *full)


def _alu(op: int, a: int, operand: int) -> int:
    ops = {0x00: lambda: a + operand, 0x10: lambda: a - operand, 0x20: lambda: a * operand,
           0x30: lambda: a // operand, 0x40: lambda: a | operand, 0x50: lambda: a & operand,
           0x60: lambda: a << operand, 0x70: lambda: a >> operand, 0x80: lambda: -a,
           0x90: lambda: a % operand, 0xA0: lambda: a ^ operand}
    return ops[op]() & _M32


def _jump(op: int, a: int, operand: int) -> bool:
    return {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]


def run(bpf: bytes, data: bytes) -> int:
    """The 32-bit return value of the program for `data`."""
    prog = [struct.unpack_from("=HBBI", bpf, off) for off in range(0, len(bpf), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, size_or_op, mode_or_src = code & 0x07, code & 0xF0, code & 0xE0
        if cls == 0x00:  # LD
            a = _load(mode_or_src, k, data, mem)
        elif cls == 0x01:  # LDX
            x = _load(mode_or_src, k, data, mem)
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            a = _alu(size_or_op, a, x if code & 0x08 else k)
        elif cls == 0x05:  # JMP
            if size_or_op == 0x00:
                pc += k
            else:
                pc += jt if _jump(size_or_op, a, x if code & 0x08 else k) else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        else:  # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def _load(mode: int, k: int, data: bytes, mem: list[int]) -> int:
    if mode == 0x20:  # ABS, word
        return int(struct.unpack_from("=I", data, k)[0])
    if mode == 0x00:  # IMM
        return k
    if mode == 0x60:  # MEM
        return mem[k]
    if mode == 0x80:  # LEN
        return len(data)
    raise ValueError(f"unsupported load mode {mode:#x}")
