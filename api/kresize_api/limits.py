"""The request-body limit as ASGI middleware: counted as the bytes arrive, so it holds for chunked bodies too.

A Content-Length over the limit is refused before a byte is read; a body without one (chunked) is refused
with 413 as soon as it crosses the limit, whatever the route would have done with it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self, size: str) -> dict[str, Any]:
        message = (f"request of {size} bytes exceeds the limit of {self.max_bytes} bytes "
                   "(KRESIZE_MAX_REQUEST_BYTES); split the upload into several jobs")
        return {"error": {"status": 413, "message": message, "details": [], "files": None}}  # errors.py's shape

    async def _send_413(self, send: Send, size: str) -> None:
        body = json.dumps(self._refusal(size)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._send_413(send, length.decode())
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._send_413(send, f"more than {self.max_bytes}")
