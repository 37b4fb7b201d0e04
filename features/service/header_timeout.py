"""A header-read timeout for aiohttp's server, which has none of its own.

aiohttp bounds an idle connection (``keepalive_timeout``, 75 s) and the handler's work, but not
the time a client takes to send a request line and headers, so a client that trickles them
(or opens a connection and sends nothing) holds a connection and its buffers for as long as
it likes. Here a connection must deliver a complete request head within ``header_timeout_s``
of being opened, and, on a kept-alive connection, of the first byte of the next request;
otherwise it is closed. An idle kept-alive connection (no byte of a next request yet) is left
to ``keepalive_timeout``, so client pools keep working.

The smallest sound hook is the connection protocol itself: :class:`HeaderDeadlineHandler`
extends aiohttp's ``RequestHandler`` and watches its parser's request count, and
:class:`HeaderTimeoutRunner` makes the server build those handlers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class HeaderDeadlineHandler(RequestHandler):
    """aiohttp's connection handler, closing a connection whose request head is late."""

    def __init__(self, header_timeout_s: float, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a complete request head arrived
            self._disarm()
        elif self._header_timer is None and self._current_request is None and not self._messages:
            self._arm()  # the first bytes of a next request on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        self.force_close()  # as aiohttp does for an expired keep-alive: drop the connection
        if self.transport is not None:
            self.transport.close()


class _Server(web.Server):
    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return HeaderDeadlineHandler(self.header_timeout_s, self, loop=self._loop, **self._kwargs)


class HeaderTimeoutRunner(web.AppRunner):
    """``web.AppRunner`` whose connections get a header-read timeout."""

    def __init__(self, app: web.Application, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,  # noqa: SLF001 - aiohttp keeps no public copy
            header_timeout_s=self._header_timeout_s,
            **server._kwargs,  # noqa: SLF001 - the options the server was made with
        )
