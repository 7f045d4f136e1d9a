"""The critest look-alike images do what the specs that use them check.

Each image is unpacked with runtime.linux.unpack, stacked with overlayfs and
run with util-linux `unshare` + `chroot` (new mount, pid, ipc and net
namespaces): a minimal stand-in for a runtime, enough to see what critest's
commands would see. The cri-shim runtime itself is exercised by critest.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runtime.linux.unpack import unpack_layer
from tests.harness import imagebuild as ib
from tests.harness import testimages as ti
from tests.harness.daemon import make_workdir
from tests.integration.layers_registry import LocalRegistry, start_registry

CRITEST_APPLETS = "sh top echo sleep cat ls id hostname ipcs pidof pgrep netstat brctl ping touch mount dd grep chmod"


@pytest.fixture(scope="module")
def images() -> dict[str, ti.TestImage]:
    return ti.by_name(ti.build_all())


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = make_workdir("timg")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextmanager
def rootfs(image: ib.Image, workdir: Path, platform: ib.Platform | None = ti.AMD64) -> Iterator[Path]:
    """The image's layers unpacked and stacked (read-write overlay with a private upper dir)."""
    base = Path(tempfile.mkdtemp(dir=workdir))
    lowers = []
    for i, blob in enumerate(image.layer_blobs(platform)):
        d = base / f"layer{i}"
        d.mkdir()
        unpack_layer(io.BytesIO(ib.decompress(blob.data, blob.media_type)), d)
        lowers.append(str(d))
    upper, work, mnt = base / "upper", base / "work", base / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    opts = f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        shutil.rmtree(base)


def run(root: Path, script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`script` (host sh) runs in new mount/pid/ipc/net namespaces with $R = the rootfs, lo up."""
    wrapper = f'set -e; R="{root}"; mkdir -p "$R/proc"; mount -t proc proc "$R/proc"; ip link set lo up; {script}'
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--ipc", "--net", "sh", "-c", wrapper],
                          capture_output=True, text=True, timeout=timeout)


def config(img: ti.TestImage) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(img.image().config_blob(ti.AMD64).data)["config"]
    return cfg


def test_build_is_deterministic_and_cached(images: dict[str, ti.TestImage], workdir: Path) -> None:
    other = workdir / "cache2"
    (other / "debs").mkdir(parents=True)
    for deb in (ti.DEFAULT_CACHE / "debs").glob("*.deb"):
        shutil.copy(deb, other / "debs")
    again = ti.by_name(ti.build_all(other))
    assert {n: (t.digest, t.image_id) for n, t in again.items()} == \
           {n: (t.digest, t.image_id) for n, t in images.items()}
    assert ti.build_all(other)[0].layout == sorted(again.values(), key=lambda t: t.name)[0].layout


def test_every_critest_name_is_an_oci_index_with_one_linux_amd64_manifest(images: dict[str, ti.TestImage]) -> None:
    critest = [n for n in images if not n.startswith(ti.OURS)]
    assert len(critest) == 21
    for name in critest:
        doc = images[name].image().manifest_json()
        assert doc["mediaType"] == ib.OCI_INDEX, name
        assert [m["platform"] for m in doc["manifests"]] == [{"os": "linux", "architecture": "amd64"}], name


def test_tag_and_registry_sharing_matches_what_the_image_specs_expect(images: dict[str, ti.TestImage]) -> None:
    g = ti.GCR
    assert len({images[f"{g}/test-image-tags:{t}"].digest for t in "123"}) == 1
    assert len({images[f"{g}/test-image-{t}:latest"].image_id for t in "123"}) == 3
    assert images[f"{g}/test-image-tag:test"].image_id != images[f"{g}/test-image-tag:all"].image_id
    assert images[ti.PAUSE[0]].digest == images[ti.PAUSE[1]].digest
    assert images[ti.PAUSE[0]].path == images[ti.PAUSE[1]].path == "pause"
    users = {s: config(images[f"{g}/test-image-user-{s}:latest"])["User"]
             for s in ("uid", "username", "uid-group", "username-group")}
    assert users == {"uid": "1002", "username": "www-data", "uid-group": "1003:1004", "username-group": "www-data:1004"}
    assert config(images[f"{g}/test-image-predefined-group:latest"])["User"] == "1000"
    assert config(images[ti.BUSYBOX])["Cmd"] == ["sh"]


def test_busybox_has_the_applets_users_and_execs_masked_ls(images: dict[str, ti.TestImage], workdir: Path) -> None:
    with rootfs(images[ti.BUSYBOX].image(), workdir) as r:
        for applet in CRITEST_APPLETS.split():
            assert (r / "bin" / applet).exists(), applet
        assert (r / "bin/ls").stat().st_ino == (r / "bin/busybox").stat().st_ino  # hard links, as upstream
        out = run(r, 'chroot "$R" sh -c "id -u nobody; id -u www-data; hostname >/dev/null && echo ok"')
        assert out.stdout.split() == ["65534", "33", "ok"], out.stderr
        masked = run(r, 'mount --bind /dev/null "$R/bin/ls"; chroot "$R" /bin/sh -c ls')
        assert masked.stderr == "/bin/sh: ls: Permission denied\n" and masked.returncode == 127
        readonly = run(r, 'mount -o bind,ro "$R/tmp" "$R/tmp"; chroot "$R" touch /tmp/x')
        assert "Read-only file system" in readonly.stderr


def test_busybox_applet_links_carry_the_executable_mode(images: dict[str, ti.TestImage]) -> None:
    """containerd and Docker chmod a hard link's inode to the link header's mode: with 0644 headers, busybox
    (and so every applet) would not be executable under containerd ("top": not found in $PATH)."""
    blob = images[ti.BUSYBOX].image().layer_blobs(ti.AMD64)[0]
    with tarfile.open(fileobj=io.BytesIO(ib.decompress(blob.data, blob.media_type))) as tar:
        links = [m for m in tar.getmembers() if m.islnk() and m.linkname == "bin/busybox"]
    assert len(links) > 100
    assert {m.mode for m in links} == {0o755}


def test_busybox_pgrep_and_ipcs_scripts(images: dict[str, ti.TestImage], workdir: Path) -> None:
    with rootfs(images[ti.BUSYBOX].image(), workdir) as r:
        none = run(r, 'chroot "$R" sh -c "pgrep sleep || true"')
        assert none.stdout == "" and none.returncode == 0, none.stderr
        found = run(r, 'chroot "$R" sleep 30 & p=$!; i=0; '
                       'until [ "$(readlink "$R/proc/$p/exe")" = "$R/bin/sleep" ] || [ $i -ge 400 ]; do '
                       '  i=$((i+1)); sleep 0.05; done; chroot "$R" pgrep sleep; kill %1')
        assert found.stdout.strip().isdigit(), found
        ipc = run(r, 'id=$(ipcmk -M 1048576 | sed "s/.*: //"); echo "ID=$id"; chroot "$R" ipcs -m')
        segment = ipc.stdout.splitlines()[0].removeprefix("ID=")
        assert segment.isdigit() and any(line.split()[1:2] == [segment] for line in ipc.stdout.splitlines()[2:]
                                         if line.strip()), ipc
        empty = run(r, 'chroot "$R" ipcs -m')  # a fresh IPC namespace: no segments listed
        assert not any(line.split() and line.split()[0].lstrip("-").isdigit()
                       for line in empty.stdout.splitlines()), empty.stdout


def test_nginx_lookalike_is_named_nginx_with_master_process_pid_file_and_200(images: dict[str, ti.TestImage],
                                                                            workdir: Path) -> None:
    for name, port in ((ti.NGINX, 80), (ti.HOSTNET_NGINX, 12003)):
        img = images[name]
        cfg = config(img)
        argv = " ".join([*cfg.get("Entrypoint", []), *cfg.get("Cmd", [])])
        env = " ".join(f"'{e}'" for e in cfg["Env"])
        with rootfs(img.image(), workdir) as r:
            out = run(r, f'''chroot "$R" env -i {env} {argv} > /dev/null &
                for i in $(seq 50); do chroot "$R" wget -q -O- http://127.0.0.1:{port}/ >/dev/null 2>&1 && break; sleep 0.1; done
                pid=$(cat "$R/var/run/nginx.pid"); echo "pidfile=$pid"
                chroot "$R" pidof nginx; tr '\\0' ' ' < "$R/proc/$pid/cmdline"; echo
                chroot "$R" wget -S -O /dev/null http://127.0.0.1:{port}/ 2>&1 | grep "HTTP/"; kill $pid''')
        lines = out.stdout.splitlines()
        assert lines[0].startswith("pidfile="), out
        pid = lines[0].removeprefix("pidfile=")
        assert pid in lines[1].split(), out           # pidof nginx finds the pid from the pid file
        assert "master process" in lines[2], out      # what ContainerPID / PodPID specs grep
        assert "200" in lines[3], out


def test_httpd_lookalike_logs_httpd_and_serves_200(images: dict[str, ti.TestImage], workdir: Path) -> None:
    img = images[ti.HTTPD]
    cfg = config(img)
    with rootfs(img.image(), workdir) as r:
        out = run(r, f'''chroot "$R" env -i '{cfg["Env"][0]}' {" ".join(cfg["Cmd"])} > "$R/../log" 2>&1 &
            for i in $(seq 50); do chroot "$R" wget -q -O- http://127.0.0.1:80/ >/dev/null 2>&1 && break; sleep 0.1; done
            chroot "$R" wget -S -O /dev/null http://127.0.0.1:80/ 2>&1 | grep "HTTP/"; kill $!; cat "$R/../log"''')
    assert "200" in out.stdout and "httpd" in out.stdout.split("\n", 1)[1], out


def test_nonewprivs_prints_the_effective_uid_with_and_without_no_new_privs(images: dict[str, ti.TestImage],
                                                                          workdir: Path) -> None:
    with rootfs(images[ti.NONEWPRIVS].image(), workdir) as r:
        st = (r / "usr/local/bin/nnp").stat()
        assert (st.st_mode & 0o7777, st.st_uid) == (0o4755, 0)
        plain = run(r, 'chroot --userspec=1000:1000 "$R" /usr/local/bin/nnp')
        nnp = run(r, 'setpriv --no-new-privs chroot --userspec=1000:1000 "$R" /usr/local/bin/nnp')
    assert plain.stdout == "Effective uid: 0\n", plain
    assert nnp.stdout == "Effective uid: 1000\n", nnp


def test_pause_runs_until_sigterm(images: dict[str, ti.TestImage], workdir: Path) -> None:
    with rootfs(images[ti.PAUSE[0]].image(), workdir) as r:
        # SIGTERM only once /pause catches it (bit 15 of SigCgt): sent before its sigaction, it would kill.
        out = run(r, 'chroot "$R" /pause & p=$!; i=0; '
                     'until [ $((0x$(awk \'/^SigCgt/ {print $2}\' "$R/proc/$p/status") & 0x4000)) -ne 0 ]; do '
                     '  i=$((i+1)); [ $i -lt 400 ] || break; sleep 0.05; done; '
                     'kill -0 $p && echo alive; kill -TERM $p; wait $p; echo rc=$?')
    assert out.stdout.split() == ["alive", "rc=0"], out


def test_predefined_group_user(images: dict[str, ti.TestImage], workdir: Path) -> None:
    with rootfs(images[f"{ti.GCR}/test-image-predefined-group:latest"].image(), workdir) as r:
        out = run(r, 'chroot "$R" id default-user')
    assert "uid=1000(default-user)" in out.stdout and "50000(group-defined-in-image)" in out.stdout, out


def test_whiteout_image_hides_lower_files_when_stacked(images: dict[str, ti.TestImage], workdir: Path) -> None:
    img = images[f"{ti.OURS}/whiteouts:1.0"].image()
    with rootfs(img, workdir) as r:
        assert not (r / "etc/motd").exists() and not (r / "bin/pgrep").exists()
        assert sorted(p.name for p in (r / "srv/data").iterdir()) == ["new"]
        assert (r / "opt/keep").exists() and (r / "bin/sh").exists()


def test_image_service_shapes(images: dict[str, ti.TestImage], workdir: Path) -> None:
    multi = images[f"{ti.OURS}/multiarch:1.0"].image()
    assert [m["platform"] for m in multi.manifest_json()["manifests"]] == [
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"}]
    arm = ib.Platform(architecture="arm64", variant="v8")
    with rootfs(multi, workdir, arm) as r:
        assert (r / "ARCH").read_text() == "arm64\n"
    zstd = images[f"{ti.OURS}/zstd:1.0"].image()
    assert [b.media_type for b in zstd.layer_blobs()] == [ib.OCI_LAYER + "+zstd", ib.OCI_LAYER]
    with rootfs(zstd, workdir) as r:
        assert run(r, 'chroot "$R" cat /etc/zstd-layer').stdout == "uncompressed top layer\n"
    assert len({images[f"{ti.OURS}/tags:{t}"].digest for t in "abc"}) == 1
    docker = images[f"{ti.OURS}/docker:1.0"].image()
    assert docker.media_type == ib.DOCKER_LIST
    assert docker.manifest_for()["mediaType"] == ib.DOCKER_MANIFEST


def test_push_all_serves_every_name_from_a_real_registry(images: dict[str, ti.TestImage]) -> None:
    reg: LocalRegistry = start_registry()
    try:
        pushed = ti.push_all(f"http://{reg.host}", list(images.values()))
        for t in pushed:
            raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                  f"docker://{reg.host}/{t.path}:{t.tag}"],
                                 check=True, capture_output=True, timeout=60).stdout
            assert ib.sha256_digest(raw) == t.digest, t.name
        info = json.loads(subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{reg.host}/e2e-test-images/busybox:1.29-2"],
            check=True, capture_output=True, timeout=60).stdout)
        assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    finally:
        reg.stop()
