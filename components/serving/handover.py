"""Port handover for blue/green local deployments.

Every endpoint listens with SO_REUSEPORT, so a new server can open a listener on the same port
while the old one still answers. A new server starts in *standby*: it listens on a private
loopback port only (health check and smoke test go there) and holds the public port bound but not
listening, so the kernel sends it no public traffic yet. On SIGUSR1 it starts listening on the
public port; then the deployer stops the old server, which finishes its in-flight requests. The
public port never stops answering. (An old server started without SO_REUSEPORT blocks the early
bind; the new server then binds when told to, after the old one has gone.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


def listener(host: str, port: int, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEADDR and SO_REUSEPORT; listening when `listen`."""
    # IPPROTO_TCP, not 0: asyncio disables Nagle (TCP_NODELAY) only on accepted sockets whose proto says TCP. With
    # proto 0 every response (headers, then body) waited for the client's delayed ACK: ~50 ms per request at one
    # client (measured: 64 ms vs 14 ms median for one short text on the demo model).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class HandoverServer(uvicorn.Server):
    """A uvicorn server that, in standby, takes over `public` (host, port) when it receives SIGUSR1."""

    def __init__(self, config: uvicorn.Config, public: tuple[str, int] | None = None) -> None:
        super().__init__(config)
        self.public = public
        self.serving_public = public is None
        self._prebound: socket.socket | None = None
        if public is not None:
            try:  # reserve the port now when the old server allows it (it listens with SO_REUSEPORT)
                self._prebound = listener(*public, listen=False)
            except OSError as err:
                log.info("public port %s:%d not bound yet (%s); binding when told to take over", *public, err)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.public is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1,
                                                          lambda: asyncio.ensure_future(self.take_over()))

    def _protocol(self, _loop: Any = None) -> asyncio.Protocol:  # what uvicorn's startup builds per connection
        config = self.config
        return config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                          app_state=self.lifespan.state, _loop=_loop)

    async def take_over(self) -> None:
        """Start answering on the public port (idempotent)."""
        if self.serving_public or self.public is None:
            return
        try:
            sock = self._prebound or listener(*self.public, listen=False)
        except OSError as err:
            log.warning("cannot take over %s:%d yet: %s", *self.public, err)
            return
        self._prebound = None
        server = await asyncio.get_running_loop().create_server(self._protocol, sock=sock,
                                                                backlog=self.config.backlog)
        self.servers.append(server)
        self.serving_public = True
        log.info("serving on %s:%d (taken over)", *self.public)
