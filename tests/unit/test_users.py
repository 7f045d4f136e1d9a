"""User/group resolution inside an image on fake rootfs and layer directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.base import InvalidSpec
from runtime.linux import users
from runtime.linux.users import GroupsPolicy, UserRequest, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
default-user:x:1000:1000::/home/default-user:/bin/sh
broken:x:notanumber:1:::
huge:x:4294967296:0::/:/bin/sh
"""
GROUP = """root:x:0:
www-data:x:33:
default-user:x:1000:default-user
group-defined-in-image:x:50000:default-user,www-data
staff:x:50:
"""


def make_root(base: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    (base / "etc").mkdir(parents=True)
    if passwd is not None:
        (base / "etc/passwd").write_text(passwd)
    if group is not None:
        (base / "etc/group").write_text(group)
    return base


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(make_root(tmp_path / "rootfs"))


@pytest.mark.parametrize("image_user, uid, gid", [
    ("", 0, 0), ("1002", 1002, 0), ("www-data", 33, 33), ("1003:1004", 1003, 1004),
    ("www-data:1004", 33, 1004), ("www-data:staff", 33, 50), ("1000", 1000, 1000), ("0:50", 0, 50),
])
def test_image_user_strings(root: str, image_user: str, uid: int, gid: int) -> None:
    out = resolve_user(root, UserRequest(image_user=image_user))
    assert (out.uid, out.gid) == (uid, gid)


def test_run_as_user_takes_gid_and_home_from_passwd(root: str) -> None:
    out = resolve_user(root, UserRequest(run_as_user=33, image_user="1000"))
    assert (out.uid, out.gid, out.username, out.home) == (33, 33, "www-data", "/var/www")


def test_run_as_user_unknown_to_the_image_gets_gid_0(root: str) -> None:
    out = resolve_user(root, UserRequest(run_as_user=4242))
    assert (out.uid, out.gid, out.username, out.home, out.additional_gids) == (4242, 0, "", "/", (0,))


def test_run_as_group_overrides_the_primary_group(root: str) -> None:
    out = resolve_user(root, UserRequest(run_as_user=1000, run_as_group=7))
    assert (out.uid, out.gid) == (1000, 7)


def test_run_as_username_is_looked_up(root: str) -> None:
    out = resolve_user(root, UserRequest(run_as_username="www-data", run_as_group=50))
    assert (out.uid, out.gid) == (33, 50)


def test_unknown_username_is_an_error_naming_the_field(root: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        resolve_user(root, UserRequest(run_as_username="nobody-here"))
    assert err.value.field == "linux.security_context.run_as_username"
    with pytest.raises(InvalidSpec, match="not found in the image's /etc/group"):
        resolve_user(root, UserRequest(image_user="www-data:nogroup"))


def test_run_as_group_without_run_as_user_is_an_error(root: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        resolve_user(root, UserRequest(run_as_group=1000, image_user="1000"))
    assert err.value.field == "linux.security_context.run_as_group"


@pytest.mark.parametrize("request_, field", [
    (UserRequest(run_as_user=2**32 - 1), "run_as_user"),
    (UserRequest(run_as_user=2**32), "run_as_user"),
    (UserRequest(run_as_user=-1), "run_as_user"),
    (UserRequest(run_as_user=0, run_as_group=2**32 + 5), "run_as_group"),
    (UserRequest(run_as_user=0, supplemental_groups=(2**63,)), "supplemental_groups"),
    (UserRequest(image_user="4294967296"), "image.config.User"),
    (UserRequest(image_user="0:4294967295"), "image.config.User"),
])
def test_ids_outside_0_to_2_pow_32_minus_2_never_wrap_to_root(root: str, request_: UserRequest,
                                                             field: str) -> None:
    # CVE-2024-40635: a uid above the 32-bit range used to be truncated to 0 (root).
    with pytest.raises(InvalidSpec) as err:
        resolve_user(root, request_)
    assert err.value.field.endswith(field)


def test_largest_valid_id_is_accepted(root: str) -> None:
    assert resolve_user(root, UserRequest(run_as_user=2**32 - 2)).uid == 2**32 - 2


def test_malformed_passwd_lines_never_match(root: str) -> None:
    assert resolve_user(root, UserRequest(run_as_user=0)).username == "root"
    with pytest.raises(InvalidSpec):
        resolve_user(root, UserRequest(run_as_username="huge"))
    with pytest.raises(InvalidSpec):
        resolve_user(root, UserRequest(run_as_username="broken"))


@pytest.mark.parametrize("bad", ["a:b:c", "a:", ":b", "a\nb"])
def test_malformed_image_user_is_rejected(root: str, bad: str) -> None:
    with pytest.raises(InvalidSpec, match="malformed user"):
        resolve_user(root, UserRequest(image_user=bad))


def test_merge_policy_adds_image_groups_after_the_requested_ones(root: str) -> None:
    # critest "SupplementalGroupsPolicy=Merge": uid 1000 -> groups 1000, 1234 and 50000 from /etc/group.
    out = resolve_user(root, UserRequest(run_as_user=1000, supplemental_groups=(1234,)))
    assert out.additional_gids == (1000, 1234, 50000)


def test_strict_policy_uses_only_the_requested_groups(root: str) -> None:
    # CVE-2023-25173 is about the opposite mistake; Strict must not pull from /etc/group at all.
    out = resolve_user(root, UserRequest(run_as_user=1000, supplemental_groups=(1234,),
                                         policy=GroupsPolicy.STRICT))
    assert out.additional_gids == (1000, 1234)


def test_merge_for_image_user_name(root: str) -> None:
    out = resolve_user(root, UserRequest(image_user="www-data"))
    assert out.additional_gids == (33, 50000)


def test_missing_passwd_and_group_files_are_fine_for_numeric_ids(tmp_path: Path) -> None:
    bare = make_root(tmp_path / "bare", passwd=None, group=None)
    out = resolve_user(str(bare), UserRequest(image_user="1001:1001", supplemental_groups=(5,)))
    assert (out.uid, out.gid, out.additional_gids) == (1001, 1001, (1001, 5))
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user(str(bare), UserRequest(image_user="www-data"))


# ---------------------------------------------------------------- reading the image safely


def test_absolute_symlink_is_resolved_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "host-passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    rootfs = make_root(tmp_path / "rootfs", passwd=None)
    (rootfs / "etc/passwd").symlink_to(outside)  # absolute path on the host
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user(str(rootfs), UserRequest(image_user="evil"))
    # ... and the same target inside the image is what gets read.
    inner = rootfs / str(outside).lstrip("/")
    inner.parent.mkdir(parents=True)
    inner.write_text("good:x:7:7::/:/bin/sh\n")
    assert resolve_user(str(rootfs), UserRequest(image_user="good")).uid == 7


def test_dotdot_symlinks_stop_at_the_image_root(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret/passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    rootfs = tmp_path / "a/b/rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/passwd").symlink_to("../../../../secret/passwd")  # = tmp_path/secret/passwd on the host
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user(str(rootfs), UserRequest(image_user="evil"))


def test_symlinked_etc_directory_is_followed_inside_the_image(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "private/etc").mkdir(parents=True)
    (rootfs / "private/etc/passwd").write_text("app:x:99:98::/:/bin/sh\n")
    (rootfs / "etc").symlink_to("/private/etc")
    assert resolve_user(str(rootfs), UserRequest(image_user="app")).gid == 98


def test_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    rootfs = make_root(tmp_path / "rootfs", passwd=None)
    (rootfs / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidSpec, match="(?i)too many symlinks"):
        resolve_user(str(rootfs), UserRequest(image_user="x"))


def test_fifo_passwd_is_refused_without_blocking(tmp_path: Path) -> None:
    rootfs = make_root(tmp_path / "rootfs", passwd=None)
    os.mkfifo(rootfs / "etc/passwd")
    with pytest.raises(InvalidSpec, match="not a regular file"):
        resolve_user(str(rootfs), UserRequest(image_user="x"))


def test_user_files_are_read_up_to_the_cap_and_refused_beyond(tmp_path: Path) -> None:
    # containerd's TestOpenUserFileCapsReads (CVE-2026-47262): an entry ending exactly at the cap is
    # parsed; one byte more is an error, never a silent truncation.
    line = "beyond:x:42:\n"
    at_cap = make_root(tmp_path / "a", group="#" * (users.MAX_USER_FILE_BYTES - len(line) - 1) + "\n" + line)
    out = resolve_user(str(at_cap), UserRequest(image_user="www-data"))
    assert out.gid == 33
    assert users.parse_group(users.read_image_file([str(at_cap)], "/etc/group", "f") or "")[-1].gid == 42
    past = make_root(tmp_path / "b", group="#" * users.MAX_USER_FILE_BYTES + "\n" + line)
    with pytest.raises(InvalidSpec, match="exceeds"):
        resolve_user(str(past), UserRequest(image_user="www-data"))


def test_layers_topmost_wins(tmp_path: Path) -> None:
    lower = make_root(tmp_path / "l0", passwd="app:x:1:1::/:/bin/sh\n")
    upper = make_root(tmp_path / "l1", passwd="app:x:2:2::/:/bin/sh\n", group=None)
    assert resolve_user([str(lower), str(upper)], UserRequest(image_user="app")).uid == 2
    # /etc/group comes from the lower layer, as overlayfs would show it.
    assert resolve_user([str(lower), str(upper)], UserRequest(image_user="app:staff")).gid == 50


def test_layers_honour_oci_whiteouts(tmp_path: Path) -> None:
    lower = make_root(tmp_path / "l0", passwd="app:x:1:1::/:/bin/sh\n")
    upper = make_root(tmp_path / "l1", passwd=None, group=None)
    (upper / "etc/.wh.passwd").write_text("")
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user([str(lower), str(upper)], UserRequest(image_user="app"))


def test_layers_honour_opaque_directories(tmp_path: Path) -> None:
    lower = make_root(tmp_path / "l0", passwd="app:x:1:1::/:/bin/sh\n")
    upper = make_root(tmp_path / "l1", passwd=None, group=None)
    (upper / "etc/.wh..wh..opq").write_text("")
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user([str(lower), str(upper)], UserRequest(image_user="app"))


def test_layers_honour_overlay_whiteout_devices(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a whiteout needs root")
    lower = make_root(tmp_path / "l0", passwd="app:x:1:1::/:/bin/sh\n")
    upper = make_root(tmp_path / "l1", passwd=None, group=None)
    os.mknod(upper / "etc/passwd", 0o600 | 0o020000, os.makedev(0, 0))
    with pytest.raises(InvalidSpec, match="not found"):
        resolve_user([str(lower), str(upper)], UserRequest(image_user="app"))


@pytest.mark.parametrize("user, field", [
    ({"uid": 2**32}, "process.user.uid"), ({"uid": 0, "gid": -1}, "process.user.gid"),
    ({"uid": 0, "additionalGids": [1, 2**32 - 1]}, "process.user.additionalGids"),
    ({"uid": "0"}, "process.user.uid"), ({"uid": True}, "process.user.uid"),
])
def test_oci_user_ids_are_range_checked(user: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        users.check_oci_user(user)
    assert err.value.field == field
