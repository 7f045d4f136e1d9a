"""The critest image set (and a few more for the image tests), built locally under the ORIGINAL names.

No public registry is reachable from the test machine, so every image critest
pulls is rebuilt here as a look-alike with the properties the specs depend on
(shared/reference/critest.md §5-§6), each as an OCI index with one linux/amd64
manifest, deterministically (fixed mtimes, gzip mtime 0, canonical JSON):

- busybox: Debian's *dynamic* `busybox` binary with its shared libraries
  (from `ldd`). Not busybox-static: that one runs applets in-process, so
  `sh -c ls` never execs /bin/ls and the MaskedPaths spec cannot see
  "/bin/sh: ls: Permission denied". Applets are hard links to /bin/busybox, as
  upstream installs them; `ipcs` and `pgrep` (missing from Debian's build) are
  small sh scripts reading /proc; /etc/passwd has root, nobody and www-data.
  The dynamic package conflicts with busybox-static on the host, so its .deb
  is fetched with `apt-get download` into the cache and unpacked with
  dpkg-deb, never installed.
- nginx / hostnet-nginx: busybox httpd started through a symlink named
  `nginx` (so the process name is nginx), with "master process" in its
  command line, its pid in /var/run/nginx.pid, serving 200 on :80 / :12003.
- httpd: busybox httpd on :80 that logs a line mentioning httpd.
- nonewprivs: a static setuid-root (4755) program printing `Effective uid: N`.
- pause: a static program that sleeps until SIGINT/SIGTERM (both pause:3.9
  names give the same digest).
- the gcr.io/k8s-staging-cri-tools tag/user/group images of images/* upstream.
- for the image-service tests: a multi-arch index (amd64 + arm64/v8), an image
  with zstd and uncompressed layers, one with whiteouts and an opaque dir,
  several tags of one image, and a Docker schema2 manifest list.

Not reproducible: `test-image-digest@sha256:9700f9a2…` (a pinned upstream
digest); critest's "public image with digest" spec must be skipped.

API: `build_all(cache_dir)` returns `TestImage`s (name, layout, digests); the
whole set is cached in `cache_dir/<key>/` where the key hashes this code and
every input (busybox .deb, host libraries, C sources, gcc version), so a
rebuild happens only when something changed. `push_all(registry)` pushes
each image to `<registry>/<path>:<tag>` (the name without its registry host),
which is the layout a registry mirror keeping the original names expects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import imagebuild as ib

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "testimages"
AMD64 = ib.Platform(architecture="amd64")

E2E = "registry.k8s.io/e2e-test-images"
GCR = "gcr.io/k8s-staging-cri-tools"
OURS = "cri-shim.test/images"

BUSYBOX = f"{E2E}/busybox:1.29-2"
NGINX = f"{E2E}/nginx:1.14-2"
HTTPD = f"{E2E}/httpd:2.4.39-4"
NONEWPRIVS = f"{E2E}/nonewprivs:1.3"
HOSTNET_NGINX = f"{GCR}/hostnet-nginx-amd64:latest"
PAUSE = ("registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9")

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
"""

IPCS = """#!/bin/sh
# ipcs look-alike (Debian's busybox has no ipcs): lists System V shared memory
# segments of this IPC namespace from /proc/sysvipc/shm, in util-linux's layout.
case "${1:--m}" in
-m) ;;
*) echo "ipcs: only -m is supported" >&2; exit 1 ;;
esac
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
while read -r key shmid perms size cpid lpid nattch uid rest; do
  [ "$key" = key ] && continue
  printf '%-10s %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done < /proc/sysvipc/shm
echo
"""

PGREP = """#!/bin/sh
# pgrep look-alike (Debian's busybox has no pgrep): prints the pid of every
# process whose name (/proc/PID/comm) matches the extended regex $1; exits 1 if none.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
status=1
for dir in /proc/[0-9]*; do
  pid=${dir#/proc/}
  [ "$pid" = "$$" ] && continue
  comm=$(cat "$dir/comm" 2>/dev/null) || continue
  if grep -Eq -- "$1" <<EOF
$comm
EOF
  then
    echo "$pid"
    status=0
  fi
done
exit $status
"""

NGINX_ENTRYPOINT = """#!/bin/sh
# nginx look-alike: busybox httpd run through /usr/sbin/nginx (a symlink to
# busybox) so the process is named nginx; argv[0] "httpd" selects the applet,
# the trailing argument (ignored by httpd) puts "master process" in
# /proc/PID/cmdline. exec keeps the pid written to /var/run/nginx.pid.
port=${NGINX_PORT:-80}
mkdir -p /var/run
echo $$ > /var/run/nginx.pid
echo "nginx look-alike: serving /usr/share/nginx/html on :$port"
exec -a httpd /usr/sbin/nginx -f -p "$port" -h /usr/share/nginx/html "master process nginx -g daemon off;"
"""

HTTPD_ENTRYPOINT = """#!/bin/sh
# httpd look-alike: busybox httpd on :80; the first log line mentions httpd.
echo "httpd look-alike: AH00094: Command line: 'httpd -D FOREGROUND' (busybox httpd on :80)"
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
"""

NNP_C = r"""/* nonewprivs look-alike: installed setuid root; prints the effective uid it runs with. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
"""

PAUSE_C = r"""/* pause look-alike: sleeps until SIGINT or SIGTERM, reaping any children meanwhile. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void)
{
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;)
        pause();
}
"""


@dataclass(frozen=True)
class TestImage:
    name: str          # the original reference, e.g. registry.k8s.io/e2e-test-images/busybox:1.29-2
    layout: Path       # OCI layout holding it under ref name `name`
    digest: str        # digest of the index (or manifest list) the name points at
    image_id: str      # config digest of the linux/amd64 manifest: what PullImage returns

    @property
    def host(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def path(self) -> str:
        """Repository path without the registry host: where a mirror keeping original names stores it."""
        return self.name.split("/", 1)[1].rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.rsplit(":", 1)[1]

    def image(self) -> ib.Image:
        return ib.read_layout(self.layout, self.name)


# ---------------------------------------------------------------- host inputs


@dataclass(frozen=True)
class Inputs:
    busybox: bytes                      # Debian's dynamic busybox binary
    applets: tuple[str, ...]
    libs: tuple[tuple[str, bytes], ...]  # (absolute path in the image, content)
    nnp: bytes
    pause: bytes


def busybox_deb(cache: Path) -> Path:
    """Debian's dynamic busybox .deb: from the cache, apt's archive, or `apt-get download` into the cache."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for where in (debs, Path("/var/cache/apt/archives")):
        found = sorted(where.glob("busybox_*.deb"))
        if found:
            return found[-1]
    proc = subprocess.run(["apt-get", "download", "busybox"], cwd=debs, capture_output=True, text=True)
    found = sorted(debs.glob("busybox_*.deb"))
    if proc.returncode != 0 or not found:
        raise RuntimeError("the test images need Debian's dynamic busybox package, which conflicts with "
                           f"busybox-static and so is not installed: `apt-get download busybox` in {debs} "
                           f"failed: {proc.stderr.strip()}")
    return found[-1]


def extract_busybox(deb: Path, scratch: Path) -> Path:
    out = scratch / "busybox-deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out / "bin" / "busybox"


def shared_libraries(binary: Path) -> list[str]:
    """Absolute paths of the libraries (and the ELF interpreter) `binary` loads, as ldd reports them."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            paths.append(m.group(1))
    if not any("ld-linux" in p for p in paths):
        raise RuntimeError(f"ldd {binary} reported no ELF interpreter:\n{out}")
    return paths


def compile_static(source: str, scratch: Path, name: str) -> bytes:
    src = scratch / f"{name}.c"
    src.write_text(source)
    out = scratch / name
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


def gather_inputs(cache: Path, scratch: Path) -> Inputs:
    bb = extract_busybox(busybox_deb(cache), scratch)
    applets = subprocess.run([str(bb), "--list"], check=True, capture_output=True, text=True).stdout.split()
    libs = tuple((p, Path(p).read_bytes()) for p in shared_libraries(bb))
    return Inputs(bb.read_bytes(), tuple(sorted(a for a in applets if a != "busybox")), libs,
                  compile_static(NNP_C, scratch, "nnp"), compile_static(PAUSE_C, scratch, "pause"))


def cache_key(inputs: Inputs) -> str:
    h = hashlib.sha256()
    for f in (Path(__file__), Path(ib.__file__)):
        h.update(f.read_bytes())
    for blob in (inputs.busybox, inputs.nnp, inputs.pause, *(c for _, c in inputs.libs)):
        h.update(hashlib.sha256(blob).digest())
    h.update(json.dumps([inputs.applets, [p for p, _ in inputs.libs]]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- layers and images


def base_entries(inp: Inputs) -> list[ib.Entry]:
    """The busybox root filesystem every busybox-derived image starts from."""
    entries = [
        ib.file("bin/busybox", inp.busybox, mode=0o755),
        *(ib.hardlink(f"bin/{a}", "bin/busybox", mode=0o755) for a in inp.applets),
        ib.file("bin/ipcs", IPCS.encode(), mode=0o755),
        ib.file("bin/pgrep", PGREP.encode(), mode=0o755),
        *(ib.file(path.lstrip("/"), data, mode=0o755) for path, data in inp.libs),
        ib.file("etc/passwd", PASSWD.encode()),
        ib.file("etc/group", GROUP.encode()),
        ib.file("etc/shadow", b"".join(u.split(b":")[0] + b":*:::::::\n" for u in PASSWD.encode().splitlines()),
                mode=0o600),
        ib.dir_("root", mode=0o700),
        ib.dir_("tmp", mode=0o1777),
        ib.dir_("home"),
        ib.dir_("dev"),
        ib.dir_("proc"),
        ib.dir_("sys"),
        ib.dir_("usr/sbin"),
        ib.dir_("var/run"),
        ib.dir_("var/www", uid=33, gid=33),
        ib.dir_("var/spool/mail", uid=8, gid=8),
    ]
    return list(ib.tree(entries))


def layer(entries: Iterable[ib.Entry], comp: ib.Compression = ib.Compression.GZIP) -> ib.Layer:
    return ib.Layer(ib.tree(entries), comp)


@dataclass
class Builder:
    inputs: Inputs

    def __post_init__(self) -> None:
        self.base = layer(base_entries(self.inputs))
        self.layers: ib.LayerCache = {}  # the base layer is compressed once, not once per image

    def image(self, *extra: ib.Layer, cmd: Sequence[str] = ("sh",), entrypoint: Sequence[str] = (),
              user: str = "", env: Sequence[str] = (), base: ib.Layer | None = None,
              platform: ib.Platform = AMD64, docker: bool = False, stop_signal: str = "",
              exposed: Sequence[str] = ()) -> ib.Image:
        cfg = ib.ImageConfig(user=user, entrypoint=tuple(entrypoint), cmd=tuple(cmd),
                             env=(*ib.ImageConfig().env, *env), platform=platform, stop_signal=stop_signal,
                             exposed_ports=tuple(exposed))
        return ib.build_image(ib.ImageSpec((base or self.base, *extra), cfg), docker=docker, cache=self.layers)

    def indexed(self, *extra: ib.Layer, **kw: object) -> ib.Image:
        return ib.build_index([self.image(*extra, **kw)])  # type: ignore[arg-type]

    def marker(self, name: str) -> ib.Layer:
        """A layer adding /<name> (what upstream's images/image-test does with `ADD ${TEST}`)."""
        return layer([ib.file(name, f"{name}\n".encode())])

    def nginx(self, port: int) -> ib.Image:
        web = layer([
            ib.symlink("usr/sbin/nginx", "/bin/busybox"),
            ib.file("docker-entrypoint.sh", NGINX_ENTRYPOINT.encode(), mode=0o755),
            ib.file("usr/share/nginx/html/index.html", b"<h1>Welcome to nginx!</h1>\n"),
            ib.dir_("var/log/nginx"),
        ])
        return self.indexed(web, entrypoint=("/docker-entrypoint.sh",), cmd=(), env=(f"NGINX_PORT={port}",),
                            stop_signal="SIGQUIT", exposed=(f"{port}/tcp",))

    def all(self) -> dict[str, ib.Image]:
        b = self
        images: dict[str, ib.Image] = {BUSYBOX: b.indexed()}
        images[NGINX] = b.nginx(80)
        images[HOSTNET_NGINX] = b.nginx(12003)
        images[HTTPD] = b.indexed(layer([
            ib.file("usr/local/bin/httpd-foreground", HTTPD_ENTRYPOINT.encode(), mode=0o755),
            ib.file("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1></body></html>\n"),
        ]), cmd=("httpd-foreground",), env=("PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
            exposed=("80/tcp",))
        images[NONEWPRIVS] = b.indexed(layer([ib.file("usr/local/bin/nnp", b.inputs.nnp, mode=0o4755)]),
                                       entrypoint=("/usr/local/bin/nnp",), cmd=())
        pause = ib.build_index([ib.build_image(ib.ImageSpec(
            (layer([ib.file("pause", b.inputs.pause, mode=0o755)]),),
            ib.ImageConfig(user="65535:65535", entrypoint=("/pause",), env=(), platform=AMD64)))])
        images.update({name: pause for name in PAUSE})
        for name in ("test-image-latest:latest", "test-image-tag:test", "test-image-tag:all",
                     "test-image-1:latest", "test-image-2:latest", "test-image-3:latest"):
            images[f"{GCR}/{name}"] = b.indexed(b.marker(name.replace(":", "-")))
        tags = b.indexed(b.marker("test-image-tags"))
        images.update({f"{GCR}/test-image-tags:{t}": tags for t in ("1", "2", "3")})
        for suffix, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:1004"),
                             ("username-group", "www-data:1004")):
            images[f"{GCR}/test-image-user-{suffix}:latest"] = b.indexed(user=user)
        images[f"{GCR}/test-image-predefined-group:latest"] = b.indexed(layer([
            ib.file("etc/passwd", (PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
                    .encode()),
            ib.file("etc/group", (GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
                    .encode()),
            ib.dir_("home/default-user", uid=1000, gid=1000),
        ]), user="1000")
        images.update(b.image_service_set())
        return images

    def image_service_set(self) -> dict[str, ib.Image]:
        """Images for the image-service tests: shapes a pull must handle, beyond what critest pulls."""
        b = self
        arch = ib.build_index([
            b.image(layer([ib.file("ARCH", b"amd64\n")])),
            ib.build_image(ib.ImageSpec((layer([ib.file("ARCH", b"arm64\n")]),), ib.ImageConfig(
                cmd=("sh",), platform=ib.Platform(architecture="arm64", variant="v8")))),
        ])
        zstd = b.indexed(layer([ib.file("etc/zstd-layer", b"uncompressed top layer\n")], ib.Compression.NONE),
                         base=ib.Layer(b.base.entries, ib.Compression.ZSTD))
        whiteouts = b.indexed(
            layer([ib.file("etc/motd", b"to be removed\n"), ib.file("srv/data/old", b"old\n"),
                   ib.file("srv/data/older", b"older\n"), ib.file("opt/keep", b"keep\n")]),
            ib.Layer((ib.dir_("etc"), ib.whiteout("etc/motd"), ib.dir_("srv"), ib.dir_("srv/data"),
                      ib.opaque("srv/data"), ib.file("srv/data/new", b"new\n"), ib.whiteout("bin/pgrep"))))
        tagged = b.indexed(b.marker("tags"))
        docker = ib.build_index([b.image(b.marker("docker"), docker=True)], docker=True)
        return {f"{OURS}/multiarch:1.0": arch, f"{OURS}/zstd:1.0": zstd, f"{OURS}/whiteouts:1.0": whiteouts,
                **{f"{OURS}/tags:{t}": tagged for t in ("a", "b", "c")}, f"{OURS}/docker:1.0": docker}


# ---------------------------------------------------------------- build, cache, push


def build_all(cache_dir: Path = DEFAULT_CACHE) -> list[TestImage]:
    """Build (or load from `cache_dir`) every test image; returns them sorted by name."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".scratch-") as scratch:
        inputs = gather_inputs(cache_dir, Path(scratch))
        key = cache_key(inputs)
        done = cache_dir / key
        if not (done / "images.json").exists():
            staging = Path(scratch) / key
            images = Builder(inputs).all()
            ib.write_layout(staging / "layout", images)
            (staging / "images.json").write_text(json.dumps(
                {name: [img.digest, img.config_blob(AMD64).digest] for name, img in sorted(images.items())},
                indent=1))
            try:
                os.rename(staging, done)
            except OSError:
                if not (done / "images.json").exists():  # not a concurrent build that won the rename
                    raise
            log.info("built %d test images into %s", len(images), done)
    listed = json.loads((done / "images.json").read_text())
    return [TestImage(name, done / "layout", digest, image_id) for name, (digest, image_id) in listed.items()]


def push_all(registry: str, images: Sequence[TestImage] | None = None, cache_dir: Path = DEFAULT_CACHE,
             insecure: bool = True) -> list[TestImage]:
    """Push every test image to `registry` (host:port or http(s):// URL) at `<path>:<tag>`,
    e.g. e2e-test-images/busybox:1.29-2."""
    todo = list(images) if images is not None else build_all(cache_dir)
    for t in todo:
        ib.push(t.layout, registry, t.path, t.tag, insecure=insecure, layout_ref=t.name)
    return todo


def by_name(images: Iterable[TestImage]) -> dict[str, TestImage]:
    return {t.name: t for t in images}


def clear_cache(cache_dir: Path = DEFAULT_CACHE) -> None:
    shutil.rmtree(cache_dir, ignore_errors=True)
