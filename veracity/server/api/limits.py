"""Request body size limits, enforced before a body is read and while it streams in.

An ASGI middleware: a ``Content-Length`` over the path's limit is answered 413 at once,
without reading a byte of the body; a body without one (chunked) is counted as it arrives
and refused with 413 as soon as it passes the limit, so the server never holds more than
the limit of any request. Both answers are problem details (:mod:`.problems`); the limit
is per path (the inference envelopes are larger than JSON bodies).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veracity.server.api.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPES, problem_document

__all__ = ["BodySizeLimit"]


async def _answer(send: Send, scope: Scope, code: str, detail: str) -> None:
    kind = PROBLEM_TYPES[code]
    document = problem_document(kind, detail, instance=str(scope.get("path", "")) or None)
    body = json.dumps(document).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": kind.status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode("ascii")),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse request bodies larger than ``limit_for(path)`` bytes with 413.

    Parameters
    ----------
    app
        The wrapped ASGI application.
    limit_for
        The limit for a request path (inference envelopes are larger than JSON bodies).
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection, counting the bytes of its request body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        declared: bytes | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, scope, "bad_request", "malformed Content-Length header")
                return
            if int(declared) > limit:
                await _answer(
                    send, scope, "too_large", f"request body exceeds the limit of {limit} bytes"
                )
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)
