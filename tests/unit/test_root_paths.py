"""Container paths resolved inside the root: symlinks in the image can never point a mount at the host."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.linux import root_paths


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def real(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_mkdirs_creates_missing_directories_inside_the_root(root: Path, root_fd: int) -> None:
    assert real(root_paths.mkdirs_in_root(root_fd, "/var/lib/data")) == str(root / "var/lib/data")
    assert (root / "var/lib/data").is_dir()


def test_absolute_symlink_destination_stays_in_the_root(tmp_path: Path, root: Path, root_fd: int) -> None:
    # CVE-2021-30465 / CVE-2022-23648: /data -> <host dir> must mean <root>/<host dir>.
    host = tmp_path / "host-etc"
    host.mkdir()
    (root / "data").symlink_to(host)
    got = real(root_paths.mkdirs_in_root(root_fd, "/data/sub"))
    assert got == str(root) + str(host) + "/sub"
    assert not (host / "sub").exists()


def test_relative_symlink_climbing_out_stays_in_the_root(tmp_path: Path, root: Path, root_fd: int) -> None:
    (tmp_path / "outside").mkdir()
    (root / "up").symlink_to("../../../../outside")
    got = real(root_paths.mkdirs_in_root(root_fd, "/up/x"))
    assert got == str(root / "outside/x")
    assert not (tmp_path / "outside/x").exists()


def test_dotdot_in_a_container_path_is_refused(root_fd: int) -> None:
    with pytest.raises(OSError) as err:
        root_paths.mkdirs_in_root(root_fd, "/a/../../etc")
    assert err.value.errno == errno.EINVAL


def test_file_target_is_created_inside_the_root(tmp_path: Path, root: Path, root_fd: int) -> None:
    host_file = tmp_path / "hostname"
    host_file.write_text("HOST")
    (root / "etc").mkdir()
    (root / "etc/hostname").symlink_to(host_file)  # dangling inside the root
    fd = root_paths.create_file_in_root(root_fd, "/etc/resolv.conf")
    assert real(fd) == str(root / "etc/resolv.conf")
    with pytest.raises(OSError):
        root_paths.open_in_root(root_fd, "/etc/hostname")  # resolves inside the root: does not exist
    assert host_file.read_text() == "HOST"


def test_proc_that_is_a_symlink_is_refused(tmp_path: Path, root: Path, root_fd: int) -> None:
    # CVE-2019-19921: an image shipping /proc -> / (or anywhere) must not redirect the procfs mount.
    (root / "elsewhere").mkdir()
    (root / "proc").symlink_to("/elsewhere")
    with pytest.raises(OSError, match="symlink or not a directory"):
        root_paths.procfs_target(root_fd, "/proc")


def test_proc_as_a_regular_file_is_refused(root: Path, root_fd: int) -> None:
    (root / "proc").write_text("")
    with pytest.raises(OSError, match="symlink or not a directory"):
        root_paths.procfs_target(root_fd, "/proc")


def test_proc_directory_or_missing_is_fine(root: Path, root_fd: int) -> None:
    assert real(root_paths.procfs_target(root_fd, "/proc")) == str(root / "proc")
    (root / "sys").mkdir()
    assert real(root_paths.procfs_target(root_fd, "/sys")) == str(root / "sys")


def test_check_fs_recognises_procfs() -> None:
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        root_paths.check_fs(fd, root_paths.PROC_SUPER_MAGIC, "/proc")
        with pytest.raises(OSError, match="not the expected filesystem"):
            root_paths.check_fs(fd, root_paths.SYSFS_MAGIC, "/proc")
    finally:
        os.close(fd)
