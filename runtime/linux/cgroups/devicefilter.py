"""cgroup v2 device control: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no devices.allow/deny files. Instead the kernel runs the eBPF programs
attached to a process's cgroup (BPF_CGROUP_DEVICE) on every open/mknod of a device
node, and refuses it unless they all return 1. Like runc's devicefilter, we:

1. replay the OCI rules through the cgroup v1 semantics (`DeviceState`, the kernel's
   devices.allow/deny logic), so v1 and v2 hosts give a container the same devices;
2. compile the resulting exception list into a straight-line program: load the request
   (type, access, major, minor) from `struct bpf_cgroup_dev_ctx`, test each exception,
   return the verdict of the first match, else the default;
3. attach it with BPF_F_ALLOW_MULTI, then detach the programs it replaces.

The program is built by hand (8-byte eBPF instructions) and loaded with bpf(2) through
ctypes: no libbpf, no compiler. The same program is also loaded and attached on this
hybrid v1 host's cgroup2 mount by the integration tests, where the kernel enforces it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.linux.cgroups.devices import (
    ALL_ACCESS,
    BPF_DEVCG_ACC_MKNOD,
    BPF_DEVCG_ACC_READ,
    BPF_DEVCG_ACC_WRITE,
    FIELD,
    WILDCARD,
    DeviceRule,
    DeviceState,
    Key,
    access_bits,
    effective_rules,
)
from runtime.linux.cgroups.errors import CgroupUnsupported
from runtime.linux.cgroups.hierarchy import UNIFIED
from runtime.linux.libc_calls import raw_syscall

if TYPE_CHECKING:
    from runtime.linux.cgroups.apply import Step
    from runtime.linux.cgroups.cgroup import Cgroup

log = logging.getLogger(__name__)

# include/uapi/linux/bpf.h
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
_DEV_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 5, 8, 9, 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}
__all__ = ["BPF_DEVCG_ACC_MKNOD", "BPF_DEVCG_ACC_READ", "BPF_DEVCG_ACC_WRITE", "DeviceState", "access_bits",
           "attach", "build_program", "encode", "load_program", "query_programs", "v2_device_step"]
LICENSE = b"Apache-2.0\0"   # no GPL-only helper is called, so any license string loads
_LOG_SIZE = 1 << 16

# ---------------------------------------------------------------- program


# eBPF opcodes (include/uapi/linux/bpf_common.h, bpf.h)
_LDX_MEM_W = 0x61
_ALU32_AND_K, _ALU32_RSH_K, _ALU32_MOV_K, _ALU32_MOV_X = 0x54, 0x74, 0xB4, 0xBC
_JMP32_JEQ_K, _JMP32_JNE_K, _JMP32_JNE_X = 0x16, 0x56, 0x5E
_EXIT = 0x95
R0, R1, R2, R3, R4, R5 = range(6)


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; } (little-endian bitfields)
        imm = self.imm - (1 << 32) if self.imm >= 1 << 31 else self.imm
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, imm)


def build_program(state: DeviceState) -> list[Insn]:
    # struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }: access_type is
    # (access << 16) | type.
    insns = [
        Insn(_LDX_MEM_W, R2, R1, 0), Insn(_ALU32_AND_K, R2, imm=0xFFFF),   # r2 = device type
        Insn(_LDX_MEM_W, R3, R1, 0), Insn(_ALU32_RSH_K, R3, imm=16),       # r3 = access asked for
        Insn(_LDX_MEM_W, R4, R1, 4),                                        # r4 = major
        Insn(_LDX_MEM_W, R5, R1, 8),                                        # r5 = minor
    ]
    verdict = 0 if state.default_allow else 1   # an exception means "the opposite of the default"
    for key in sorted(state.exceptions):
        insns += _exception_block(key, state.exceptions[key], state.default_allow, verdict)
    insns += [Insn(_ALU32_MOV_K, R0, imm=int(state.default_allow)), Insn(_EXIT)]
    return insns


def _exception_block(key: Key, bits: int, default_allow: bool, verdict: int) -> list[Insn]:
    kind, major, minor = key
    tests: list[Insn] = [Insn(_JMP32_JNE_K, R2, imm=_DEV_TYPES[kind])]
    if bits != ALL_ACCESS:   # rwm grants (or refuses) whatever is asked: no access test needed
        tests += [Insn(_ALU32_MOV_X, R1, R3), Insn(_ALU32_AND_K, R1, imm=bits)]
        # allow-list: every bit asked for must be granted; deny-list: any denied bit refuses.
        tests.append(Insn(_JMP32_JEQ_K, R1, imm=0) if default_allow else Insn(_JMP32_JNE_X, R1, R3))
    if major != WILDCARD:
        tests.append(Insn(_JMP32_JNE_K, R4, imm=major))
    if minor != WILDCARD:
        tests.append(Insn(_JMP32_JNE_K, R5, imm=minor))
    body = [Insn(_ALU32_MOV_K, R0, imm=verdict), Insn(_EXIT)]
    # Every test jumps past the block's end on a mismatch: offsets count from the next instruction.
    out = []
    for i, t in enumerate(tests):
        is_jump = t.code in (_JMP32_JEQ_K, _JMP32_JNE_K, _JMP32_JNE_X)
        out.append(Insn(t.code, t.dst, t.src, off=len(tests) - i - 1 + len(body) if is_jump else 0, imm=t.imm))
    return out + body


def encode(insns: Sequence[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


# ---------------------------------------------------------------- bpf(2)


def _bpf(cmd: int, attr: bytes | ctypes.Array[ctypes.c_char]) -> int:
    """bpf(2) with `attr` as union bpf_attr (a bytes value, or a buffer the kernel may write back into)."""
    try:
        nr = _SYS_BPF[platform.machine()]
    except KeyError:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}") from None
    buf = ctypes.create_string_buffer(attr, len(attr)) if isinstance(attr, bytes) else attr
    ret = raw_syscall(nr, ctypes.c_int(cmd), buf, ctypes.c_uint(len(buf)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def load_program(insns: Sequence[Insn]) -> int:
    """BPF_PROG_LOAD; returns the program fd. The verifier log is in the error if it refuses."""
    code = ctypes.create_string_buffer(encode(insns))
    lic = ctypes.create_string_buffer(LICENSE)
    log_buf = ctypes.create_string_buffer(_LOG_SIZE)

    def attr(level: int) -> bytes:
        return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(insns), ctypes.addressof(code),
                           ctypes.addressof(lic), level, _LOG_SIZE if level else 0,
                           ctypes.addressof(log_buf) if level else 0, 0, 0, b"cri_shim_dev", 0, 0)
    try:
        return _bpf(BPF_PROG_LOAD, attr(0))
    except OSError as e:
        if e.errno != errno.EACCES and e.errno != errno.EINVAL:
            raise
    try:
        return _bpf(BPF_PROG_LOAD, attr(1))   # again, only to get the verifier's explanation
    except OSError as e:
        text = log_buf.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"{e.strerror}; verifier: {text[-800:]}") from None


def query_programs(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached directly to this cgroup."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(struct.pack("<IIIIQI4x", cgroup_fd, BPF_CGROUP_DEVICE, 0, 0,
                                                   ctypes.addressof(ids), 64), 32)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr.raw, 24)[0]
    return [ids[i] for i in range(min(count, 64))]


def attach(cgroup_dir: Path, rules: Sequence[DeviceRule]) -> None:
    """Compile `rules` (the full effective list, v1 semantics) and make them this cgroup's device filter,
    replacing the device programs attached to it before."""
    program = build_program(DeviceState.of(rules))
    prog_fd = load_program(program)
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = query_programs(cg_fd)
        _bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", cg_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0))
        for prog_id in old:
            _detach_id(cg_fd, prog_id)
    finally:
        os.close(cg_fd)
        os.close(prog_fd)   # the attachment holds its own reference


def _detach_id(cg_fd: int, prog_id: int) -> None:
    try:
        old_fd = _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
    except OSError as e:
        log.warning("cannot open the replaced device program %d: %s", prog_id, e.strerror)
        return
    try:
        _bpf(BPF_PROG_DETACH, struct.pack("<IIIII", cg_fd, old_fd, BPF_CGROUP_DEVICE, 0, 0))
    except OSError as e:
        log.warning("cannot detach the replaced device program %d: %s", prog_id, e.strerror)
    finally:
        os.close(old_fd)


def v2_device_step(cg: Cgroup, rules: Sequence[DeviceRule]) -> Step:
    from runtime.linux.cgroups.apply import Step

    d = cg.dir(UNIFIED)
    assert d is not None
    effective = effective_rules(rules)

    def do() -> None:
        try:
            attach(d, effective)
        except OSError as e:
            raise CgroupUnsupported(FIELD, f"cannot attach the eBPF device filter to {d}: {e.strerror}") from None
    # The device step runs last, so nothing after it can fail and ask for an undo.
    return Step(do=do, undo=None, what=f"device filter of {d}")
