"""An OpenAI-compatible HTTP server for a chat or text run, with a chat page at /.

    python generate.py --checkpoint <run> --serve [--host 127.0.0.1] [--port 8000]

Endpoints: POST /v1/chat/completions (chat runs), POST /v1/completions (text continuation, any run),
GET /v1/models (the run's checkpoints; a request picks one with `model`), GET / (the page, static/chat.html).

Requests are answered by one model thread. Rows (one per choice of a request) that arrive together, up to
MAX_BATCH_ROWS, share a forward pass through the KV-cached sampler: each row has its own cache row, positions,
settings and random generator, so its answer is the one it would get alone. A row that is done (stop token or
string, max_tokens, or its client left) leaves the batch; the next batch starts when every row of the current one
is done.
Bad requests get a 4xx answer in the OpenAI error shape and the server keeps serving.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from utils.checkpoint import run_steps
from utils.sampling import SEEDS, SamplingParams, context_length, fit_conversation, prompt_ids, room, stream_tokens

PAGE = Path(__file__).resolve().parent / "static" / "chat.html"
MAX_BODY_BYTES = 1 << 20  # a request body above this is refused (413)
MAX_CHOICES = 8  # n
MAX_BATCH_ROWS = 16  # rows generated together
MAX_WAITING_ROWS = 256  # rows queued before new requests are refused (429)
MAX_STOP_STRINGS = 4  # as OpenAI
BATCH_WINDOW_S = 0.005  # how long the model thread waits for more requests to join a batch
MODELS_KEPT = 2  # checkpoints held in memory at once


class APIError(Exception):
    """A request the server refuses, answered as {"error": {...}} with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- requests

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def turn(self) -> tuple[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ("system" if self.role == "developer" else self.role), text


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """The fields both endpoints share (unknown fields are ignored, as clients send many)."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=SEEDS[0], le=SEEDS[1])
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} non-empty strings", "stop")
        return stops


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str


def parse(body: bytes, kind: type[Sampling]) -> Sampling:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"], where or None) from None


# ---------------------------------------------------------------- the model thread

@dataclasses.dataclass(eq=False)
class Row:
    """One choice being generated: its prompt and settings in, text pieces out (to the request's event queue)."""
    index: int  # the choice's index in its request
    file: str  # checkpoint
    prompt: list[int]
    params: SamplingParams
    stops: list[str]
    decode: Callable[[list[int]], str]
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: int = 0  # characters of the decoded text already sent
    finished: bool = False
    cancelled: bool = False  # the client left

    def send(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, *event))

    def add(self, token: int) -> None:
        """A new token: send the text that is now certain (not a partial character, not a possible stop string's
        start); at a stop string, send up to it and finish."""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if hits:
            self.finish("stop", text[:min(hits)])
            return
        text = text.rstrip("\ufffd")  # the rest of a multi-byte character may come with the next token
        held = max((k for s in self.stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)
        self._send_text(text[:len(text) - held])

    def _send_text(self, text: str) -> None:
        if len(text) > self.sent:
            self.send("text", text[self.sent:])
            self.sent = len(text)

    def finish(self, reason: str, text: str | None = None) -> None:
        if not self.finished:
            self.finished = True
            self._send_text(text if text is not None else self.decode(self.tokens))
            self.send("done", reason, len(self.tokens))


class Batcher:
    """The model thread: loads checkpoints on demand and generates batches of waiting rows."""

    def __init__(self, generator):
        self.generator = generator
        self.stop_ids = generator.stop_ids()
        self.models: OrderedDict[str, Any] = OrderedDict({generator.file: generator.model})
        self.waiting: queue.Queue[Row | None] = queue.Queue()
        self.backlog: list[Row] = []  # taken from the queue, waiting for a batch of their checkpoint
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "cancelled": 0}
        self.thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self.thread.start()

    def submit(self, rows: list[Row]) -> None:
        if self.waiting.qsize() + len(self.backlog) + len(rows) > MAX_WAITING_ROWS:
            raise APIError(429, f"the server has {MAX_WAITING_ROWS} rows waiting; try again shortly",
                           code="server_busy", kind="rate_limit_error")
        for row in rows:
            self.waiting.put(row)

    def close(self) -> None:
        self.waiting.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            if not self.backlog:
                row = self.waiting.get()
                if row is None:
                    return
                self.backlog.append(row)
                time.sleep(BATCH_WINDOW_S)  # the requests that arrive together share the batch
            while True:  # everything that has arrived
                try:
                    row = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if row is None:
                    return
                self.backlog.append(row)
            file = self.backlog[0].file
            self.stats["cancelled"] += sum(r.cancelled for r in self.backlog)  # their clients left while waiting
            self.backlog = [r for r in self.backlog if not r.cancelled]
            batch = [r for r in self.backlog if r.file == file][:MAX_BATCH_ROWS]
            self.backlog = [r for r in self.backlog if r not in batch]
            if batch:
                self._generate(file, batch)

    def model(self, file: str):
        if file not in self.models:
            from generate import load_model

            args = argparse.Namespace(**{**vars(self.generator.args), "checkpoint": file})
            self.models[file] = load_model(args)[0]
            while len(self.models) > MODELS_KEPT:
                self.models.popitem(last=False)
        self.models.move_to_end(file)
        return self.models[file]

    def _generate(self, file: str, batch: list[Row]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            model = self.model(file)
            gone = lambda: [i for i, r in enumerate(batch) if r.finished or r.cancelled]  # noqa: E731
            for tokens in stream_tokens(model, [r.prompt for r in batch], [r.params for r in batch], self.stop_ids,
                                        self.generator.use_cache, rows_done=gone, compiled=self.generator.compiled):
                for row, token in zip(batch, tokens):
                    if row.finished or row.cancelled:
                        continue
                    if token is None:  # a stop token, or all its tokens while others of the batch go on
                        limit = room(row.params.max_new_tokens, len(row.prompt), context_length(model))
                        row.finish("length" if len(row.tokens) >= limit else "stop")
                    else:
                        row.add(token)
        except Exception as e:  # noqa: BLE001  (a failed batch answers its requests; the thread goes on)
            for row in batch:
                if not row.finished:
                    row.finished = True
                    row.send("error", f"{type(e).__name__}: {e}")
            return
        for row in batch:
            self.stats["cancelled"] += row.cancelled
            row.finish("length")


# ---------------------------------------------------------------- the app

def checkpoint_names(run_dir: str) -> dict[str, str]:
    """Model id (step_<N>) -> checkpoint file, lowest step first."""
    return {Path(f).name.removesuffix(".pt"): f for _, f in run_steps(run_dir)}


def make_app(generator):
    """The FastAPI app serving `generator` (a generate.Generator: the run, tokenizer and default settings)."""
    batcher = Batcher(generator)
    app = FastAPI(title="TRM", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.router.on_shutdown.append(batcher.close)
    run_name = os.path.basename(os.path.abspath(generator.run_dir))
    tokenizer = generator.tokenizer

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):  # unknown path, wrong method
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    async def read_body(request: Request) -> bytes:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        return body

    def resolve_model(name: str | None) -> tuple[str, str]:
        """(model id, checkpoint file) of a request's `model`: none, the run's name or "latest" mean the
        checkpoint the server was started with."""
        names = checkpoint_names(generator.run_dir)
        if not name or name == run_name:
            file = generator.file
        elif name == "latest" and names:
            file = list(names.values())[-1]
        elif name.removesuffix(".pt") in names:
            file = names[name.removesuffix(".pt")]
        else:
            raise APIError(404, f"model {name!r} does not exist; this server has {', '.join(names)}", "model",
                           "model_not_found")
        return Path(file).name.removesuffix(".pt"), file

    def rows_for(request: Sampling, prompt: list[int], file: str, events, loop) -> list[Row]:
        context = context_length(generator.model)
        limit = request.max_completion_tokens or request.max_tokens
        if limit is not None and limit > context:
            raise APIError(400, f"max_tokens is {limit}; this model's context is {context} tokens", "max_tokens")
        if request.n > 1 and request.temperature == 0:
            raise APIError(400, f"n={request.n} with temperature 0 (greedy) gives {request.n} identical answers; "
                           "set temperature above 0", "n")
        seed = generator.params.seed if request.seed is None else request.seed
        params = SamplingParams(request.temperature, 0, request.top_p, 1.0, limit or generator.params.max_new_tokens)
        stops = request.stops()
        return [Row(i, file, prompt, dataclasses.replace(params, seed=seed + i), stops, tokenizer.decode, events, loop)
                for i in range(request.n)]

    def encode_chat(request: ChatRequest) -> list[int]:
        if generator.text_mode:
            raise APIError(400, "this is a text run (it continues text): use /v1/completions", "messages")
        turns = [m.turn() for m in request.messages]
        if turns[-1][0] == "assistant" or not turns[-1][1].strip():
            raise APIError(400, "the last message must be a non-empty user (or system) message", "messages")
        context = context_length(generator.model)
        try:
            limit = request.max_completion_tokens or request.max_tokens or generator.params.max_new_tokens
            return fit_conversation(tokenizer, turns, context, limit)[0]
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages", "context_length_exceeded") from None

    def encode_text(request: CompletionRequest) -> list[int]:
        if not request.prompt.strip():
            raise APIError(400, "prompt: empty", "prompt")
        ids, _ = prompt_ids(tokenizer, request.prompt, "text")
        context = context_length(generator.model)
        if len(ids) >= context:
            raise APIError(400, f"prompt: {len(ids)} tokens; the model's context is {context} tokens", "prompt",
                           "context_length_exceeded")
        return ids

    async def complete(request: Request, kind: type[Sampling], encode, chat: bool):
        body = parse(await read_body(request), kind)
        model_id, file = resolve_model(body.model)
        prompt = encode(body)
        events: asyncio.Queue = asyncio.Queue()
        rows = rows_for(body, prompt, file, events, asyncio.get_running_loop())
        batcher.submit(rows)
        reply = Reply(chat, model_id, len(prompt), body.n)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(reply.stream(events, rows, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while reply.open:
                try:
                    reply.take(await asyncio.wait_for(events.get(), timeout=1.0))
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({})
        finally:
            for row in rows:
                row.cancelled = not row.finished
        return JSONResponse(reply.whole())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, ChatRequest, encode_chat, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, CompletionRequest, encode_text, chat=False)

    @app.get("/v1/models")
    async def models():
        default = Path(generator.file).name.removesuffix(".pt")
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(os.path.getmtime(file)), "owned_by": run_name,
             "default": name == default} for name, file in checkpoint_names(generator.run_dir).items()]}

    @app.get("/")
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    return app


class Reply:
    """Collects a request's events (per choice: text pieces, then done or error) into the OpenAI answer:
    one JSON object, or server-sent-event chunks."""

    def __init__(self, chat: bool, model_id: str, prompt_tokens: int, n: int):
        self.chat, self.model_id, self.prompt_tokens = chat, model_id, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.texts, self.reasons, self.counts = [""] * n, [None] * n, [0] * n
        self.error: str | None = None

    @property
    def open(self) -> bool:
        return self.error is None and None in self.reasons

    def take(self, event: tuple) -> tuple:
        index, kind, *rest = event
        if kind == "text":
            self.texts[index] += rest[0]
        elif kind == "done":
            self.reasons[index], self.counts[index] = rest
        else:
            self.error = rest[0]
        return event

    def usage(self) -> dict:
        done = sum(self.counts)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def whole(self) -> dict:
        if self.error:
            raise APIError(500, self.error, kind="server_error")
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(self.texts, self.reasons))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(self.texts, self.reasons))]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model_id, "choices": choices, "usage": self.usage()}

    def chunk(self, choices: list[dict], **extra) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model_id, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def choice(self, index: int, text: str | None, reason: str | None = None, first: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    async def stream(self, events: asyncio.Queue, rows: list[Row], include_usage: bool):
        try:
            if self.chat:  # the role first, as OpenAI does
                yield self.chunk([self.choice(i, "", first=True) for i in range(len(rows))])
            while self.open:
                index, kind, *rest = self.take(await events.get())
                if kind == "text":
                    yield self.chunk([self.choice(index, rest[0])])
                elif kind == "done":
                    yield self.chunk([self.choice(index, None, rest[0])])
            if self.error:
                yield f"data: {json.dumps(APIError(500, self.error, kind='server_error').body())}\n\n"
            elif include_usage:
                yield self.chunk([], usage=self.usage())
            yield "data: [DONE]\n\n"
        finally:  # also when the client left (the response task is cancelled): free the rows
            for row in rows:
                row.cancelled = not row.finished


def serve(generator, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C; port 0 picks a free port (printed)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"serving {generator.run_dir} ({'text' if generator.text_mode else 'chat'}) at {url}: chat page at /, "
          f"OpenAI API at {url}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(make_app(generator), log_level="warning")).run(sockets=[sock])
