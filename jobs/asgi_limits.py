"""Request-body limits enforced at the ASGI layer, before the web framework parses a body.

:class:`BodyLimitMiddleware` wraps any ASGI app (``tda serve`` wraps its FastAPI app)::

    app = BodyLimitMiddleware(app, BodyLimits(max_bytes=1 << 20))

For each HTTP request it

1. refuses a ``Content-Length`` over ``max_bytes`` at once (HTTP 413), reading nothing;
2. reads the body as it streams (chunked or not), counting bytes, and refuses it (413)
   as soon as the count passes ``max_bytes``: at most ``max_bytes`` plus one network
   read is ever held;
3. for a body the framework would parse as JSON (no content type, ``application/json``
   or ``application/*+json``), scans its structure with :func:`json_shape_problem`
   and refuses (413) more than ``max_members`` object keys and array items in all, or
   nesting deeper than ``max_depth``: a parser and validator would otherwise build one
   object and one error per key (500,000 unknown keys took 5 s on the event loop);
4. hands the app the buffered body as one message, then the server's own ``receive``
   (so the app still sees a client's disconnect).

A refusal is a JSON body ``{"error": "<one line naming the limit>", "detail": {...}}``
with ``Connection: close`` (the rest of an oversized body is never read, so the
connection cannot be reused). Starlette's ``RequestBodyLimitMiddleware`` counts bytes
too, but only once the app reads the body and answers in plain text; this one also
needs the whole body in hand for step 3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tda.schemas.config import STAGE_RANGES, ConfigError

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_MEMBERS",
    "MAX_REQUEST_BYTES",
    "BodyLimitMiddleware",
    "BodyLimits",
    "json_shape_problem",
]

# 1 MiB: the largest body the API accepts (20,000-character prompt and output, each
# character at most 12 bytes as a JSON \u escape pair) is under 500 KB.
MAX_REQUEST_BYTES = 1 << 20
# An attribution request has 16 fields and one list of at most 3 channels: 1,000 keys
# and items leave room for any client while bounding the per-key work and error lists.
MAX_JSON_MEMBERS = 1000
# The request is 2 levels deep; 32 is generous and keeps a recursive parser far from
# Python's recursion limit.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may be: ``max_bytes`` (raw, after transfer decoding),
    ``max_members`` (object keys plus array items, all levels together) and
    ``max_depth`` (levels of nested objects and arrays)."""

    max_bytes: int = MAX_REQUEST_BYTES
    max_members: int = MAX_JSON_MEMBERS
    max_depth: int = MAX_JSON_DEPTH

    def __post_init__(self) -> None:
        # the command line's range (1 KiB .. 1 GiB), in the same words
        STAGE_RANGES["--max-request-bytes"].check("--max-request-bytes", self.max_bytes)
        if self.max_members < 1 or self.max_depth < 1:
            raise ConfigError(
                f"JSON limits must be positive, got {self.max_members} members, "
                f"depth {self.max_depth}"
            )


# What the scan keeps of a body: quotes (where strings start and end) and structure.
_IGNORED = bytes(b for b in range(256) if b not in b'"{}[],:')
# One token: a string (escapes already deleted, so no per-character alternation; an
# unterminated one runs to the end, one linear pass instead of a retry per quote) or one
# structural character.
_TOKEN = re.compile(rb'"[^"]*"?|[\[\]{},:]')
_OPEN_ARRAY, _COMMA, _COLON = b"[,:"


def json_shape_problem(body: bytes, max_members: int, max_depth: int) -> str | None:
    """One line naming the bound that ``body`` (JSON text, UTF-8) breaks, or None.

    Counts object keys (one per ``:``) and array items (one per ``,`` inside an array,
    plus one per array), and tracks nesting depth, stopping at the first bound passed.
    Malformed JSON is not judged here (None): the parser after this reports it. Cost:
    three C-speed passes over the body (delete escaped backslashes and quotes, then
    everything but quotes and structure), then at most ``7 * max_members + 3`` tokens in
    Python, so 1 MiB takes a few milliseconds whatever it holds."""
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _IGNORED)
    # Valid JSON with m members has at most 2m + 1 strings, m colons, 2m commas and m + 1
    # containers (two brackets each): 7m + 3 tokens. More, within the member bound, is
    # not JSON: stop and let the parser reject it.
    budget = 7 * max_members + 3
    depth = members = 0
    arrays: list[bool] = []  # per open container: is it an array?
    for n, token in enumerate(_TOKEN.finditer(text)):
        if n > budget:
            return None
        c = text[token.start()]
        if c in b"{[":
            depth += 1
            if depth > max_depth:
                return f"the JSON body is nested deeper than {max_depth} levels"
            arrays.append(c == _OPEN_ARRAY)
            members += c == _OPEN_ARRAY
        elif c in b"}]":
            if not arrays:
                return None  # unbalanced: malformed, the parser says where
            arrays.pop()
            depth -= 1
        elif c == _COLON or (c == _COMMA and arrays and arrays[-1]):
            members += 1
        else:
            continue
        if members > max_members:
            return f"the JSON body has more than {max_members} object keys and array items in all"
    return None


def _is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI would parse a body with this Content-Type as JSON."""
    if content_type is None:
        return True
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


class BodyLimitMiddleware:
    """A pure ASGI middleware enforcing :class:`BodyLimits` on every HTTP request body
    (see the module docstring); other scopes (lifespan, websocket) pass through."""

    def __init__(self, app, limits: BodyLimits | None = None) -> None:
        self.app = app
        self.limits = limits or BodyLimits()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        headers = dict(scope.get("headers") or ())  # lower-case byte names (ASGI spec)
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > limits.max_bytes:
            await _refuse(send, _too_many_bytes(limits.max_bytes, declared))
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its whole body: nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limits.max_bytes:
                await _refuse(send, _too_many_bytes(limits.max_bytes, None))
                return
        if body and _is_json(headers.get(b"content-type")):
            problem = json_shape_problem(bytes(body), limits.max_members, limits.max_depth)
            if problem is not None:
                detail = {"max_members": limits.max_members, "max_depth": limits.max_depth}
                await _refuse(send, (problem, detail))
                return

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(value: bytes | None) -> int | None:
    # the server (h11, httptools) has already refused a malformed Content-Length
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _too_many_bytes(limit: int, declared: int | None) -> tuple[str, dict]:
    size = f" ({declared} bytes)" if declared is not None else ""
    return (
        f"the request body{size} is over the {limit}-byte limit; start tda serve with a "
        "larger --max-request-bytes to accept it",
        {"max_request_bytes": limit},
    )


async def _refuse(send, problem: tuple[str, dict]) -> None:
    """Answer 413 with ``{"error": message, "detail": detail}`` and close the connection."""
    message, detail = problem
    payload = json.dumps({"error": message, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
