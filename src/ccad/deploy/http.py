"""The HTTP server's defence against slow clients: a connection must send a request's headers in time.

Uvicorn's h11 protocol times out idle keep-alive connections but not a client that opens a connection
and sends its headers a byte at a time (slowloris): each such socket would stay open for ever. This
subclass closes a connection whose next request's headers have not arrived within ``timeout`` seconds of
it opening or of the previous response ending. The ASGI app never sees such a connection.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (for ``uvicorn.run(http=...)``) with a ``timeout``-second header deadline."""

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout, self._headers_overdue)

        def _disarm_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete  # no request in progress
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
