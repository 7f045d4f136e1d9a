"""The CRI Linux security context of a container -> the security fields of its OCI spec.

One call for the spec builder at CreateContainer, so every rule lives in one
place and is applied the same way for the native and the runc handler (both
read the resulting config.json):

    parts = security_parts(SecurityContextRequest(...), image_root=layers_or_rootfs)
    parts.apply_to(spec)      # fills process.user/capabilities/noNewPrivileges, linux.seccomp/maskedPaths/readonlyPaths

Rules (containerd's CRI plugin unless noted):
- a privileged container needs a privileged sandbox; it gets every capability
  the runtime holds, no masked or read-only paths and no seccomp filter
  (host devices are the cgroup/device code's part);
- masked/read-only paths exactly as kubelet sent them (empty = unmasked);
- run_as_group needs run_as_user or run_as_username; users and groups are
  resolved in the image (`users.resolve_user`);
- capabilities per `capabilities.oci_capabilities` for the resolved uid;
- seccomp: unset and Unconfined = none, RuntimeDefault = containerd's profile
  for the final bounding set, Localhost = the file, read and checked now;
- AppArmor: unset/Unconfined is a no-op; this host has no AppArmor, so any
  other profile is refused. SELinux options are refused likewise (the host
  has SELinux disabled): never silently weaker than asked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.base import InvalidSpec, Unsupported
from runtime.linux import capabilities, seccomp, users

FIELD = "linux.security_context"


class AppArmorType(enum.Enum):
    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


@dataclass(frozen=True)
class SecurityContextRequest:
    """The CRI LinuxContainerSecurityContext fields, as plain values (the daemon converts the proto)."""

    privileged: bool = False
    sandbox_privileged: bool = False
    capabilities: capabilities.CapabilityRequest | None = None
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: users.GroupsPolicy = users.GroupsPolicy.MERGE
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp_type: seccomp.ProfileType | None = None
    seccomp_localhost_ref: str = ""
    apparmor_type: AppArmorType | None = None
    apparmor_localhost_ref: str = ""
    selinux_options: tuple[str, ...] = ()     # user, role, type, level as sent; all empty = unset
    image_user: str = ""                      # the image config's USER


@dataclass(frozen=True)
class SecurityParts:
    user: users.ResolvedUser
    capabilities: dict[str, list[str]]
    no_new_privileges: bool
    seccomp: dict[str, Any] | None
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    available: tuple[str, ...] = field(default=())

    def apply_to(self, spec: dict[str, Any]) -> None:
        """Write these fields into an OCI spec dict (other fields untouched)."""
        process = spec.setdefault("process", {})
        user = process.setdefault("user", {})
        user.update(self.user.to_oci())
        process["capabilities"] = {k: list(v) for k, v in self.capabilities.items()}
        process["noNewPrivileges"] = self.no_new_privileges
        linux = spec.setdefault("linux", {})
        linux["maskedPaths"] = list(self.masked_paths)
        linux["readonlyPaths"] = list(self.readonly_paths)
        if self.seccomp is None:
            linux.pop("seccomp", None)
        else:
            linux["seccomp"] = self.seccomp


def _check_lsm(req: SecurityContextRequest) -> None:
    if req.apparmor_type not in (None, AppArmorType.UNCONFINED):
        raise Unsupported(f"{FIELD}.apparmor: apparmor is not supported on this host "
                          "(only unset or Unconfined can be honoured)")
    if any(req.selinux_options):
        raise Unsupported(f"{FIELD}.selinux_options: selinux is not enabled on this host")


def _check_paths(paths: Sequence[str], field_name: str) -> tuple[str, ...]:
    for p in paths:
        if not p.startswith("/") or "\0" in p or ".." in p.split("/"):
            raise InvalidSpec(field_name, f"{p!r} must be an absolute path without '..'")
    return tuple(paths)


def security_parts(req: SecurityContextRequest, image_root: str | Sequence[str],
                   available: tuple[str, ...] | None = None) -> SecurityParts:
    """Validate `req` and resolve it against the image (rootfs dir, or layer dirs lowest first)."""
    if req.privileged and not req.sandbox_privileged:
        raise InvalidSpec(f"{FIELD}.privileged", "a privileged container needs a privileged sandbox "
                                                 "(the pod's security context must be privileged too)")
    _check_lsm(req)
    user = users.resolve_user(image_root, users.UserRequest(
        run_as_user=req.run_as_user, run_as_username=req.run_as_username, run_as_group=req.run_as_group,
        supplemental_groups=req.supplemental_groups, policy=req.supplemental_groups_policy,
        image_user=req.image_user), FIELD)
    held = capabilities.available_capabilities() if available is None else available
    caps = capabilities.oci_capabilities(req.capabilities, privileged=req.privileged, uid=user.uid,
                                         available=held, field_prefix=f"{FIELD}.capabilities")
    profile = seccomp.profile_for_container(req.seccomp_type, req.seccomp_localhost_ref,
                                            privileged=req.privileged, bounding=caps["bounding"],
                                            field_name=f"{FIELD}.seccomp")
    masked = () if req.privileged else _check_paths(req.masked_paths, f"{FIELD}.masked_paths")
    readonly = () if req.privileged else _check_paths(req.readonly_paths, f"{FIELD}.readonly_paths")
    return SecurityParts(user, caps, req.no_new_privs, profile, masked, readonly, held)
