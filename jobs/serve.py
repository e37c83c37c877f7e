"""``tda serve``: the attribution service and its web viewer.

::

    app = create_app("build/demo/root")      # loads the index and its encoder once
    uvicorn.run(app, host="127.0.0.1", port=8080)

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``POST /api/attribute`` {prompt, output | generate, k, input_attribution, ...}: the
  fields of :class:`~tda.schemas.AttributionRequest` (its defaults, choices, minimums and
  descriptions; text only, within :class:`Limits`) -> the
  :class:`~tda.schemas.AttributionReport` (the same JSON ``tda attribute --json`` prints);
* ``GET /api/search?text=...&k=...`` -> the nearest training chunks to a text;
* ``GET /api/chunks/{chunk_id}`` -> a chunk's provenance and text with its neighbours in
  the same document;
* ``GET /api/documents/{chunk_id}?limit=2000`` -> the whole document that chunk belongs
  to: provenance, its chunks in order and their text joined, at most ``limit`` chunks
  around it (``truncated`` when cut);
* ``GET /api/index`` -> the index's manifest summary; ``GET /health``;
* ``GET /`` -> the viewer (one static page, no build step), ``/static/...`` its files only.

Requests that run the model (attribute, search) are serialised by one lock: one model,
one forward at a time, no interleaved autograd state. They run in worker threads, never
on the event loop, and at most ``max_pending`` of them may be in the server at once
(one running, the rest waiting): more get a 503 with ``Retry-After``. ``/health`` and
``/api/index`` answer on the event loop itself, so they are never queued behind them.

Before FastAPI parses a body, :class:`~tda.jobs.asgi_limits.BodyLimitMiddleware` refuses
(413) one over ``max_request_bytes`` or a JSON body with too many keys or too deep.
Bad input gets a 4xx JSON body ``{"error": "...", "detail": ...}`` naming the problem,
of bounded size (at most :data:`LISTED_ERRORS` problems, each clipped to
:data:`ECHO_CHARS` characters); the process stays up.
"""

# No `from __future__ import annotations`: FastAPI reads the request and response models
# defined inside create_app from real annotations.

import json
import threading
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Literal

from tda.schemas import AttributionRequest
from tda.schemas.request import REQUEST_RANGES
from tda.schemas.wire import is_inline

from .asgi_limits import MAX_REQUEST_BYTES, BodyLimitMiddleware, BodyLimits

__all__ = [
    "ECHO_CHARS",
    "LIMITS",
    "LISTED_ERRORS",
    "MAX_CHUNK_ID",
    "MAX_PENDING",
    "Limits",
    "create_app",
    "json_model",
    "request_model",
]

# Model requests (attribute, search) that may be in the server at once, running or
# waiting for the model; more get a 503. Each waits in one of the framework's worker
# threads (40 by default), so this keeps threads free for chunk lookups and the viewer.
MAX_PENDING = 16
# An error body lists at most this many problems, each string clipped to ECHO_CHARS: a
# body with 500,000 unknown keys once got a 34 MB answer, built on the event loop.
LISTED_ERRORS = 5
ECHO_CHARS = 200
# Chunk ids are non-negative int64 (schemas/ids.py); a larger path value is a 422 naming
# chunk_id, not a lookup.
MAX_CHUNK_ID = 2**63 - 1

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (stated in the OpenAPI description)."""

    prompt_chars: int = 20_000
    output_chars: int = 20_000
    # the CLI's ranges (schemas/request.py REQUEST_RANGES), so both refuse the same values
    generate_tokens: int = REQUEST_RANGES["generate"].hi
    k: int = REQUEST_RANGES["k"].hi
    candidates: int = REQUEST_RANGES["candidates"].hi
    ig_steps: int = REQUEST_RANGES["ig_steps"].hi
    search_chars: int = 5_000


LIMITS = Limits()


def _range_bounds(r) -> dict:
    """A :class:`~tda.schemas.config.Range` as pydantic ``Field`` bounds."""
    out = {}
    if r.lo is not None:
        out["gt" if r.lo_open else "ge"] = r.lo
    if r.hi is not None:
        out["lt" if r.hi_open else "le"] = r.hi
    return out


# Bounds of a request body: the CLI's ranges, then the Limits on top (in request_model);
# those the Limits do not name are not shown by GET /api/index.
_FIXED_BOUNDS = {
    **{name: _range_bounds(r) for name, r in REQUEST_RANGES.items()},
    "channels": {"max_length": 3},
}


def request_model(limits: Limits = LIMITS):
    """The ``POST /api/attribute`` body as a pydantic model derived from
    :class:`~tda.schemas.AttributionRequest`: its fields, defaults, ``choices`` (as
    literals), ``min`` (as ``ge``) and ``doc`` (as descriptions); prompt and output as text
    only; this server's ``limits`` on top; exactly one of output or generate. Everything
    else the request checks is checked when it is built (a 400, as the attributor's
    errors)."""
    from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

    class Body(BaseModel):
        # NaN and infinity (Python's json reads the literals NaN, Infinity) pass a range
        # check's comparisons silently in some paths: refuse them by name instead.
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

        @model_validator(mode="after")
        def _one_output(self):
            if (self.output is None) == (self.generate is None):
                raise ValueError("give exactly one of 'output' or 'generate'")
            return self

    bounds = {
        **_FIXED_BOUNDS,
        "prompt": {"max_length": limits.prompt_chars},
        "output": {"max_length": limits.output_chars},
        "generate": {**_FIXED_BOUNDS["generate"], "le": limits.generate_tokens},
        "k": {**_FIXED_BOUNDS["k"], "le": limits.k},
        "ig_steps": {**_FIXED_BOUNDS["ig_steps"], "le": limits.ig_steps},
        "candidates": {**_FIXED_BOUNDS["candidates"], "le": limits.candidates},
    }
    hints = typing.get_type_hints(AttributionRequest)
    spec = {}
    for f in fields(AttributionRequest):
        meta = f.metadata
        kind = Literal[meta["choices"]] if "choices" in meta else _text_only(hints[f.name])
        checks = {"ge": meta["min"]} if "min" in meta else {}
        if "max" in meta:
            checks["le"] = meta["max"]
        checks = _tighter(checks, bounds.get(f.name, {}))
        default = ... if f.default is MISSING else f.default
        spec[f.name] = (kind, Field(default=default, description=meta.get("doc"), **checks))
    return create_model("AttributeRequest", __base__=Body, **spec)


def _tighter(request: dict, server: dict) -> dict:
    """The request's own bounds and this server's, merged: the tighter of two ``ge``
    / ``gt`` (larger) or ``le`` / ``lt`` / ``max_length`` (smaller), so a bound the
    request gains later never clashes with one the server already sets."""
    merged = dict(request)
    for name, value in server.items():
        if name in merged:
            lower = name in ("ge", "gt")
            value = max(merged[name], value) if lower else min(merged[name], value)
        merged[name] = value
    return merged


def _text_only(kind):
    """A request field's type without its token-id form: ``str | tuple[int, ...]`` -> str."""
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return kind
    kept = [
        a
        for a in typing.get_args(kind)
        if typing.get_origin(a) is not tuple or typing.get_args(a)[0] is not int
    ]
    return typing.Union[tuple(kept)] if len(kept) > 1 else kept[0]  # noqa: UP007


def json_model(record: type, models: dict | None = None):
    """A pydantic model of a schemas record's JSON form (``to_dict``), named as the record:
    its fields in order, an inlined field's record's fields in its place
    (:func:`~tda.schemas.wire.inline`: a training hit's chunk), nested records likewise;
    the OpenAPI description of what the server sends. ``models``: built so far."""
    from pydantic import Field, create_model

    models = {} if models is None else models
    if record not in models:
        hints = typing.get_type_hints(record)
        spec = {}
        for f in fields(record):
            if is_inline(f):
                inner = hints[f.name]
                inner_hints = typing.get_type_hints(inner)
                for g in fields(inner):
                    spec[g.name] = (_json_type(inner_hints[g.name], models), _field(g, Field))
            else:
                spec[f.name] = (_json_type(hints[f.name], models), _field(f, Field))
        doc = record.__doc__  # dataclass writes "Name(field: type, ...)" when there is none
        doc = None if not doc or doc.startswith(f"{record.__name__}(") else doc
        models[record] = create_model(record.__name__, __doc__=doc, **spec)
    return models[record]


def _json_type(kind, models: dict):
    """An annotation with every record in it replaced by its :func:`json_model`."""
    if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
        return json_model(kind, models)
    args = typing.get_args(kind)
    if not args:
        return kind
    converted = tuple(a if a is Ellipsis else _json_type(a, models) for a in args)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[converted]  # noqa: UP007
    return origin[converted]


def _field(f, Field):
    if f.default is not MISSING:
        return Field(default=f.default)
    if f.default_factory is not MISSING:
        return Field(default_factory=f.default_factory)
    return Field()


# Host names a browser on this machine uses for a server bound to loopback. A page on
# another site that rebinds its own name to 127.0.0.1 (DNS rebinding) sends its own name
# in Host, so a request whose Host is not one of these (or one --allowed-host adds) is
# refused before it reaches the model or the index.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_name(header: str) -> str:
    """A Host header -> its name without the port, lower-cased ("[::1]:8080" -> "::1")."""
    value = header.strip().lower()
    if value.startswith("["):  # an IPv6 literal: [addr]:port
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more)"


def _json_response(content: dict):
    """``content`` as a JSON ``Response``, encoded here, in the calling worker thread, by
    the pure-Python encoder: it gives the event loop the interpreter lock every few
    milliseconds. Returning the dict instead lets FastAPI validate it against the
    response model in one C call holding the lock: 150 ms for a k=100, 192-token report
    (850 kB), during which /health could not answer. Content json cannot write exactly
    (a non-finite float) goes the validated way (pydantic writes NaN as null)."""
    from fastapi.responses import Response

    encoder = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    try:
        body = "".join(encoder.iterencode(content)).encode()
    except (TypeError, ValueError):  # NaN, or a value json does not know: validate it
        return content
    return Response(content=body, media_type="application/json")


class _ModelTurns:
    """One model pass at a time (``turn()`` holds the model lock: no interleaved autograd
    state), and at most ``limit`` requests holding or waiting for it; one more raises
    HTTP 503 at once instead of tying up another worker thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._model = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        from fastapi import HTTPException

        if not self._slots.acquire(blocking=False):
            raise HTTPException(
                status_code=503,
                detail=f"busy: {self.limit} model requests are running or waiting; retry later",
                headers={"Retry-After": "1"},
            )
        try:
            with self._model:
                yield
        finally:
            self._slots.release()


def create_app(
    root: str,
    model: str | None = None,
    device: str = "auto",
    force: bool = False,
    limits: Limits = LIMITS,
    allowed_hosts: Sequence[str] = (),
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_pending: int = MAX_PENDING,
):
    """The FastAPI application for the index in ``root`` (index and encoder loaded now).
    Requests must name one of :data:`LOCAL_HOSTS` or ``allowed_hosts`` in their Host
    header (anything else: HTTP 400, a JSON error naming the host). A request body over
    ``max_request_bytes`` (1 KiB .. 1 GiB, else :class:`ConfigError` before anything
    loads), or JSON with too many keys or too deep (:class:`BodyLimits`), gets a 413; a
    model request beyond ``max_pending`` waiting ones gets a 503."""
    import anyio
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from tda import __version__
    from tda.attribution.attributor import Attributor
    from tda.attribution.index.documents import DOCUMENT_CHUNK_LIMIT, DocumentView, document_of
    from tda.attribution.index.reader import IndexReadError
    from tda.attribution.io.integrity import CorruptFileError
    from tda.schemas import AttributionReport, ChunkRecord, SearchHit
    from tda.schemas.config import ConfigError
    from tda.schemas.errors import UserError

    from .health import RootHealth
    from .serve_check import add_check_route

    body_limits = BodyLimits(max_bytes=max_request_bytes)  # checked before the model loads
    if max_pending < 1:
        raise ConfigError(f"max_pending must be at least 1, got {max_pending}")
    attributor = Attributor.from_root(root, model=model, device=device, force=force)
    reader = attributor.reader
    manifest = reader.manifest
    turns = _ModelTurns(max_pending)
    ChunkId = typing.Annotated[
        int, PathParam(ge=0, le=MAX_CHUNK_ID, description="A chunk id (a non-negative int64).")
    ]

    AttributeRequest = request_model(limits)
    Report = json_model(AttributionReport)  # the report's JSON: hits flat, as to_dict writes
    ChunkOut = ChunkRecord  # provenance + text, as the index reader returns it

    class SearchResponse(BaseModel):
        index_manifest_id: str
        text: str
        hits: list[SearchHit]

    class ChunkResponse(BaseModel):
        chunk: ChunkOut
        previous: list[ChunkOut]  # the document's chunks before it, nearest last
        next: list[ChunkOut]  # after it, nearest first
        concepts: list[dict]  # [{"concept_id", "name", "weight"}], strongest first

    class IndexSummary(BaseModel):
        root: str
        index_manifest_id: str
        tda_version: str
        encoder: dict
        factory: str
        metric: str
        dim: int
        vectors: int
        shards: int
        nprobe: int
        pooling: str
        chunk_size: int
        window: int
        inputs: list[dict]
        lineage: dict | None
        limits: dict

    class Health(BaseModel):
        status: str  # "ok" | "unhealthy" (HTTP 503: the root fails `tda verify --sizes-only`)
        index_manifest_id: str
        problems: list[str] = []  # the first few, one line each (tda verify's)
        more_problems: int = 0

    class ErrorBody(BaseModel):
        error: str
        detail: object | None = None

    # 413 (body limits) and 503 (model queue full): only where they can happen
    errors = {code: {"model": ErrorBody} for code in (400, 404, 422)}
    model_errors = {**errors, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}}
    app = FastAPI(
        title="tda",
        version=__version__,
        description=f"Training-data attribution for the index in {root}.",
    )

    hosts = {h.lower() for h in LOCAL_HOSTS} | {host_name(h) for h in allowed_hosts}

    @app.middleware("http")
    async def _check_host(request: Request, call_next):
        name = host_name(request.headers.get("host", ""))
        if name not in hosts:
            return JSONResponse(
                status_code=400,
                content={
                    "error": f"host {name!r} is not served here; start tda serve with "
                    f"--allowed-host {name or 'NAME'} to allow it"
                },
            )
        return await call_next(request)

    # Added last, so outermost: a body is bounded before anything else reads it.
    app.add_middleware(BodyLimitMiddleware, limits=body_limits)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # Runs on the event loop: a few problems, clipped, never the input echoed back
        # (FastAPI's default handler returns every error with its whole input).
        found = exc.errors()
        problems = [
            {
                "where": _clip(".".join(str(p) for p in e.get("loc", ()))),
                "problem": _clip(str(e.get("msg", ""))),
            }
            for e in found[:LISTED_ERRORS]
        ]
        first = problems[0] if problems else {"where": "", "problem": "invalid"}
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        return JSONResponse(
            status_code=422,
            content={"error": f"{first['where']}: {first['problem']}{more}", "detail": problems},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": _clip(str(exc.detail), 4 * ECHO_CHARS)},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug, not the client's fault
        # ... or a damaged root: its one line names the file and the fix
        error = str(exc) if isinstance(exc, CorruptFileError) else type(exc).__name__
        return JSONResponse(status_code=500, content={"error": f"internal error: {error}"})

    user_errors = UserError  # ConfigError, StageError (IndexReadError is one), ...
    root_health = RootHealth(root)

    # /health and /api/index are `async def`: answered on the event loop itself, never
    # queued behind the worker threads that model requests hold. Keep them cheap (no
    # disk, no model): anything slow here would stall every request.
    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health():
        if root_health.stale():  # at most every few seconds, in a worker thread
            state = await anyio.to_thread.run_sync(root_health.check)
        else:
            state = root_health.check()
        body = {
            "status": "ok" if state.ok else "unhealthy",
            "index_manifest_id": reader.manifest_id,
            "problems": list(state.problems),
            "more_problems": state.more,
        }
        return body if state.ok else JSONResponse(status_code=503, content=body)

    @app.get("/api/index", response_model=IndexSummary)
    async def index_summary():
        return {
            "root": root,
            "index_manifest_id": reader.manifest_id,
            "tda_version": manifest.tda_version,
            "encoder": {
                "name": manifest.encoder.name,
                "spec": manifest.encoder.spec,
                "fingerprint": manifest.encoder.fingerprint,
            },
            "factory": manifest.factory,
            "metric": manifest.metric,
            "dim": manifest.dim,
            "vectors": manifest.vectors,
            "shards": len(manifest.shards),
            "nprobe": manifest.nprobe,
            "pooling": manifest.pooling.name,
            "chunk_size": manifest.chunking.chunk_size,
            "window": manifest.context.window,
            "inputs": [
                {"index": i.index, "url": i.url, "format": i.format} for i in manifest.inputs
            ],
            "lineage": manifest.lineage,
            "limits": {
                **limits.__dict__,
                "request_bytes": body_limits.max_bytes,
                "json_members": body_limits.max_members,
                "json_depth": body_limits.max_depth,
                "pending": max_pending,
            },
        }

    # Model requests are plain `def`: FastAPI runs them in worker threads, off the loop.
    @app.post("/api/attribute", response_model=Report, responses=model_errors)
    def attribute(body: AttributeRequest):
        try:
            request = AttributionRequest(**body.model_dump())
            with turns.turn():
                report = attributor.attribute(request)
        except user_errors as exc:  # a damaged root (CorruptFileError) is a 500
            status = 500 if isinstance(exc, CorruptFileError) else 400
            raise HTTPException(status, str(exc)) from None
        return _json_response(report.to_dict())

    @app.get("/api/search", response_model=SearchResponse, responses=model_errors)
    def search(
        text: str = Query(min_length=1, max_length=limits.search_chars),
        k: int = Query(default=10, ge=1, le=limits.k),
    ):
        from tda.attribution.query import encode_query

        try:
            with turns.turn():
                query = encode_query(reader, text, encoder=attributor.encoder)
                hits = reader.hits(query[None], k)[0]
        except user_errors as exc:  # a damaged root (CorruptFileError) is a 500
            status = 500 if isinstance(exc, CorruptFileError) else 400
            raise HTTPException(status, str(exc)) from None
        return {
            "index_manifest_id": reader.manifest_id,
            "text": text,
            "hits": hits,
        }

    @contextmanager
    def _missing_is_404(chunk_id: int) -> Iterator[None]:
        """A chunk id the index does not hold -> 404 naming it; a damaged root's
        CorruptFileError (a ValueError too) passes on to the 500 handler."""
        try:
            yield
        except CorruptFileError:
            raise
        except IndexReadError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except (ValueError, OverflowError):
            raise HTTPException(404, f"chunk id {chunk_id} is not in this index") from None

    @app.get("/api/chunks/{chunk_id}", response_model=ChunkResponse, responses=errors)
    def chunk(chunk_id: ChunkId, context: int = Query(default=1, ge=0, le=8)):
        with _missing_is_404(chunk_id):
            record = reader.lookup.get(chunk_id)

        def neighbours(step: int) -> list:
            out = []
            for n in range(1, context + 1):
                other = chunk_id + step * n
                try:
                    rec = reader.lookup.get(other)
                except (IndexReadError, ValueError, OverflowError):
                    break
                if rec.doc_id != record.doc_id or rec.source != record.source:
                    break
                out.append(rec.__dict__)
            return out

        try:
            ids, weights = reader.concepts(chunk_id)
        except IndexReadError:
            ids, weights = [], []
        names = attributor.encoder.concept_names
        concepts = [
            {"concept_id": int(c), "name": names[int(c)] if int(c) < len(names) else f"known:{c}",
             "weight": round(float(w), 4)}
            for c, w in zip(ids, weights, strict=True)
        ]  # fmt: skip
        return {
            "chunk": record.__dict__,
            "previous": neighbours(-1)[::-1],
            "next": neighbours(1),
            "concepts": concepts,
        }

    @app.get("/api/documents/{chunk_id}", response_model=DocumentView, responses=errors)
    def document(
        chunk_id: ChunkId,
        limit: int = Query(default=DOCUMENT_CHUNK_LIMIT, ge=1, le=DOCUMENT_CHUNK_LIMIT),
    ):
        # the whole training document around a hit, for the viewer's document view;
        # capped (a document can be 16 MiB) with "truncated" set when it is cut
        with _missing_is_404(chunk_id):
            return document_of(reader.lookup, chunk_id, limit)

    add_check_route(app, attributor, turns, Report, model_errors, _json_response,
                    lambda exc: isinstance(exc, CorruptFileError), user_errors)  # fmt: skip

    @app.get("/", include_in_schema=False)
    def viewer():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
