"""Seccomp: the RuntimeDefault profile, Localhost profiles, and compiling OCI profiles to BPF.

The parent compiles an OCI `linux.seccomp` object with libseccomp (through
ctypes) and exports the classic-BPF program as bytes (`compile_profile`). The
container init in the child then only has to hand those bytes to seccomp(2)
(`load_filter`): no libseccomp call happens after fork.

Behaviour follows runc where the OCI spec leaves room:
- syscall names this libseccomp does not know for the target architecture
  are skipped (the profile may list syscalls newer than the library);
- a rule whose action equals the default action is skipped (libseccomp
  refuses it);
- several conditions on the same argument index become one rule per
  condition (libseccomp cannot AND two tests of one argument);
- syscalls numbered above the highest one the profile names get ENOSYS
  instead of the default errno, so that a newer libc falls back to an older
  syscall instead of failing (runc's "-ENOSYS stub"), unless the default
  action allows everything anyway.
An unknown action, operator, architecture or flag is an error naming the field.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import json
import logging
import os
import platform
import stat
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import libc_calls

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- libseccomp constants

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO_BASE = 0x00050000
SCMP_ACT_TRACE_BASE = 0x7FF00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000

SECCOMP_RET_ERRNO = 0x00050000

_OPERATORS: Mapping[str, int] = MappingProxyType({
    "SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7,
})

# OCI flag name -> seccomp(2) flag bit, passed when the child loads the filter.
_FLAGS: Mapping[str, int] = MappingProxyType({
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
})

# The __X32_SYSCALL_BIT: x32 syscalls arrive with AUDIT_ARCH_X86_64 and this bit set.
_X32_SYSCALL_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E
LIBSECCOMP_SONAME = "libseccomp.so.2"
MAX_PROFILE_BYTES = 4 << 20


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class _Lib:
    """libseccomp's functions with their prototypes set; opened in the parent only."""

    handle: ctypes.CDLL

    @classmethod
    def open(cls) -> _Lib:
        try:
            lib = ctypes.CDLL(LIBSECCOMP_SONAME, use_errno=True)
        except OSError as e:
            raise Unsupported(f"seccomp: cannot load {LIBSECCOMP_SONAME} ({e}); install libseccomp2") from e
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_native.argtypes = []
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_arch_exist.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        return cls(lib)


# ---------------------------------------------------------------- profile types


class ProfileType(enum.Enum):
    """CRI SecurityProfile.ProfileType (RuntimeDefault=0, Unconfined=1, Localhost=2)."""

    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


def parse_legacy_profile_path(value: str, field_name: str) -> tuple[ProfileType | None, str]:
    """The deprecated CRI `seccomp_profile_path` string -> (type, localhost path); "" -> (None, "")."""
    if value == "":
        return None, ""
    if value in ("runtime/default", "docker/default"):
        return ProfileType.RUNTIME_DEFAULT, ""
    if value == "unconfined":
        return ProfileType.UNCONFINED, ""
    if value.startswith("localhost/"):
        return ProfileType.LOCALHOST, value[len("localhost/"):]
    raise InvalidSpec(field_name, f"unknown seccomp profile {value!r} (want runtime/default, "
                                  "unconfined or localhost/<absolute path>)")


def profile_for_container(profile_type: ProfileType | None, localhost_ref: str, *, privileged: bool,
                          bounding: Iterable[str],
                          field_name: str = "linux.security_context.seccomp") -> dict[str, Any] | None:
    """The OCI `linux.seccomp` for a container, or None for no filter.

    None (the CRI field unset) and Unconfined mean no filter; a privileged
    container gets no filter whatever was asked (containerd does the same).
    A Localhost profile is read and fully compiled here, so a bad file fails
    CreateContainer rather than StartContainer.
    """
    if privileged or profile_type in (None, ProfileType.UNCONFINED):
        return None
    if profile_type is ProfileType.RUNTIME_DEFAULT:
        return runtime_default_profile(bounding)
    profile = load_localhost_profile(localhost_ref, f"{field_name}.localhost_ref")
    compile_profile(profile, f"{field_name}.localhost_ref ({localhost_ref})")
    return profile


def load_localhost_profile(path: str, field_name: str) -> dict[str, Any]:
    """Read an OCI-format seccomp profile from an absolute path (size-capped, regular file only)."""
    if not path or not os.path.isabs(path):
        raise InvalidSpec(field_name, f"seccomp profile path must be absolute, got {path!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise InvalidSpec(field_name, f"cannot open seccomp profile {path}: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidSpec(field_name, f"seccomp profile {path} is not a regular file")
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise InvalidSpec(field_name, f"seccomp profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidSpec(field_name, f"seccomp profile {path} is not valid JSON: {e}") from e
    if not isinstance(profile, dict):
        raise InvalidSpec(field_name, f"seccomp profile {path} must be a JSON object")
    return _from_docker_format(profile, field_name)


def _from_docker_format(profile: dict[str, Any], field_name: str) -> dict[str, Any]:
    # Docker-format profiles (still common for Localhost) give architectures as an archMap; take
    # the entry of this machine. includes/excludes conditions cannot be honoured faithfully: refuse.
    out = dict(profile)
    arch_map = out.pop("archMap", None)
    if arch_map is not None and "architectures" not in out:
        native = _native_oci_arch()
        for entry in arch_map if isinstance(arch_map, list) else []:
            if isinstance(entry, dict) and entry.get("architecture") == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
    for i, rule in enumerate(out.get("syscalls") or []):
        if isinstance(rule, dict) and ("includes" in rule or "excludes" in rule):
            raise InvalidSpec(f"{field_name}.syscalls[{i}]",
                              "'includes'/'excludes' (Docker profile conditions) are not supported")
    return out


# ---------------------------------------------------------------- RuntimeDefault

# containerd's default allow-list (contrib/seccomp/seccomp_default.go, 2026), unconditional part.
_DEFAULT_ALLOWED: tuple[str, ...] = tuple("""
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules
lsm_set_self_attr lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir
mkdirat mknod mknodat mlock mlock2 mlockall map_shadow_stack mmap mmap2 mprotect mq_getsetattr
mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid
setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid
setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr
setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64
utimes vfork vmsplice wait4 waitid waitpid write writev
process_vm_readv process_vm_writev ptrace
""".split())

# Allowed only when the container's bounding set holds the capability (containerd's table).
_BY_CAPABILITY: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
                      "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
                      "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
                      "setns", "syslog", "umount", "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
})

_BY_MACHINE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                "cacheflush", "set_tls"),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache", "riscv_hwprobe"),
})

_ARCHES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
})

# Namespace-creating clone flags: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
AF_ALG = 38
AF_VSOCK = 40
# personality(2) values a normal program sets: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE(+UNAME26), query.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


def _native_oci_arch(machine: str | None = None) -> str:
    arches = _ARCHES.get(machine or platform.machine())
    return arches[0] if arches else ""


def _allow(names: Sequence[str], args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", "args": args or []}


def runtime_default_profile(bounding: Iterable[str], machine: str | None = None) -> dict[str, Any]:
    """containerd's RuntimeDefault profile for a container with this bounding set.

    Default action SCMP_ACT_ERRNO (EPERM). Without CAP_SYS_ADMIN, clone is
    allowed only with no namespace flag set and clone3 answers ENOSYS (so libc
    falls back to clone, whose flags seccomp can inspect); unshare, setns and
    mount are not allowed at all. socket() is allowed for every family but
    AF_ALG and AF_VSOCK.
    """
    arch = machine or platform.machine()
    caps = set(bounding)
    syscalls: list[dict[str, Any]] = [_allow(_DEFAULT_ALLOWED)]
    syscalls += [
        _allow(["socket"], [{"index": 0, "value": AF_ALG, "op": "SCMP_CMP_LT"}]),
        _allow(["socket"], [{"index": 0, "value": AF_ALG + 1, "op": "SCMP_CMP_EQ"}]),
        _allow(["socket"], [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_GT"}]),
    ]
    syscalls += [_allow(["personality"], [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}])
                 for p in _PERSONALITIES]
    if arch in _BY_MACHINE:
        syscalls.append(_allow(_BY_MACHINE[arch]))
    for cap, names in _BY_CAPABILITY.items():
        if cap in caps:
            syscalls.append(_allow(names))
    if "CAP_SYS_ADMIN" not in caps:
        # s390 passes the clone flags in the second argument.
        index = 1 if arch == "s390x" else 0
        syscalls.append(_allow(["clone"], [{"index": index, "value": CLONE_NAMESPACE_FLAGS,
                                            "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]))
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return {"defaultAction": "SCMP_ACT_ERRNO", "architectures": list(_ARCHES.get(arch, ())),
            "syscalls": syscalls}


# ---------------------------------------------------------------- compiling


@dataclass(frozen=True)
class CompiledFilter:
    """A seccomp program ready for the child: BPF bytes, seccomp(2) flags, and seccomp's syscall number."""

    bpf: bytes
    flags: int
    seccomp_nr: int

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8


@dataclass(frozen=True)
class _Rule:
    action: int
    names: tuple[str, ...]
    conditions: tuple[tuple[tuple[int, int, int, int], ...], ...]  # OR of ANDs of (index, op, a, b)


def _action(name: Any, errno_ret: Any, field_name: str) -> int:
    if errno_ret is not None and (not isinstance(errno_ret, int) or isinstance(errno_ret, bool)
                                  or not 0 <= errno_ret <= 0xFFFF):
        raise InvalidSpec(field_name, f"errnoRet must be an integer 0..65535, got {errno_ret!r}")
    simple = {"SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
              "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS, "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
              "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW, "SCMP_ACT_LOG": SCMP_ACT_LOG}
    if name == "SCMP_ACT_ERRNO":
        return SCMP_ACT_ERRNO_BASE | (errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return SCMP_ACT_TRACE_BASE | (errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_NOTIFY":
        raise Unsupported(f"{field_name}: SCMP_ACT_NOTIFY needs a seccomp agent, which cri-shim does not run")
    if name in simple:
        if errno_ret is not None:
            raise InvalidSpec(field_name, f"errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}")
        return simple[name]
    raise InvalidSpec(field_name, f"unknown seccomp action {name!r}")


def _u64(value: Any, field_name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise InvalidSpec(field_name, f"must be an unsigned 64-bit integer, got {value!r}")
    return value


def _conditions(args: Any, field_name: str) -> tuple[tuple[tuple[int, int, int, int], ...], ...]:
    if args is None:
        return ((),)
    if not isinstance(args, list):
        raise InvalidSpec(field_name, "must be a list")
    parsed = []
    for i, arg in enumerate(args):
        where = f"{field_name}[{i}]"
        if not isinstance(arg, dict):
            raise InvalidSpec(where, "must be an object")
        index = arg.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
            raise InvalidSpec(f"{where}.index", f"must be 0..5, got {index!r}")
        op = arg.get("op")
        if not isinstance(op, str) or op not in _OPERATORS:
            raise InvalidSpec(f"{where}.op", f"unknown operator {op!r}")
        parsed.append((index, _OPERATORS[op], _u64(arg.get("value", 0), f"{where}.value"),
                       _u64(arg.get("valueTwo", 0), f"{where}.valueTwo")))
    indexes = [p[0] for p in parsed]
    if len(set(indexes)) != len(indexes):
        # libseccomp cannot AND two tests of the same argument; runc makes each its own rule (OR).
        return tuple((p,) for p in parsed)
    return (tuple(parsed),)


def _parse_rules(profile: Mapping[str, Any], field_name: str) -> list[_Rule]:
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidSpec(f"{field_name}.syscalls", "must be a list")
    rules = []
    for i, entry in enumerate(syscalls):
        where = f"{field_name}.syscalls[{i}]"
        if not isinstance(entry, dict):
            raise InvalidSpec(where, "must be an object")
        names = entry.get("names")
        if names is None and isinstance(entry.get("name"), str):
            names = [entry["name"]]  # the pre-1.0 singular form, still in old Docker profiles
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise InvalidSpec(f"{where}.names", "must be a non-empty list of syscall names")
        action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action")
        rules.append(_Rule(action, tuple(names), _conditions(entry.get("args"), f"{where}.args")))
    return rules


def _flags(profile: Mapping[str, Any], field_name: str) -> int:
    flags = profile.get("flags") or []
    if not isinstance(flags, list):
        raise InvalidSpec(f"{field_name}.flags", "must be a list")
    bits = 0
    for flag in flags:
        if flag not in _FLAGS:
            raise InvalidSpec(f"{field_name}.flags", f"unsupported seccomp flag {flag!r}")
        bits |= _FLAGS[flag]
    return bits


def _default_action(profile: Mapping[str, Any], field_name: str) -> int:
    if "defaultAction" not in profile:
        raise InvalidSpec(f"{field_name}.defaultAction", "is required")
    return _action(profile["defaultAction"], profile.get("defaultErrnoRet"), f"{field_name}.defaultAction")


_KNOWN_KEYS = frozenset({"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls",
                         "listenerPath", "listenerMetadata"})


def compile_profile(profile: Mapping[str, Any], field_name: str = "linux.seccomp",
                    machine: str | None = None) -> CompiledFilter:
    """Compile an OCI `linux.seccomp` object into a BPF program (in the parent, with libseccomp)."""
    if not isinstance(profile, Mapping):
        raise InvalidSpec(field_name, "must be an object")
    unknown = sorted(set(profile) - _KNOWN_KEYS)
    if unknown:
        raise InvalidSpec(field_name, f"unknown key(s) {unknown}")
    if profile.get("listenerPath"):
        raise Unsupported(f"{field_name}.listenerPath: seccomp agents (SCMP_ACT_NOTIFY) are not supported")
    default = _default_action(profile, field_name)
    rules = _parse_rules(profile, field_name)
    flags = _flags(profile, field_name)
    lib = _Lib.open()
    ctx = lib.handle.seccomp_init(default)
    if not ctx:
        raise InvalidSpec(f"{field_name}.defaultAction", "libseccomp refused the default action")
    try:
        native = lib.handle.seccomp_arch_native()
        _add_arches(lib, ctx, profile.get("architectures") or [], f"{field_name}.architectures")
        highest = _add_rules(lib, ctx, native, rules, default, field_name)
        bpf = _export(lib, ctx)
    finally:
        lib.handle.seccomp_release(ctx)
    if default not in (SCMP_ACT_ALLOW, SCMP_ACT_LOG) and highest >= 0:
        bpf = _enosys_stub(native, highest) + bpf
    try:
        nr = libc_calls.syscall_number("seccomp", machine)
    except KeyError as e:
        raise Unsupported(f"seccomp: unsupported machine {machine or platform.machine()}") from e
    return CompiledFilter(bpf, flags, nr)


def _add_arches(lib: _Lib, ctx: int, arches: Any, field_name: str) -> None:
    if not isinstance(arches, list):
        raise InvalidSpec(field_name, "must be a list")
    for arch in arches:
        if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
            raise InvalidSpec(field_name, f"unknown architecture {arch!r}")
        token = lib.handle.seccomp_arch_resolve_name(arch[len("SCMP_ARCH_"):].lower().encode())
        if token == 0:
            raise InvalidSpec(field_name, f"unknown architecture {arch!r}")
        if lib.handle.seccomp_arch_exist(ctx, token) == 0:
            continue
        ret = lib.handle.seccomp_arch_add(ctx, token)
        if ret < 0:
            raise InvalidSpec(field_name, f"cannot add architecture {arch}: {os.strerror(-ret)}")


def _add_rules(lib: _Lib, ctx: int, native: int, rules: list[_Rule], default: int, field_name: str) -> int:
    """Add every rule; return the highest native syscall number the profile names (-1 if none)."""
    highest = -1
    for rule in rules:
        for name in rule.names:
            nr = lib.handle.seccomp_syscall_resolve_name_arch(native, name.encode())
            if nr < 0:
                # Unknown on this architecture (or to this libseccomp): skipped, as runc does.
                log.debug("seccomp: syscall %s unknown on this architecture; skipped", name)
                continue
            highest = max(highest, nr)
            if rule.action == default:
                continue
            for conds in rule.conditions:
                _rule_add(lib, ctx, rule.action, nr, conds, f"{field_name} syscall {name}")
    return highest


def _rule_add(lib: _Lib, ctx: int, action: int, nr: int,
              conds: tuple[tuple[int, int, int, int], ...], where: str) -> None:
    array = (_ArgCmp * max(len(conds), 1))(*[_ArgCmp(*c) for c in conds])
    ret = lib.handle.seccomp_rule_add_array(ctx, action, nr, len(conds), array)
    if ret < 0:
        raise InvalidSpec(where, f"libseccomp rejected the rule: {os.strerror(-ret)}")


def _export(lib: _Lib, ctx: int) -> bytes:
    # libseccomp 2.5 can only export to a file descriptor; a memfd keeps it off the disk.
    fd = os.memfd_create("cri-shim-seccomp", os.MFD_CLOEXEC)
    try:
        ret = lib.handle.seccomp_export_bpf(ctx, fd)
        if ret < 0:
            raise InvalidSpec("linux.seccomp", f"cannot export the seccomp filter: {os.strerror(-ret)}")
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0:
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGT_K = 0x25
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06


def _enosys_stub(native: int, highest: int) -> bytes:
    """BPF prologue: native syscalls numbered above `highest` return ENOSYS, the rest fall through.

    The libseccomp program that follows reloads what it needs, so the stub
    leaves no state behind; all jumps are forward into it.
    """
    x32_check = native == _AUDIT_ARCH_X86_64
    length = 6 if x32_check else 5
    prog = [_bpf(_BPF_LD_W_ABS, 0, 0, 4)]                           # A = seccomp_data.arch
    prog.append(_bpf(_BPF_JEQ_K, 0, length - 2, native))           # other arch -> filter
    prog.append(_bpf(_BPF_LD_W_ABS, 0, 0, 0))                      # A = seccomp_data.nr
    if x32_check:
        prog.append(_bpf(_BPF_JGE_K, length - 4, 0, _X32_SYSCALL_BIT))  # x32 ABI -> filter
    prog.append(_bpf(_BPF_JGT_K, 0, 1, highest))                   # newer than the profile?
    prog.append(_bpf(_BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS))
    assert len(prog) == length
    return b"".join(prog)


class FilterCache:
    """Compiled filters by profile content: most containers share one RuntimeDefault profile.

    Owned by the caller (one per pod shim), bounded; compiling the default
    profile costs ~10 ms, a lookup ~0.3 ms (canonical JSON of the profile).
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, CompiledFilter] = {}

    def compile(self, profile: Mapping[str, Any], field_name: str = "linux.seccomp") -> CompiledFilter:
        try:
            key = json.dumps(profile, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise InvalidSpec(field_name, f"not a JSON object: {e}") from e
        found = self._entries.get(key)
        if found is not None:
            return found
        compiled = compile_profile(profile, field_name)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # oldest first: dicts keep insertion order
        self._entries[key] = compiled
        return compiled

    def __len__(self) -> int:
        return len(self._entries)


def load_filter(compiled: CompiledFilter) -> None:
    """Install the filter on the calling thread (child side; no libseccomp involved)."""
    libc_calls.seccomp_set_filter(compiled.bpf, compiled.flags, compiled.seccomp_nr)
