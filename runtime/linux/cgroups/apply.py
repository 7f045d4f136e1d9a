"""Running a plan as transactionally as cgroupfs allows.

Every target is checked first (controller mounted, file present), the current value of
every file is read, then the writes run in order. If one fails, the writes already
done are undone in reverse order, so a rejected limit leaves the cgroup as it was.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.linux.cgroups import fsio
from runtime.linux.cgroups.devices import FIELD as DEVICES_FIELD
from runtime.linux.cgroups.devices import DEFAULT_DEVICE_RULES, DeviceRule, DeviceState, effective_rules
from runtime.linux.cgroups.errors import CgroupUnsupported
from runtime.linux.cgroups.hierarchy import UNIFIED
from runtime.linux.cgroups.plan import Write

if TYPE_CHECKING:
    from runtime.linux.cgroups.cgroup import Cgroup

log = logging.getLogger(__name__)


class _RetryLater(Exception):
    """EINVAL on a write whose value may only fit once a later write is done."""


@dataclass
class Step:
    do: Callable[[], None]
    undo: Callable[[], None] | None
    what: str


def run_steps(steps: Sequence[Step]) -> None:
    done: list[Step] = []
    deferred: list[Step] = []
    try:
        for step in steps:
            try:
                step.do()
                done.append(step)
            except _RetryLater:
                deferred.append(step)
        for step in deferred:
            step.do()   # a second EINVAL is final: the error names the key
            done.append(step)
    except BaseException:
        _undo(done)
        raise


def _undo(done: list[Step]) -> None:
    for step in reversed(done):
        if step.undo is None:
            continue
        try:
            step.undo()
        except Exception as e:  # noqa: BLE001 - undo is best effort; keep restoring the others
            log.warning("cannot restore %s after a failed apply: %s", step.what, e)


# ---------------------------------------------------------------- files


def file_steps(cg: Cgroup, writes: Sequence[Write]) -> list[Step]:
    steps = []
    before: dict[Path, str] = {}
    for w in writes:
        path = _target(cg, w)
        if path is None:
            continue
        if path not in before:
            try:
                before[path] = fsio.read(path)
            except OSError:
                before[path] = ""   # write-only file: nothing to restore
        steps.append(Step(do=_writer(cg, path, w), undo=_restorer(path, before[path], w), what=str(path)))
    return steps


def _target(cg: Cgroup, w: Write) -> Path | None:
    d = cg.dir(w.controller)
    if d is None:
        if w.optional:
            return None
        raise CgroupUnsupported(w.field, f"the {w.controller} controller is not available on this host")
    path = d / w.file
    if not path.exists():
        if w.optional:
            return None
        if cg.hierarchy.hierarchy_of(w.controller) == UNIFIED:
            why = f"the {w.controller} controller is not enabled for this cgroup, or the kernel lacks this file"
        else:
            why = "the kernel lacks this file (option or controller feature turned off)"
        raise CgroupUnsupported(w.field, f"{w.file} does not exist in {d} ({why})")
    return path


def _writer(cg: Cgroup, path: Path, w: Write) -> Callable[[], None]:
    retried = [False]

    def do() -> None:
        try:
            fsio.write(path, w.value)
        except OSError as e:
            if e.errno == errno.EINVAL and w.retry_einval and not retried[0]:
                retried[0] = True
                raise _RetryLater() from None
            raise CgroupUnsupported(w.field, f"cannot set {w.file} to {w.value!r}: {e.strerror}"
                                    f"{_hint(cg, path, w, e.errno)}") from None
    return do


def _hint(cg: Cgroup, path: Path, w: Write, err: int | None) -> str:
    if w.file.startswith("cpuset.") and err in (errno.EINVAL, errno.ERANGE):
        allowed = _read_first(path.parent.parent, ("cpuset.effective_cpus", "cpuset.cpus")
                              if w.file == "cpuset.cpus" else ("cpuset.effective_mems", "cpuset.mems"))
        return f" (the parent cgroup allows {allowed!r})" if allowed is not None else ""
    if w.file in ("memory.limit_in_bytes", "memory.max") and err == errno.EBUSY:
        usage = cg.read_value("memory", "memory.usage_in_bytes" if w.file.endswith("bytes") else "memory.current")
        return f" (current usage {usage} bytes cannot be reclaimed below the new limit)"
    if err == errno.EINVAL:
        return " (the kernel rejected the value)"
    return ""


def _read_first(d: Path, names: tuple[str, ...]) -> str | None:
    for n in names:
        try:
            return fsio.read(d / n).strip()
        except OSError:
            continue
    return None


def _restorer(path: Path, old: str, w: Write) -> Callable[[], None] | None:
    values = undo_values(w.file, old, w.value)
    if not values:
        return None

    def undo() -> None:
        for v in values:
            fsio.write(path, v)
    return undo


def undo_values(file: str, old: str, written: str) -> list[str]:
    """What to write to `file` to get back from `written` to the content `old` (empty: cannot)."""
    if file == "memory.oom_control":
        disabled = fsio.parse_keyed(old).get("oom_kill_disable")
        return [] if disabled is None else [str(disabled)]
    if file.startswith("blkio.throttle.") or file == "io.max":
        device = written.split()[0]
        for line in old.splitlines():
            if line.split()[:1] == [device]:
                return [line]
        return [f"{device} 0"] if file.startswith("blkio.") else [f"{device} rbps=max wbps=max riops=max wiops=max"]
    text = old.strip()
    if "\n" in text:
        return []   # a multi-line (keyed) file: no single value restores it
    return [text]


# ---------------------------------------------------------------- devices


def device_steps(cg: Cgroup, rules: Sequence[DeviceRule]) -> list[Step]:
    if cg.hierarchy.hierarchy_of("devices") not in (None, UNIFIED):
        return [_v1_device_step(cg, rules)]
    if cg.hierarchy.v2:
        from runtime.linux.cgroups.devicefilter import v2_device_step
        return [v2_device_step(cg, rules)]
    # Refuse rather than run a container with every host device open to it.
    raise CgroupUnsupported(DEVICES_FIELD, "the devices controller is not mounted on this host")


def _v1_device_step(cg: Cgroup, rules: Sequence[DeviceRule]) -> Step:
    d = cg.dir("devices")
    assert d is not None
    old = fsio.read(d / "devices.list")
    # An update with the same devices must not rewrite them: "deny all" first would leave the
    # running container without /dev/null for a moment.
    if sorted(line for line in old.splitlines() if line.strip()) == DeviceState.of(effective_rules(rules)).v1_list():
        return Step(do=lambda: None, undo=None, what=f"{d / 'devices.list'} (unchanged)")
    lines: list[tuple[str, str, str]] = [("devices.deny", "a", DEVICES_FIELD)]
    lines += [(_v1_file(r), r.v1_line(), f"{DEVICES_FIELD}[{i}]") for i, r in enumerate(rules)]
    lines += [(_v1_file(r), r.v1_line(), f"{DEVICES_FIELD} (default rule {r.v1_line()!r})")
              for r in DEFAULT_DEVICE_RULES]

    def undo() -> None:
        _restore_device_list(d, old)

    def do() -> None:
        for file, line, field_name in lines:
            try:
                fsio.write(d / file, line)
            except OSError as e:
                # This step is many writes: put the list back before reporting (run_steps undoes only whole steps).
                try:
                    undo()
                except OSError as undo_error:
                    log.warning("cannot restore %s: %s", d / "devices.list", undo_error)
                # EPERM: the parent cgroup does not allow the device; EINVAL: "a" with child cgroups.
                raise CgroupUnsupported(field_name, f"cannot write {line!r} to {file}: {e.strerror}"
                                        f"{_device_hint(e.errno)}") from None
    return Step(do=do, undo=undo, what=str(d / "devices.list"))


def _device_hint(err: int | None) -> str:
    if err == errno.EPERM:
        return " (the parent cgroup does not allow this device)"
    if err == errno.EINVAL:
        return " (a rule for all devices cannot change while the cgroup has child cgroups)"
    return ""


def _v1_file(rule: DeviceRule) -> str:
    return "devices.allow" if rule.allow else "devices.deny"


def _restore_device_list(d: Path, old: str) -> None:
    entries = [line.strip() for line in old.splitlines() if line.strip()]
    if entries == ["a *:* rwm"]:
        fsio.write(d / "devices.allow", "a")
        return
    fsio.write(d / "devices.deny", "a")
    for line in entries:
        fsio.write(d / "devices.allow", line)

