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
* ``GET /api/index`` -> the index's manifest summary; ``GET /health``;
* ``GET /`` -> the viewer (one static page, no build step), ``/static/...`` its files only.

Requests that run the model (attribute, search) are serialised by one lock: one model,
one forward at a time, no interleaved autograd state. Bad input gets a 4xx JSON body
``{"error": "...", "detail": ...}`` naming the problem; the process stays up.
"""

# No `from __future__ import annotations`: FastAPI reads the request and response models
# defined inside create_app from real annotations.

import threading
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Literal

from tda.schemas import AttributionRequest
from tda.schemas.wire import is_inline

__all__ = ["LIMITS", "Limits", "create_app", "json_model", "request_model"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (stated in the OpenAPI description)."""

    prompt_chars: int = 20_000
    output_chars: int = 20_000
    generate_tokens: int = 256
    k: int = 100
    candidates: int = 1000
    ig_steps: int = 128
    search_chars: int = 5_000


LIMITS = Limits()

# Bounds of a request body that the Limits do not name (not shown by GET /api/index).
_FIXED_BOUNDS = {
    "temperature": {"le": 10.0},
    "nprobe": {"ge": 1},
    "top_concepts": {"le": 1000},
    "chunk_size": {"le": 4096},
    "candidates": {"ge": 1},
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
        model_config = ConfigDict(extra="forbid")

        @model_validator(mode="after")
        def _one_output(self):
            if (self.output is None) == (self.generate is None):
                raise ValueError("give exactly one of 'output' or 'generate'")
            return self

    bounds = {
        **_FIXED_BOUNDS,
        "prompt": {"max_length": limits.prompt_chars},
        "output": {"max_length": limits.output_chars},
        "generate": {"le": limits.generate_tokens},
        "k": {"le": limits.k},
        "ig_steps": {"le": limits.ig_steps},
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
        default = ... if f.default is MISSING else f.default
        spec[f.name] = (
            kind,
            Field(default=default, description=meta.get("doc"), **checks, **bounds.get(f.name, {})),
        )
    return create_model("AttributeRequest", __base__=Body, **spec)


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


def create_app(
    root: str,
    model: str | None = None,
    device: str = "auto",
    force: bool = False,
    limits: Limits = LIMITS,
    allowed_hosts: Sequence[str] = (),
):
    """The FastAPI application for the index in ``root`` (index and encoder loaded now).
    Requests must name one of :data:`LOCAL_HOSTS` or ``allowed_hosts`` in their Host
    header (anything else: HTTP 400, a JSON error naming the host)."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from tda import __version__
    from tda.attribution.attributor import Attributor
    from tda.attribution.index.reader import IndexReadError
    from tda.schemas import AttributionReport, ChunkRecord, SearchHit
    from tda.schemas.errors import UserError

    attributor = Attributor.from_root(root, model=model, device=device, force=force)
    reader = attributor.reader
    manifest = reader.manifest
    lock = threading.Lock()

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
        status: str
        index_manifest_id: str

    class ErrorBody(BaseModel):
        error: str
        detail: object | None = None

    errors = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}}
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"where": "", "problem": "invalid"}
        return JSONResponse(
            status_code=422,
            content={"error": f"{first['where']}: {first['problem']}", "detail": problems},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug, not the client's fault
        return JSONResponse(
            status_code=500, content={"error": f"internal error: {type(exc).__name__}"}
        )

    user_errors = UserError  # ConfigError, StageError (IndexReadError is one), ...

    @app.get("/health", response_model=Health)
    def health():
        return {"status": "ok", "index_manifest_id": reader.manifest_id}

    @app.get("/api/index", response_model=IndexSummary)
    def index_summary():
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
            "limits": limits.__dict__,
        }

    @app.post("/api/attribute", response_model=Report, responses=errors)
    def attribute(body: AttributeRequest):
        try:
            request = AttributionRequest(**body.model_dump())
            with lock:
                report = attributor.attribute(request)
        except user_errors as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return report.to_dict()

    @app.get("/api/search", response_model=SearchResponse, responses=errors)
    def search(
        text: str = Query(min_length=1, max_length=limits.search_chars),
        k: int = Query(default=10, ge=1, le=limits.k),
    ):
        from tda.attribution.query import encode_query

        try:
            with lock:
                query = encode_query(reader, text, encoder=attributor.encoder)
                hits = reader.hits(query[None], k)[0]
        except user_errors as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return {
            "index_manifest_id": reader.manifest_id,
            "text": text,
            "hits": hits,
        }

    @app.get("/api/chunks/{chunk_id}", response_model=ChunkResponse, responses=errors)
    def chunk(chunk_id: int, context: int = Query(default=1, ge=0, le=8)):
        try:
            record = reader.lookup.get(chunk_id)
        except IndexReadError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except (ValueError, OverflowError):
            raise HTTPException(
                status_code=404, detail=f"chunk id {chunk_id} is not in this index"
            ) from None

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

    @app.get("/", include_in_schema=False)
    def viewer():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
