"""``flrec serve``: an HTTP JSON API (FastAPI + uvicorn, requests validated by pydantic).

Endpoints: ``POST /recommend``, ``GET /healthz``, ``GET /metadata``. The model is loaded once.
Concurrent requests are **micro-batched**: each valid request is put on a bounded asyncio queue; one
worker takes the first waiting request, collects more until ``max_batch`` are there or
``max_wait_ms`` has passed, and answers them all with one batched recommender call (one beam search
for generative models) run in a single worker thread, so the event loop keeps accepting requests.
A full queue answers **503** with ``Retry-After``; shutdown stops taking requests (503), lets the
queued ones finish, then stops the worker.

Errors are JSON ``{"error": CODE, "message": "...", ...}``:

=====  ======================================================================================
400    ``bad_json`` (body is not JSON, nested too deep, or a string with a lone surrogate)
408    ``request_timeout`` (the body did not arrive within ``read_timeout_s``; the connection is closed)
413    ``body_too_large`` (over ``max_body_bytes``)
422    ``invalid_request`` (wrong types, unknown keys, neither/both of history and item_ids),
       ``empty_history``, ``history_too_long``, ``k_out_of_range``,
       ``unknown_titles`` (with ``suggestions``: close catalogue titles per unknown title),
       ``unknown_item_ids``, ``empty_answer`` (every item the model could return is excluded)
503    ``overloaded`` (queue full, ``Retry-After`` header), ``shutting_down``
=====  ======================================================================================
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request)
# at runtime, and those names are imported inside create_app (FastAPI is an optional extra).
import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flrec.config import ConfigBase, option
from flrec.errors import ConfigError, FlrecError
from flrec.serving.service import Query, RequestError, ServedRecommender, empty_answer_reason

log = logging.getLogger(__name__)


@dataclass
class ServeConfig(ConfigBase):
    """The HTTP service: address, micro-batching and the limits that keep it responsive."""

    host: str = option("127.0.0.1", help="interface to bind (127.0.0.1 = this machine only)")
    port: int = option(8000, help="TCP port")
    max_batch: int = option(8, help="requests answered by one batched model call (1 = one at a time)")
    max_wait_ms: float = option(10.0, help="how long the worker waits for more requests after the first of a batch")
    max_queue: int = option(64, help="requests waiting for the model; beyond this the answer is 503 + Retry-After")
    retry_after_s: int = option(1, help="the Retry-After header of a 503")
    max_k: int = option(100, help="largest k a request may ask for (also bounded by the model: beam width or catalogue)")
    default_k: int = option(10, help="k when a request does not give one")
    max_history: int = option(256, help="most history items a request may send")
    max_body_bytes: int = option(65536, help="largest request body; larger ones get 413")
    read_timeout_s: float = option(10.0, help="seconds a client may take to send a request body; a stalled one gets "
                                   "408 and its connection is closed")
    log_level: str = option("info", help="uvicorn log level (critical, error, warning, info, debug)")

    def __post_init__(self) -> None:
        for key in ("max_batch", "max_queue", "max_k", "default_k", "max_history", "max_body_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}': must be >= 1, got {getattr(self, key)}")
        if not 0 < self.read_timeout_s <= 3600:
            raise ConfigError(f"config key 'read_timeout_s': must be in (0, 3600] seconds, got {self.read_timeout_s}")
        if self.max_wait_ms < 0 or self.retry_after_s < 0:
            raise ConfigError("config keys 'max_wait_ms'/'retry_after_s': must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"config key 'port': {self.port} is not a TCP port (0..65535)")
        if self.default_k > self.max_k:
            raise ConfigError(f"config keys 'default_k' ({self.default_k}) > 'max_k' ({self.max_k}); lower default_k")


class MicroBatcher:
    """A bounded queue of (query, future) and one worker that answers them in batches."""

    def __init__(self, model: ServedRecommender, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flrec-model")
        self.closing = False
        self.stats = {"requests": 0, "batches": 0, "max_batch_seen": 0, "rejected_full": 0}

    def start(self) -> None:
        if self.worker is None:
            self.queue = asyncio.Queue(maxsize=self.cfg.max_queue)
            self.worker = asyncio.get_running_loop().create_task(self._run())

    def submit(self, query: Query) -> asyncio.Future:
        """Queue ``query``; raises ``asyncio.QueueFull`` when the queue is full."""
        self.start()
        assert self.queue is not None
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((query, fut))
        self.stats["requests"] += 1
        return fut

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.cfg.max_wait_ms / 1000
            while len(batch) < self.cfg.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            live = [(q, f) for q, f in batch if not f.done()]  # a client that went away cancels its future
            self.stats["batches"] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(live))
            if not live:
                continue
            try:
                answers = await loop.run_in_executor(self.executor, self.model.recommend_batch, [q for q, _ in live])
            except Exception as e:  # noqa: BLE001 — every waiting request must get an answer
                log.exception("batch of %d failed", len(live))
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
            else:
                for (_, f), a in zip(live, answers, strict=True):
                    if not f.done():
                        f.set_result(a)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def drain_and_stop(self, timeout: float = 60.0) -> None:
        """Refuse new requests, answer the queued ones, stop the worker."""
        self.closing = True
        if self.queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), timeout)
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.executor.shutdown(wait=True)


def create_app(model: ServedRecommender, cfg: ServeConfig | None = None):
    """The FastAPI application serving ``model`` (already loaded) with ``cfg``'s limits."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from pydantic import ValidationError
    except ImportError as e:
        raise FlrecError(f"flrec serve needs the serve extra ({e.name} is missing): pip install 'flrec[serve]'") from None

    cfg = cfg or ServeConfig()
    max_k = min(cfg.max_k, model.max_k)
    default_k = min(cfg.default_k, max_k)
    batcher = MicroBatcher(model, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.drain_and_stop()

    app = FastAPI(title="flrec", summary=f"{model.method} recommendations", lifespan=lifespan)
    app.state.batcher = batcher
    api = _Endpoints(model, cfg, batcher, max_k, default_k, _request_model(default_k, max_k),
                     _error_responder(JSONResponse), ValidationError)

    # The routes stay here, thin: FastAPI reads ``Request`` from their annotations at runtime, and
    # it is importable only inside this function (FastAPI is an optional extra).
    @app.get("/healthz")
    async def healthz():
        return api.healthz()

    @app.get("/metadata")
    async def metadata():
        return api.metadata()

    @app.post("/recommend")
    async def recommend(request: Request):
        return await api.recommend(request)

    return app


def _request_model(default_k: int, max_k: int):
    """The pydantic model of a ``POST /recommend`` body (strict types, unknown keys refused)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[StrictStr] | None = Field(None, description="catalogue titles, oldest first")
        item_ids: list[StrictInt | StrictStr] | None = Field(
            None, description="item ids, oldest first: flrec's integers or your own ids (strings, e.g. \"it7\")")
        k: StrictInt = Field(default_k, description=f"items to return, 1..{max_k}")
        exclude_seen: StrictBool = Field(False, description="never return an item of the history")
        explain: StrictBool = Field(False, description="FLR: gate weight and most-attended history items per factor")

    return RecommendRequest


def _error_responder(json_response: type):
    """``error(status, code, message, headers=None, **extra)``: the JSON error response of the API."""

    class _Response(json_response):
        def render(self, content: Any) -> bytes:  # ASCII JSON: a lone surrogate echoed back cannot break it
            import json

            return json.dumps(content, separators=(",", ":")).encode("ascii")

    def error(status: int, code: str, message: str, headers: dict | None = None, **extra: Any):
        return _Response({"error": code, "message": message, **extra}, status_code=status, headers=headers)

    return error


class _Endpoints:
    """What the routes of :func:`create_app` do, and what they share (model, limits, batcher).

    ``request_model``, ``error`` and ``validation_error`` come in from create_app, where the
    optional extra's imports live. A step that refuses the request returns ``(None, response)``.
    """

    def __init__(self, model: ServedRecommender, cfg: ServeConfig, batcher: MicroBatcher, max_k: int,
                 default_k: int, request_model: type, error, validation_error: type) -> None:
        self.model, self.cfg, self.batcher, self.max_k, self.default_k = model, cfg, batcher, max_k, default_k
        self.request_model, self.error, self.validation_error = request_model, error, validation_error
        self.started = time.time()

    def healthz(self):
        if self.batcher.closing:
            return self.error(503, "shutting_down", "the server is shutting down")
        q = self.batcher.queue.qsize() if self.batcher.queue is not None else 0
        return {"status": "ok", "method": self.model.method, "queue": q,
                "uptime_s": round(time.time() - self.started, 3)}

    def metadata(self):
        cfg = self.cfg
        return {**self.model.metadata(), "max_k": self.max_k, "default_k": self.default_k,
                "serving": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue,
                            "max_history": cfg.max_history, "max_body_bytes": cfg.max_body_bytes},
                "stats": dict(self.batcher.stats)}

    async def recommend(self, request):
        body, refused = await self._receive(request)
        if refused is not None:
            return refused
        req, refused = self._parse(body)
        if refused is not None:
            return refused
        cfg, error = self.cfg, self.error
        try:
            ids = self.model.resolve(req.history, req.item_ids)
        except RequestError as e:
            return error(422, e.code, str(e), **e.details)
        try:
            fut = self.batcher.submit(Query(ids, req.k, req.exclude_seen, req.explain))
        except asyncio.QueueFull:
            self.batcher.stats["rejected_full"] += 1
            return error(503, "overloaded", f"{cfg.max_queue} requests are already waiting; retry after "
                         f"{cfg.retry_after_s} s", {"Retry-After": str(cfg.retry_after_s)})
        answer = await fut
        if not answer["items"]:
            return error(422, "empty_answer", empty_answer_reason(self.model, req.exclude_seen))
        return answer

    async def _receive(self, request) -> tuple[bytes | None, Any]:
        """The body, within the size and time limits (and not while shutting down)."""
        cfg, error = self.cfg, self.error
        if self.batcher.closing:
            return None, error(503, "shutting_down", "the server is shutting down; retry on another instance",
                               {"Retry-After": str(cfg.retry_after_s)})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return None, error(413, "body_too_large",
                               f"request body is {declared} bytes; the limit is {cfg.max_body_bytes}")
        try:
            body = await asyncio.wait_for(self._read_body(request), cfg.read_timeout_s)
        except TimeoutError:
            return None, error(408, "request_timeout",
                               f"the request body did not arrive within {cfg.read_timeout_s} s", {"Connection": "close"})
        if body is None:
            return None, error(413, "body_too_large", f"request body exceeds the limit of {cfg.max_body_bytes} bytes",
                               {"Connection": "close"})
        return body, None

    async def _read_body(self, request) -> bytes | None:
        """The body, or None once it exceeds ``max_body_bytes``."""
        body = b""
        async for chunk in request.stream():  # chunked bodies have no Content-Length: count as we read
            body += chunk
            if len(body) > self.cfg.max_body_bytes:
                return None
        return body

    def _parse(self, body: bytes) -> tuple[Any, Any]:
        """The validated request (JSON text, schema, history length, k), or the refusal."""
        cfg, error = self.cfg, self.error
        try:
            import json

            raw = json.loads(body)
            json.dumps(raw, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") is not text
        except (ValueError, UnicodeError, RecursionError):
            return None, error(400, "bad_json", 'the body is not JSON (or nested too deep, or not valid UTF-8 text); '
                               'send e.g. {"history": ["Title A", "Title B"], "k": 10}')
        try:
            req = self.request_model.model_validate(raw)
        except self.validation_error as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return None, error(422, "invalid_request", f"{where}: {first['msg']}",
                               errors=[{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors()[:10]])
        n_hist = len(req.history if req.history is not None else req.item_ids or [])
        if n_hist > cfg.max_history:
            return None, error(422, "history_too_long",
                               f"the history has {n_hist} items; the limit is {cfg.max_history}")
        if not 1 <= req.k <= self.max_k:
            return None, error(422, "k_out_of_range", f"k={req.k} is out of range; use 1..{self.max_k}")
        return req, None


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on (or an address that cannot be bound), in one line."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise FlrecError(f"host {host!r}: cannot resolve it ({e.strerror or e}); pass --host 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            raise FlrecError(f"cannot listen on {host}:{port} ({e.strerror or e}): another process uses it; "
                             "pass --port with a free port") from None


def serve(model_dir: str, cfg: ServeConfig | None = None, dtype: str | None = None) -> None:
    """Load the export at ``model_dir`` once and serve it with uvicorn until interrupted."""
    from flrec.serving.service import load_recommender

    cfg = cfg or ServeConfig()
    try:
        import uvicorn
    except ImportError:
        raise FlrecError("flrec serve needs uvicorn: pip install 'flrec[serve]'") from None
    check_port(cfg.host, cfg.port)  # before the model is loaded
    model = load_recommender(model_dir, dtype=dtype)
    app = create_app(model, cfg)
    # uvicorn handles SIGINT/SIGTERM: it stops accepting connections, waits for open requests, then
    # runs the lifespan shutdown, which answers what is still queued.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=60)
