"""uvicorn's h11 protocol with the deadlines it lacks, and JSON for the errors it answers itself.

uvicorn (checked on 0.54) arms no timer while a request head is arriving: a client that sends half
its headers and stalls holds the connection forever (`timeout_keep_alive` only runs between
requests, and each received byte cancels it). Nor does it bound how long it keeps discarding a
body the app already answered (a 413, say). This subclass adds both deadlines and answers
malformed HTTP with the server's `{"error", "status"}` JSON instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "status": status}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """h11 protocol with a request-head deadline and a deadline on discarding unread bodies."""

    head_timeout: float = 30.0
    drain_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeouts(cls, head_timeout: float, drain_timeout: float) -> type[GuardedH11Protocol]:
        """A subclass with these deadlines (uvicorn takes a protocol class, not an instance)."""
        return type(cls.__name__, (cls,), {"head_timeout": head_timeout, "drain_timeout": drain_timeout})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            # Part of a head (or nothing yet) is buffered: it has `head_timeout` to complete.
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            # The app answered before reading the whole body; uvicorn discards the rest as it comes,
            # but only for so long.
            cycle = self.cycle
            self._cancel(self._drain_timer)
            self._drain_timer = self.loop.call_later(self.drain_timeout, self._drain_timed_out, cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._drain_timer)
        self._head_timer = self._drain_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for bytes h11 cannot parse as HTTP (a bad request line, oversized or invalid
        # headers, a bad Content-Length). Same status and close as uvicorn's; the server's JSON body.
        body = json.dumps({"error": f"{msg} Send HTTP/1.1 with valid headers.", "status": 400}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # mid-response on this connection (pipelining): no room for an answer
            pass
        self.transport.close()

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            log.info("closing a connection whose request head took over %g s", self.head_timeout)
            self.transport.write(_raw_error(408, "Request Timeout",
                                            f"the request head did not arrive within {self.head_timeout:g} s"))
        self.transport.close()

    def _drain_timed_out(self, cycle: object) -> None:
        self._drain_timer = None
        if self.cycle is cycle and not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            log.info("closing a connection still sending an answered body after %g s", self.drain_timeout)
            self.transport.close()
