"""The cgroup v2 eBPF device filter: the v1 rule semantics it encodes, and the program it emits.

The program's bytes are run by a small eBPF interpreter below (the subset of
instructions the generator uses, decoded from the encoded bytes, so encoding bugs
show), and its verdicts are compared with DeviceState, the model of the kernel's
cgroup v1 device rules. The integration tests load the same program into the kernel
(the verifier accepts it) and check it is enforced on this host's cgroup2 mount, and
compare DeviceState with the real v1 devices.list.
"""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from runtime.linux.cgroups import devicefilter as df
from runtime.linux.cgroups.devices import DEFAULT_DEVICE_RULES, DeviceRule, effective_rules, parse_rules

ACCESSES = [a for n in (1, 2, 3) for a in map("".join, itertools.combinations("rwm", n))]
TYPE_CODE = {"b": df.BPF_DEVCG_DEV_BLOCK, "c": df.BPF_DEVCG_DEV_CHAR}


def run(program: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """Execute an encoded BPF_PROG_TYPE_CGROUP_DEVICE program on one request; returns r0."""
    ctx = struct.pack("<III", (df.access_bits(access) << 16) | TYPE_CODE[kind], major, minor)
    regs = [0] * 11
    pc = 0
    m32 = 0xFFFFFFFF
    for _ in range(10000):
        code, regbyte, off, imm = struct.unpack_from("<BBhi", program, pc * 8)
        dst, src = regbyte & 0xF, regbyte >> 4
        pc += 1
        if code == 0x61:      # ldxw dst, [src+off]; r1 is the context
            assert src == 1, "only the context is ever read"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            regs[dst] = regs[dst] & imm & m32
        elif code == 0x74:
            regs[dst] = (regs[dst] & m32) >> imm
        elif code == 0xB4:
            assert off == 0, "mov with a non-zero offset is a sign-extending move: never emitted"
            regs[dst] = imm & m32
        elif code == 0xBC:
            assert off == 0 and imm == 0, "reserved fields of mov must be zero (the verifier refuses)"
            regs[dst] = regs[src] & m32
        elif code in (0x16, 0x56, 0x5E):   # jmp32 jeq/jne imm, jne reg
            a = regs[dst] & m32
            b = (regs[src] if code == 0x5E else imm) & m32
            if (a == b) == (code == 0x16):
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not terminate")


def compile_rules(rules: list[DeviceRule]) -> tuple[df.DeviceState, bytes]:
    state = df.DeviceState.of(rules)
    return state, df.encode(df.build_program(state))


def requests() -> list[tuple[str, int, int, str]]:
    return [(k, ma, mi, a) for k in ("b", "c") for ma in (1, 5, 8, 10, 136) for mi in (0, 1, 3, 5, 11, 200)
            for a in ACCESSES]


def random_rule(rng: random.Random) -> DeviceRule:
    kind = rng.choice("abcc")
    return DeviceRule(allow=rng.random() < 0.6, type=kind, major=rng.choice([-1, 1, 5, 136]),
                      minor=rng.choice([-1, 3, 5]), access=rng.choice(ACCESSES))


# ---------------------------------------------------------------- v1 semantics

def test_the_default_container_devices_are_usable_and_nothing_else() -> None:
    state = df.DeviceState.of(effective_rules(()))
    assert not state.default_allow
    assert state.allows("c", 1, 3, df.access_bits("rw"))            # /dev/null
    assert state.allows("c", 136, 7, df.access_bits("rw"))          # /dev/pts/7
    assert state.allows("c", 250, 1, df.access_bits("m"))           # mknod of anything
    assert state.allows("b", 8, 0, df.access_bits("m"))
    assert not state.allows("c", 250, 1, df.access_bits("r"))       # ... but not opening it
    assert not state.allows("b", 8, 0, df.access_bits("r"))         # a host disk
    assert not state.allows("c", 1, 11, df.access_bits("r"))        # /dev/kmsg
    assert state.allows("c", 1, 3, df.access_bits("rwm"))


def test_a_deny_in_allow_list_mode_removes_access_from_the_same_exception_only() -> None:
    state = df.DeviceState.of(list(parse_rules([
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"},
        {"allow": True, "type": "c", "major": 4, "access": "r"},
        {"allow": False, "type": "c", "major": 4, "minor": 1, "access": "r"},   # not the "4:*" exception
    ])))
    assert state.v1_list() == ["c 1:3 rm", "c 4:* r"]
    assert state.allows("c", 1, 3, df.access_bits("r"))
    assert not state.allows("c", 1, 3, df.access_bits("rw"))
    assert state.allows("c", 4, 1, df.access_bits("r"))   # v1 keeps the wildcard exception


def test_deny_list_mode_refuses_any_overlapping_access() -> None:
    state = df.DeviceState.of([DeviceRule(allow=True), DeviceRule(allow=False, type="c", major=1, minor=3,
                                                                  access="w")])
    assert state.default_allow
    assert state.allows("c", 1, 3, df.access_bits("r"))
    assert not state.allows("c", 1, 3, df.access_bits("w"))
    assert not state.allows("c", 1, 3, df.access_bits("rw"))
    assert state.allows("b", 8, 0, df.access_bits("rwm"))


def test_an_all_devices_rule_resets_the_exceptions() -> None:
    state = df.DeviceState.of([DeviceRule(allow=False), DeviceRule(allow=True, type="c", major=1, minor=3),
                               DeviceRule(allow=False)])
    assert state.exceptions == {}
    assert not state.allows("c", 1, 3, df.access_bits("r"))


# ---------------------------------------------------------------- the program

def test_the_program_starts_by_loading_type_access_major_minor_from_the_context() -> None:
    _, program = compile_rules([DeviceRule(allow=False)])
    assert program[:48] == bytes.fromhex(
        "6112000000000000"    # r2 = *(u32 *)(r1 + 0)
        "54020000ffff0000"    # w2 &= 0xffff        (device type)
        "6113000000000000"    # r3 = *(u32 *)(r1 + 0)
        "7403000010000000"    # w3 >>= 16           (access)
        "6114040000000000"    # r4 = *(u32 *)(r1 + 4) (major)
        "6115080000000000")   # r5 = *(u32 *)(r1 + 8) (minor)
    assert program[48:] == bytes.fromhex("b400000000000000" "9500000000000000")   # deny-all: r0 = 0; exit


def test_the_program_of_the_default_set_agrees_with_the_v1_model() -> None:
    state, program = compile_rules(list(effective_rules(())))
    for req in requests():
        assert run(program, *req) == int(state.allows(req[0], req[1], req[2], df.access_bits(req[3]))), req


@pytest.mark.parametrize("seed", range(40))
def test_the_program_agrees_with_the_v1_model_on_random_rule_lists(seed: int) -> None:
    rng = random.Random(seed)
    rules = [random_rule(rng) for _ in range(rng.randint(1, 12))]
    state, program = compile_rules(rules)
    for req in requests():
        expected = state.allows(req[0], req[1], req[2], df.access_bits(req[3]))
        assert run(program, *req) == int(expected), (rules, req)


def test_large_device_numbers_are_compared_as_32_bit_values() -> None:
    rules = [DeviceRule(allow=False), DeviceRule(allow=True, type="c", major=(1 << 32) - 1, minor=1 << 31)]
    state, program = compile_rules(rules)
    assert run(program, "c", (1 << 32) - 1, 1 << 31, "r") == 1
    assert run(program, "c", (1 << 31) - 1, 1 << 31, "r") == 0
    assert state.allows("c", (1 << 32) - 1, 1 << 31, df.access_bits("r"))


def test_the_defaults_are_appended_after_the_spec_rules() -> None:
    # A spec that denies /dev/null cannot take it away: runc appends its allowed set last, so do we.
    spec = parse_rules([{"allow": False, "access": "rwm"},
                        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])
    rules = effective_rules(spec)
    assert rules[-len(DEFAULT_DEVICE_RULES):] == DEFAULT_DEVICE_RULES
    _, program = compile_rules(list(rules))
    assert run(program, "c", 1, 3, "rw") == 1
