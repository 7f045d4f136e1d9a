"""The daemon's lifecycle: prepare directories, take locks, serve, stop.

Startup order matters: the root lock and the socket lock are taken before
anything is written, so a second instance fails without touching the first
one's files; the socket is bound last, so a client that can connect finds a
daemon that is ready.

On a Windows node (`windows_host`) the daemon serves gRPC on
tcp://127.0.0.1:<windows.grpc_port> (grpcio cannot serve named pipes) and
starts the named-pipe relay kubelet dials; there is no unix socket and none of
the Linux-only setup (flock, umask, chmod, host probes, the native Linux
runtime). SIGBREAK (the service wrapper's CTRL_BREAK) and SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import sys
from contextlib import ExitStack
from pathlib import Path

import grpc

from cri_shim import __version__
from cri_shim.api import api_pb2_grpc
from cri_shim.config import Config, parse_host_port
from cri_shim.errors import StartupError
from cri_shim.images import store as image_store
from cri_shim.server.context import DaemonContext
from cri_shim.server.image_service import ImageService
from cri_shim.server.interceptor import CriInterceptor
from cri_shim.server.metrics import Metrics
from cri_shim.server.runtime_service import RuntimeService
from cri_shim import windows_lock, windows_node
from cri_shim.services import container_exits, restart
from cri_shim.services.failpoints import Failpoints
from cri_shim.services.phases import PhaseTimers
from cri_shim.network.manager import PodNetworkManager
from cri_shim.services.runtime_state import RuntimeState, WindowsHandlers
from cri_shim.services.status import HandlerInfo
from cri_shim.services.stream_target import LifecycleStreamTarget
from cri_shim.store import container as container_store
from cri_shim.store import sandbox as sandbox_store
from cri_shim.store.db import MetadataStore
from cri_shim.store.records import RecordStore
from cri_shim.streaming import StreamingServer
from cri_shim.windows_mapping import HANDLER_PROCESS
from cri_shim.windows_relay import Relay
from runtime import base
from runtime.host_report import HostReport, windows_report
from runtime.logs import CriLogWriter

log = logging.getLogger(__name__)

HANDLER_RUNC = "runc"      # RuntimeClass handler: runc (runtime.runc_path)

MAX_MESSAGE_BYTES = 16 << 20  # what kubelet's client accepts
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750


def _mkdir(path: Path, mode: int, what: str) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create {what} directory {path}: {e.strerror}") from None
    if not path.is_dir():
        raise StartupError(f"{what} path {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        who = f" (uid {os.getuid()})" if hasattr(os, "getuid") else ""   # Windows has no uids
        raise StartupError(f"{what} directory {path} is not writable by this user{who}")


def _lock(path: Path, what: str) -> int:
    """Take an exclusive flock on `path`; the fd lives as long as the daemon."""
    import fcntl   # Linux only (the Windows daemon takes no flock)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StartupError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another cri-shim (pid {holder}) is already using {what}; "
                           "stop it or give this instance its own --socket, --root and --state") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def prepare_socket_dir(sock: Path) -> None:
    """The socket's directory must not be world-accessible; one we create gets mode 0750."""
    directory = sock.parent
    existed = directory.exists()
    _mkdir(directory, SOCKET_DIR_MODE, "socket")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o007:
        if existed:
            raise StartupError(f"socket directory {directory} is world-accessible (mode {mode:o}); "
                               "put the socket in a directory of its own")
        os.chmod(directory, SOCKET_DIR_MODE)  # mkdir's mode was narrowed by the umask, never widened


def remove_stale_socket(sock: Path) -> None:
    """Called with the socket lock held: whatever is at `sock` belongs to a dead daemon."""
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{sock} exists and is not a socket; refusing to replace it")
    log.warning("replacing stale socket %s left by a previous run", sock)
    os.unlink(sock)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(address)
        s.sendall(message.encode())


def probe_host(windows_host: bool = sys.platform == "win32") -> HostReport:
    """What Status and `cri-shim check` report about the host: the Linux kernel's features, or none on Windows."""
    if windows_host:
        return windows_report(sys.platform)
    from runtime.linux import host as linux_host   # Linux only (the probe reads /proc and /sys)
    return linux_host.probe()


class Daemon:
    def __init__(self, config: Config, windows_host: bool = sys.platform == "win32") -> None:
        self.config = config
        self.windows_host = windows_host
        self._stop = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._network: PodNetworkManager | None = None
        self._network_watch: asyncio.Future[None] | None = None
        self._windows: windows_node.WindowsNode | None = None
        self._relay: Relay | None = None
        self.bound_port = 0          # the TCP port gRPC listens on (Windows)

    def _prepare(self, resources: ExitStack) -> DaemonContext:
        cfg = self.config
        _mkdir(cfg.root_dir, 0o700, "root")
        _mkdir(cfg.state_dir, 0o700, "state")
        if not self.windows_host:
            prepare_socket_dir(cfg.socket_path)
            for fd in (_lock(cfg.root_dir / "cri-shim.lock", f"root directory {cfg.root_dir}"),
                       _lock(cfg.socket_path.with_name(cfg.socket_path.name + ".lock"), f"socket {cfg.socket_path}")):
                resources.callback(os.close, fd)
        elif sys.platform == "win32":   # no socket to lock; the Linux-run Windows mode has no msvcrt
            resources.callback(windows_lock.lock_root(cfg.root_dir / "cri-shim.lock",
                                                      f"root directory {cfg.root_dir}"))
        for sub in ("content", "snapshots"):
            _mkdir(cfg.root_dir / sub, 0o700, sub)
        host = probe_host(self.windows_host)
        if not self.windows_host and cfg.runtime.cgroup_driver == "systemd" and not host.systemd_pid1:
            raise StartupError("runtime.cgroup_driver = \"systemd\" but systemd is not running as PID 1 on this host; "
                               "use \"cgroupfs\" (and kubelet's cgroupDriver: cgroupfs)")
        for problem in host.problems:
            log.warning("host check: %s (Status will report RuntimeReady=false)", problem)
        store = MetadataStore.open(cfg.root_dir / "meta.db")
        resources.callback(store.close)
        images = image_store.build(cfg, store)
        resources.callback(images.close)
        for sub in ("sandboxes", "containers"):
            _mkdir(cfg.root_dir / sub, 0o700, sub)
        metrics = Metrics()
        network = self._network = PodNetworkManager(cfg, store, registry=metrics.registry,
                                                    builtin_available=not self.windows_host)
        resources.callback(network.close)
        handlers = self._handlers()
        windows = self._windows
        lifecycle = RuntimeState(
            config=cfg, images=images, handlers=handlers, network=network,
            sandboxes=RecordStore(store, sandbox_store.TABLE, sandbox_store.Sandbox.from_row),
            containers=RecordStore(store, container_store.TABLE, container_store.Container.from_row),
            failpoints=Failpoints.from_config(cfg.lifecycle.failpoints), phases=PhaseTimers(metrics.registry),
            windows=WindowsHandlers(frozenset(n for n, b in handlers.items() if windows and b in windows.backends),
                                    windows.namespaces if windows else None))
        info = [HandlerInfo(name=name, recursive_read_only_mounts=b.features.recursive_read_only_mounts,
                            user_namespaces=b.features.user_namespaces) for name, b in handlers.items()]
        return DaemonContext(config=cfg, store=store, host=host, metrics=metrics, images=images,
                             lifecycle=lifecycle, handlers=info)

    def _handlers(self) -> dict[str, base.Backend]:
        """Runtime handlers. Linux: "" is the native Linux runtime, "runc" the same pods with their containers
        run by runc (when runtime.runc_path is an executable). Windows: one backend per Windows handler,
        and "" is process isolation (kubelet's pods without a RuntimeClass), as in containerd. The test-only
        `windows.test_fake_hcs` adds the Windows handlers, on fakes, next to the Linux runtime."""
        cfg = self.config
        handlers: dict[str, base.Backend] = {}
        if not self.windows_host:
            from runtime.linux.backend import LinuxBackend   # Linux only: imports the pod shim's syscalls
            try:
                handlers[""] = LinuxBackend(cfg.state_dir, cgroup_driver=cfg.runtime.cgroup_driver,
                                            log_level=cfg.server.log_level, ksm=cfg.runtime.ksm)
            except base.RuntimeFailure as e:
                raise StartupError(f"cannot set up the native Linux runtime: {e.message}") from None
            if cfg.runtime.runc_path:
                try:   # LinuxBackend checks that runc_path is an executable
                    handlers[HANDLER_RUNC] = LinuxBackend(
                        cfg.state_dir / "runc", cgroup_driver=cfg.runtime.cgroup_driver,
                        log_level=cfg.server.log_level, runc_path=cfg.runtime.runc_path, ksm=cfg.runtime.ksm)
                except base.RuntimeFailure as e:   # optional: the native runtime still serves every pod
                    log.warning("no %r runtime handler: %s", HANDLER_RUNC, e.message)
        if self.windows_host or cfg.windows.test_fake_hcs:
            try:
                node = self._windows = windows_node.build_node(cfg, lambda path: CriLogWriter(path))
            except base.RuntimeFailure as e:
                raise StartupError(f"cannot set up the Windows runtime: {e.message}") from None
            handlers.update(node.handlers())
            if self.windows_host:
                handlers[""] = handlers[HANDLER_PROCESS]
        return handlers

    async def _start_lifecycle(self, ctx: DaemonContext) -> StreamingServer:
        """Recover pods and containers, subscribe to exits, start the streaming server."""
        state = ctx.lifecycle
        for backend in {id(b): b for b in state.handlers.values()}.values():
            backend.subscribe(lambda event: container_exits.on_runtime_event(state, event))
        await restart.recover(state)
        streaming = StreamingServer(self.config.streaming, LifecycleStreamTarget(state))
        try:
            await streaming.start()
        except OSError as e:
            raise StartupError(f"cannot start the streaming server on {self.config.streaming.address}:"
                               f"{self.config.streaming.port}: {e.strerror}") from None
        state.streaming = streaming
        if self._network is not None:   # CNI config changes are noticed (and logged) as they happen
            self._network_watch = asyncio.ensure_future(self._network.watch())
        return streaming

    async def _stop_lifecycle(self, ctx: DaemonContext, streaming: StreamingServer) -> None:
        if self._network_watch is not None:
            self._network_watch.cancel()
        await streaming.stop()
        for backend in {id(b): b for b in ctx.lifecycle.handlers.values()}.values():
            await backend.close()   # disconnects from the pod shims; containers keep running
        if self._windows is not None:
            self._windows.close()

    async def run(self) -> None:
        with ExitStack() as resources:
            ctx = self._prepare(resources)
            if self.config.server.metrics_address:
                host, port = parse_host_port(self.config.server.metrics_address, "server.metrics_address")
                try:
                    ctx.metrics.serve(host, port)
                except OSError as e:
                    raise StartupError(f"cannot serve metrics on {self.config.server.metrics_address}: "
                                       f"{e.strerror}") from None
                resources.callback(ctx.metrics.stop)
            streaming = await self._start_lifecycle(ctx)
            try:
                await self._serve(ctx)
            finally:
                await self._stop_lifecycle(ctx, streaming)
            log.info("stopped")

    async def _serve(self, ctx: DaemonContext) -> None:
        server = self._server = self._build_server(ctx)
        endpoint = await (self._bind_tcp(server) if self.windows_host else self._bind(server))
        stopped = False
        try:
            self._install_signal_handlers()
            await server.start()
            if self.windows_host:
                await self._start_relay()
            log.info("cri-shim %s serving CRI on %s", __version__, endpoint)
            sd_notify("READY=1")
            await self._stop.wait()
            sd_notify("STOPPING=1")
            log.info("stopping (grace %.1fs)", self.config.server.shutdown_timeout)
            if self._relay is not None:
                await self._relay.close()
            await server.stop(self.config.server.shutdown_timeout)
            stopped = True
        finally:
            if not stopped:   # a start-up step after start() failed: no RPC may outlive the daemon
                await server.stop(0)
            if not self.windows_host:
                self._unlink_socket()

    def request_stop(self) -> None:
        """Stop as SIGTERM would (the service host and in-process tests)."""
        self._stop.set()

    async def _bind_tcp(self, server: grpc.aio.Server) -> str:
        """Windows: loopback TCP only (kubelet reaches it directly or through the pipe relay)."""
        address = windows_node.grpc_address(self.config)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise StartupError(f"cannot listen on tcp://{address}: {e}") from None
        if not port:
            raise StartupError(f"cannot listen on tcp://{address} (in use?); set windows.grpc_port")
        self.bound_port = port
        return f"tcp://127.0.0.1:{port}"

    async def _start_relay(self) -> None:
        try:
            self._relay = await windows_node.start_relay(self.config, self.bound_port)
        except (OSError, RuntimeError) as e:
            raise StartupError(f"cannot serve the named pipe {self.config.windows.pipe}: {e}") from None

    def _build_server(self, ctx: DaemonContext) -> grpc.aio.Server:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(interceptors=[CriInterceptor(ctx.metrics)], options=options)
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(ctx), server)  # type: ignore[no-untyped-call]
        api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(ctx), server)  # type: ignore[no-untyped-call]
        return server

    async def _bind(self, server: grpc.aio.Server) -> str:
        sock = self.config.socket_path
        remove_stale_socket(sock)
        # Bind with a restrictive umask so the socket is never briefly world-connectable.
        old = os.umask(0o117)
        try:
            server.add_insecure_port(f"unix://{sock}")
        except RuntimeError as e:
            raise StartupError(f"cannot listen on unix://{sock}: {e}") from None
        finally:
            os.umask(old)
        os.chmod(sock, SOCKET_MODE)
        return f"unix://{sock}"

    def _unlink_socket(self) -> None:
        try:
            os.unlink(self.config.socket_path)
        except FileNotFoundError:
            pass

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        if sys.platform == "win32":
            # The proactor loop has no add_signal_handler; the C handler only schedules work on the loop.
            for sig in (signal.SIGINT, getattr(signal, "SIGBREAK")):
                signal.signal(sig, lambda signum, _frame: loop.call_soon_threadsafe(
                    self._on_signal, signal.Signals(signum)))
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set() and self._server is not None:
            log.warning("second %s: cancelling in-flight RPCs now", sig.name)
            asyncio.get_running_loop().create_task(self._server.stop(0))
            return
        log.info("%s received", sig.name)
        self._stop.set()
