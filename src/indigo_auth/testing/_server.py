"""Serving the emulator over a loopback socket with uvicorn (the ``emulator`` extra).

uvicorn is imported only here, and only when a server is asked for. It runs with
a subclass of its h11 protocol that puts the connection's asyncio transport in the
scope, as ``scope["extensions"]["indigo.transport"] = {"transport": transport}``:
plain ASGI cannot drop a connection, and the emulator's ``drop_before`` fault
resets it, ``drop_midway`` and ``stall`` close it half-way through the body. The
same protocol, asked to shut down, closes the connections whose answer is still
pending, so a stalled or slow answer does not hold the server open.

uvicorn runs on asyncio only: under Trio, :func:`serve` runs it in a thread with an
event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    import uvicorn

    from ._emulator import IndigoEmulator

__all__ = ["run_emulator", "serve", "serve_in_thread"]

_INSTALL_HINT = "the emulator's server needs uvicorn: pip install 'indigo-auth[emulator]'"
#: Seconds uvicorn waits for pending answers before it cancels them on shutdown.
_GRACEFUL_SHUTDOWN = 5
_START_TIMEOUT = 10.0


def _require_uvicorn() -> None:
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


def _check_host(host: str, *, allow_non_loopback: bool) -> None:
    """Refuse to listen beyond this machine unless asked to, in so many words."""
    if host == "localhost" or allow_non_loopback:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the emulator listens on loopback addresses only, not {host!r}: it hands out "
            "tokens to anyone who asks; pass allow_non_loopback=True to override"
        )


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":  # on Windows it would let another socket steal the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@functools.cache
def _protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, exposing the connection to the app (see the module docstring)."""
    _require_uvicorn()
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class EmulatorProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            app = self.app

            async def app_with_transport(scope: Any, receive: Any, send: Any) -> None:
                extensions = scope.setdefault("extensions", {})
                extensions["indigo.transport"] = {"transport": self.transport}
                await app(scope, receive, send)

            self.app = app_with_transport

        def shutdown(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                # A stalled answer would hold the shutdown for its full minute.
                self.transport.close()
            else:
                super().shutdown()

    return EmulatorProtocol


@functools.cache
def _embedded_server_class() -> type[uvicorn.Server]:
    _require_uvicorn()
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        """A uvicorn server that leaves the host program's signal handlers alone."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer


def _config(emulator: IndigoEmulator, **options: Any) -> uvicorn.Config:
    _require_uvicorn()
    import uvicorn

    return uvicorn.Config(
        emulator,
        http=_protocol_class(),
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
        **options,
    )


def _embedded_server(emulator: IndigoEmulator) -> uvicorn.Server:
    # log_config=None: an embedded server must not reconfigure the host's logging.
    config = _config(emulator, log_config=None, access_log=False)
    return _embedded_server_class()(config)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _ThreadedServer:
    """uvicorn in a daemon thread running an asyncio loop of its own."""

    def __init__(self, emulator: IndigoEmulator, host: str, port: int) -> None:
        self._server = _embedded_server(emulator)
        self._sock = _bind(host, port)
        self.url = _base_url(self._sock)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"indigo-emulator {self.url}", daemon=True
        )

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # handed to the thread that waits for the start
            self._error = exc

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator's server did not start") from self._error
            time.sleep(0.005)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_GRACEFUL_SHUTDOWN * 2)
        if self._thread.is_alive():  # pragma: no cover - uvicorn ignored should_exit
            self._server.force_exit = True
            self._thread.join(_GRACEFUL_SHUTDOWN)
        self._sock.close()


@contextlib.asynccontextmanager
async def _serve_in_loop(emulator: IndigoEmulator, host: str, port: int) -> AsyncIterator[str]:
    server = _embedded_server(emulator)
    sock = _bind(host, port)
    stopped = anyio.Event()

    async def run() -> None:
        # Shielded: an outer cancellation must still let uvicorn close its sockets.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            with anyio.fail_after(_START_TIMEOUT):
                while not server.started:
                    if stopped.is_set():
                        raise RuntimeError("the emulator's server did not start")
                    await anyio.sleep(0.005)
            yield _base_url(sock)
        finally:
            server.should_exit = True


@contextlib.asynccontextmanager
async def serve(
    emulator: IndigoEmulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_non_loopback: bool = False,
) -> AsyncIterator[str]:
    """Serve ``emulator`` with uvicorn while the block runs; yields the base URL.

    On asyncio uvicorn runs in the current loop; on Trio, in a thread. See
    :meth:`IndigoEmulator.serve`.
    """
    _check_host(host, allow_non_loopback=allow_non_loopback)
    _require_uvicorn()
    if _on_asyncio():
        async with _serve_in_loop(emulator, host, port) as url:
            yield url
        return
    threaded = _ThreadedServer(emulator, host, port)
    await anyio.to_thread.run_sync(threaded.start)
    try:
        yield threaded.url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(threaded.stop)


@contextlib.contextmanager
def serve_in_thread(
    emulator: IndigoEmulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_non_loopback: bool = False,
) -> Iterator[str]:
    """Serve ``emulator`` with uvicorn in a daemon thread; yields the base URL.

    See :meth:`IndigoEmulator.serve_in_thread`.
    """
    _check_host(host, allow_non_loopback=allow_non_loopback)
    _require_uvicorn()
    threaded = _ThreadedServer(emulator, host, port)
    threaded.start()
    try:
        yield threaded.url
    finally:
        threaded.stop()


def run_emulator(
    emulator: IndigoEmulator,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_non_loopback: bool = False,
) -> None:
    """Serve ``emulator`` with uvicorn until interrupted (Ctrl-C); for the CLI.

    Args:
        emulator: the emulator to serve.
        host: where to listen; a loopback address unless ``allow_non_loopback``.
        port: the port to listen on.
        allow_non_loopback: listen on another address too. The emulator hands out
            tokens to anyone who knows its accounts: think twice.

    Raises:
        ImportError: uvicorn is not installed (``pip install 'indigo-auth[emulator]'``).
        ValueError: ``host`` is not a loopback address and ``allow_non_loopback`` is not set.
    """
    _check_host(host, allow_non_loopback=allow_non_loopback)
    _require_uvicorn()
    import uvicorn

    uvicorn.Server(_config(emulator, host=host, port=port)).run()
