"""`jrft serve`: an HTTP server holding one backbone and every given task (FastAPI + uvicorn).

    POST /predict   {"task": NAME, "texts": ["...", ...]}             (pair tasks: ["text1", "text2"] per item)
                    or [{"task": NAME, "text": "..."}, ...]             (any mix of tasks; pairs: "text": [a, b])
                    -> {"predictions": [{"task", "label", "score", "probs"?}, ...]} in request order
    GET  /tasks     the base model and every task (name, GLUE task, method, d, pair, labels)
    GET  /health    {"status": "ok", ...} and the micro-batcher's counters

Rows of all requests, of any tasks, queue for one micro-batcher: it takes what is queued, waits at most
`max_wait_ms` for more, and runs up to `max_batch_size` rows as one mixed batch (serving.multitask) on one
worker thread, so the event loop keeps accepting requests meanwhile. A bad request gets a 4xx JSON error
`{"error": "..."}` naming the problem (400 malformed, 413 too large, 422 unknown task / empty text / wrong
number of texts); nothing a client sends stops the server.
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

# FastAPI reads the handlers' annotations from this module's globals: import at module level
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jrft_cli.core.errors import JrftError
from jrft_cli.serving.multitask import MultiTaskModel


class RequestError(Exception):
    """A client error: its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_batch_size: int = 64       # rows per forward pass
    max_wait_ms: float = 5.0       # how long a batch waits for more rows once it has one
    max_rows: int = 1024           # rows per request
    max_chars: int = 10_000        # characters per text


@dataclass
class Stats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    mixed_batches: int = 0         # batches holding rows of more than one task
    largest_batch: int = 0
    errors: int = 0


class MicroBatcher:
    """One queue of encoded rows from every request; `run` serves it in mixed-task batches."""

    def __init__(self, model: MultiTaskModel, limits: Limits, stats: Stats) -> None:
        self.model, self.limits, self.stats = model, limits, stats
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jrft-batch")

    async def submit(self, items: list[dict]) -> list[Any]:
        """Queue encoded rows; returns each row's logits once its batch has run."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self.queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    async def next_batch(self) -> list[tuple[dict, asyncio.Future]]:
        """The next batch: the first queued row, everything queued behind it, and what arrives within
        max_wait_ms, up to max_batch_size rows."""
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.max_wait_ms / 1000
        while len(batch) < self.limits.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def run_batch(self, batch: list[tuple[dict, asyncio.Future]]) -> None:
        """Run one batch on the worker thread and resolve its rows' futures."""
        items = [item for item, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            logits = await loop.run_in_executor(self.executor, self.model.logits, items)
        except Exception as e:   # a failed batch fails its requests, never the server
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.stats.batches += 1
        self.stats.rows += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        self.stats.mixed_batches += len({it["task"] for it in items}) > 1
        for (_, fut), row in zip(batch, logits):
            if not fut.done():    # the client may have gone away
                fut.set_result(row)

    async def run(self) -> None:
        while True:
            await self.run_batch(await self.next_batch())


def parse_request(body: Any, model: MultiTaskModel, limits: Limits) -> list[tuple[str, tuple[str, ...]]]:
    """The (task, texts) rows of a /predict body; RequestError naming the problem otherwise."""
    if isinstance(body, dict):
        missing = [k for k in ("task", "texts") if k not in body]
        if missing:
            raise RequestError(400, f"the body object needs 'task' and 'texts' (missing {', '.join(missing)}); or "
                                    f"send a list of {{\"task\": ..., \"text\": ...}} items")
        if not isinstance(body["texts"], list):
            raise RequestError(400, "'texts' must be a list of texts (pair tasks: a list of [text1, text2])")
        entries = [(body["task"], t, f"texts[{i}]") for i, t in enumerate(body["texts"])]
    elif isinstance(body, list):
        entries = []
        for i, item in enumerate(body):
            if not isinstance(item, dict) or "task" not in item or "text" not in item:
                raise RequestError(400, f"item {i}: expected an object {{\"task\": ..., \"text\": ...}}")
            entries.append((item["task"], item["text"], f"item {i}"))
    else:
        raise RequestError(400, "the body must be a JSON object {\"task\": ..., \"texts\": [...]} or a list of "
                                "{\"task\": ..., \"text\": ...} items")
    if not entries:
        raise RequestError(422, "no texts given")
    if len(entries) > limits.max_rows:
        raise RequestError(413, f"{len(entries)} texts in one request; at most {limits.max_rows}")
    rows = []
    for task, text, where in entries:
        if not isinstance(task, str):
            raise RequestError(422, f"{where}: 'task' must be a string naming one of: {', '.join(model.tasks)}")
        texts = (text,) if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise RequestError(422, f"{where}: a text is a string (pair tasks: a list of two strings)")
        texts = tuple(texts)
        for t in texts:
            if not t.strip():
                raise RequestError(422, f"{where}: text is empty")
            if len(t) > limits.max_chars:
                raise RequestError(413, f"{where}: text is too long ({len(t)} characters; at most {limits.max_chars})")
        try:
            model.check_row(task, texts, f"{where}: ")
        except JrftError as e:
            raise RequestError(404 if task not in model.tasks else 422, str(e)) from None
        rows.append((task, texts))
    return rows


def create_app(model: MultiTaskModel, limits: Limits | None = None):
    """The FastAPI app serving `model` (see the module doc)."""
    limits = limits or Limits()
    stats = Stats()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(model, limits, stats)
        state["batcher"] = batcher
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()
            batcher.executor.shutdown(wait=False)

    app = FastAPI(title="jrft serve", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        stats.errors += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, str(exc.errors()[:1]))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(model.tasks), "base_model": model.base_model.get("name"),
                "limits": vars(limits), "stats": vars(stats)}

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        return model.describe()

    @app.post("/predict")
    async def predict(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"the body is not JSON ({e})")
        try:
            rows = parse_request(body, model, limits)
        except RequestError as e:
            return error(e.status, str(e))
        stats.requests += 1
        items = model.encode_rows(rows)
        logits = await state["batcher"].submit(items)
        return {"predictions": [model.record(model.tasks[task], row) for (task, _), row in zip(rows, logits)]}

    return app


def serve(model: MultiTaskModel, host: str, port: int, limits: Limits, log_level: str = "warning") -> None:
    """Serve `model` over HTTP until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, limits), host=host, port=port, log_level=log_level)

