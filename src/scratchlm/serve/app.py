"""The OpenAI-compatible HTTP server (FastAPI) and its web chat page, over the batching engine.

    app = create_app(model, tokenizer, ServerConfig(model_name="demo", api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `scratchlm serve` does

    GET  /v1/models             the one model served
    POST /v1/completions        prompt -> continuation; an encoder-decoder translates the prompt
    POST /v1/chat/completions   messages -> reply (the model's chat template, else plain text;
                                an encoder-decoder translates the last user message)
    GET  /health                {"status": "ok", ...engine counters}
    GET  /                      the chat page (/static/app.js, /static/style.css)

Requests and responses follow the OpenAI API: `max_tokens`, `temperature`, `top_p`, `n`,
`stop`, `seed`, `stream` (server-sent events ending in `data: [DONE]`, with
`stream_options.include_usage`), `usage` counts; plus vLLM's extra `top_k`, `min_p`,
`repetition_penalty` and `ignore_eos`. Log-probabilities, streamed or not: `logprobs` (0-20
alternatives) and `echo` for completions, `max_tokens: 0` scoring the prompt only (what
lm-eval's `local-completions` sends); `logprobs` + `top_logprobs` for chat. They are the
model's own (before temperature and the other filters), computed by eval/score.py for a
prompt and by the engine for what it samples. Errors are `{"error": {"message", "type", "param",
"code"}}` with 400 (bad request), 401 (bad or missing API key), 403 (a web page's origin
not allowed), 404 (unknown model or path), 413 (body too large), 415 (not application/json)
and 503 (every slot busy and the waiting line full; retry later).

Safety: the API key is compared in constant time (hmac.compare_digest); bodies, prompts,
max_tokens and JSON nesting are bounded; without a key, only JSON bodies, this server's own
Host names and same-origin (or --cors-origin) pages are served (serve/guard.py); the page's
three files are read once at start-up, and no endpoint opens a file a request names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm.errors import ScratchLMError
from scratchlm.eval.score import Score, score_ids
from scratchlm.generate.decode import GenerationConfig, max_new_tokens_for
from scratchlm.generate.translate import LengthLimit
from scratchlm.serve.batching import Busy, Engine, Event, Job
from scratchlm.serve.guard import MAX_JSON_DEPTH, Guard, error_body, host_names, is_json, json_depth
from scratchlm.serve.logprobs import chat_logprobs, completion_logprobs, sampled_logprobs
from scratchlm.tokenizers import Tokenizer
from scratchlm.tokenizers.chat import chat_prompt

DISCONNECT_CHECK_S = 0.1  # how often a non-streamed request checks that its client is still there
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
# Arguments accepted and ignored, and those accepted only at their "off" value.
IGNORED = {"user", "metadata", "store", "service_tier", "stream_options"}
OFF = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
       "suffix": ("",),
       "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
       "function_call": ("none", "auto"), "parallel_tool_calls": (True, False),
       "response_format": ({"type": "text"},)}
SAMPLING = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed",
            "top_k", "min_p", "repetition_penalty", "ignore_eos"}
COMPLETION_ARGS = SAMPLING | {"prompt", "best_of", "logprobs", "echo"}
CHAT_ARGS = SAMPLING | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"}
MAX_LOGPROBS = 20  # alternatives a token (vLLM's default bound; OpenAI's is 5 and 20)


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_n: int = 8
    chat_template: str | None = None  # a Jinja template; None: plain continuation
    # Without an API key (serve/guard.py): the address listened on, extra Host names, and
    # the web origins allowed to call the API (CORS).
    host: str = "127.0.0.1"
    port: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def _error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(error_body(e.message, type=e.type, param=e.param, code=e.code),
                        status_code=e.status, headers=headers)


# ----------------------------------------------------------------------------- parameters
def _number(d: dict, name: str, default, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False):
    v = d.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}", param=name)
    if v < lo or v > hi or (lo_open and v == lo):
        low = f"({lo:g}" if lo_open else f"[{lo:g}"
        raise ApiError(400, f"'{name}' must be in {low}, {hi:g}], got {v}", param=name)
    return v


def _check_arguments(d: dict, allowed: set[str]) -> None:
    for name, value in d.items():
        if name in allowed or name in IGNORED or value is None:
            continue
        if name in OFF:
            if value not in OFF[name]:
                raise ApiError(400, f"'{name}' is not supported by this server", param=name)
            continue
        raise ApiError(400, f"Unrecognized request argument supplied: {name}", param=name)


def _stop(d: dict) -> list[str]:
    stop = d.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > 4
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them",
                       param="stop")
    return stops


def _sampling(d: dict, cfg: ServerConfig, *, default_max_tokens: int, max_rows: int,
              min_tokens: int = 1) -> dict:
    """The GenerationConfig fields a request asks for (max_new_tokens before capping; 0 only
    where min_tokens allows it: an echoed prompt scored and nothing generated)."""
    name = "max_completion_tokens" if d.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(d, name, default_max_tokens, min_tokens, cfg.max_tokens, integer=True)
    n = _number(d, "n", 1, 1, min(cfg.max_n, max_rows), integer=True)
    best_of = d.get("best_of")
    if best_of is not None and best_of != n:
        raise ApiError(400, "'best_of' is not supported by this server (only best_of = n)",
                       param="best_of")
    top_k = _number(d, "top_k", 0, -1, 1 << 31, integer=True)
    seed = _number(d, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True)
    for flag in ("stream", "ignore_eos"):
        if d.get(flag) is not None and not isinstance(d[flag], bool):
            raise ApiError(400, f"'{flag}' must be true or false", param=flag)
    return {
        "max_new_tokens": max_tokens,
        "temperature": float(_number(d, "temperature", 1.0, 0, 2)),
        "top_p": float(_number(d, "top_p", 1.0, 0, 1, lo_open=True)),
        "top_k": max(0, top_k),  # vLLM's -1 is "off", as our 0
        "min_p": float(_number(d, "min_p", 0.0, 0, 1)),
        "repetition_penalty": float(_number(d, "repetition_penalty", 1.0, 0, 10, lo_open=True)),
        "stop": _stop(d),
        "seed": seed,
        "num_samples": n,
        "ignore_eos": bool(d.get("ignore_eos", False)),
    }


def _logprob_options(d: dict, *, chat: bool) -> tuple[int | None, bool]:
    """(k, echo): report log-probabilities with k alternatives a token (None: not asked),
    and whether a completion echoes its prompt (with the prompt's log-probabilities)."""
    if chat:
        on = d.get("logprobs")
        if on is not None and not isinstance(on, bool):
            raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
        top = _number(d, "top_logprobs", None, 0, MAX_LOGPROBS, integer=True)
        if top and not on:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        k, echo = ((top or 0) if on else None), False
    else:
        k = None if d.get("logprobs") is False else _number(d, "logprobs", None, 0, MAX_LOGPROBS,
                                                             integer=True)
        echo = d.get("echo", False)
        if echo is not None and not isinstance(echo, bool):
            raise ApiError(400, "'echo' must be true or false", param="echo")
    return k, bool(echo)


def _message_text(m, i: int) -> dict[str, str]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise ApiError(400, f"messages[{i}] must be an object with a 'role'", param="messages")
    role = "system" if m["role"] == "developer" else m["role"]
    if role not in ("system", "user", "assistant"):
        raise ApiError(400, f"messages[{i}] has role {m['role']!r}; this server takes system, "
                       "developer, user and assistant messages", param="messages")
    content = m.get("content")
    if isinstance(content, list):  # content parts: only text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                           param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
    return {"role": role, "content": content}


# ----------------------------------------------------------------------------- the app
class _Server:
    """What the handlers share: model, tokenizer, engine, limits."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, cfg: ServerConfig,
                 engine: Engine) -> None:
        self.model, self.tok, self.cfg, self.engine = model, tokenizer, cfg, engine
        self.encoder_decoder = engine.encoder_decoder
        self.context = model.max_context  # None: unlimited (RNN)
        self.created = int(time.time())

    def authorize(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), self.cfg.api_key.encode())
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_request(self, request: Request, *, chat: bool) -> tuple[dict, int | None, bool]:
        """A (chat) completion request, authorized, read and its arguments checked:
        (body, logprobs k or None, echo)."""
        self.authorize(request)
        d = await self.read_json(request)
        _check_arguments(d, CHAT_ARGS if chat else COMPLETION_ARGS)
        return d, *_logprob_options(d, chat=chat)

    async def read_json(self, request: Request) -> dict:
        if self.cfg.api_key is None and not is_json(request.headers.get("content-type")):
            raise ApiError(415, "the request body must be sent as 'Content-Type: application/json'",
                           code="unsupported_media_type")
        limit = self.cfg.max_body_bytes
        too_large = ApiError(413, f"the request body is larger than this server's limit of "
                             f"{limit} bytes", code="request_too_large")
        length = request.headers.get("content-length")
        body, seen = bytearray(), 0
        # Read (and drop) the rest of an oversize body, up to a bound, so the client gets the
        # 413 instead of a reset connection.
        async for chunk in request.stream():
            seen += len(chunk)
            if seen <= limit:
                body += chunk
            elif seen > 16 * limit:
                break
        if seen > limit or (length is not None and length.isdigit() and int(length) > limit):
            raise too_large
        if json_depth(body) > MAX_JSON_DEPTH:
            raise ApiError(400, f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} "
                           "deep", code="too_deep")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required", param="model")
        if model != self.cfg.model_name:
            raise ApiError(404, f"The model '{model}' does not exist (this server has "
                           f"'{self.cfg.model_name}')", param="model", code="model_not_found")
        return data

    # -- prompts -> jobs
    def decoder_job(self, ids: list[int], fields: dict, param: str) -> Job:
        p = len(ids)
        limit = self.cfg.max_prompt_tokens
        if limit is not None and p > limit:
            raise ApiError(400, f"the {param} is {p} tokens; this server takes at most {limit}",
                           param=param, code="context_length_exceeded")
        if self.context is not None and p >= self.context:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; "
                           f"the {param} is {p} tokens. Shorten it.", param=param,
                           code="context_length_exceeded")
        fields = {**fields, "max_new_tokens": max_new_tokens_for(self.model, p, fields["max_new_tokens"])}
        return Job(config=GenerationConfig(**fields), emit=_no_emit, prompt=ids)

    def translation_job(self, source_ids: list[int], fields: dict, param: str) -> Job:
        src = [*source_ids, self.tok.eos_id]
        block = self.model.config.block_size
        if len(src) > block:
            raise ApiError(400, f"the {param} is {len(src)} tokens (with <eos>); the model takes "
                           f"sources of at most {block}", param=param, code="context_length_exceeded")
        wanted = min(fields["max_new_tokens"], LengthLimit().of(len(src)))
        fields = {**fields, "max_new_tokens": max_new_tokens_for(self.model, 1, wanted)}
        return Job(config=GenerationConfig(**fields), emit=_no_emit, source=src)

    def completion_prompts(self, d: dict, n: int) -> list[tuple[str | None, list[int]]]:
        """The prompts of a completion request: (text or None for token ids, token ids)."""
        prompt = d.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
            prompts = [prompt]
        elif (isinstance(prompt, list) and prompt
              and all(isinstance(p, list) and p and all(_is_id(t) for t in p) for p in prompt)):
            prompts = prompt
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids",
                           param="prompt")
        if len(prompts) * n > self.engine.max_rows:
            raise ApiError(400, f"{len(prompts)} prompts x n={n} choices is "
                           f"more than this server's {self.engine.max_rows} slots", param="prompt")
        out = []
        for p in prompts:
            ids = self.tok.encode(p) if isinstance(p, str) else list(p)
            if any(t >= self.model.config.vocab_size for t in ids):
                raise ApiError(400, "a token id in 'prompt' is outside the vocabulary", param="prompt")
            if self.encoder_decoder and not ids:
                raise ApiError(400, "the prompt (the source to translate) is empty", param="prompt")
            # An empty prompt starts a new document, as in `generate`.
            out.append((p if isinstance(p, str) else None, ids or [self.tok.eos_id]))
        return out

    def completion_jobs(self, prompts: list[list[int]], fields: dict) -> list[Job]:
        if self.encoder_decoder:
            return [self.translation_job(ids, fields, "prompt") for ids in prompts]
        return [self.decoder_job(ids, fields, "prompt") for ids in prompts]

    async def score_prompts(self, prompts: list[list[int]], k: int | None) -> list[Score]:
        """The prompts' token log-probabilities (each token after the first), computed on the
        engine thread between decoding steps."""
        if self.encoder_decoder:
            raise ApiError(400, "'echo' scores a prompt under a language model; this is an "
                           "encoder-decoder", param="echo")
        limit = self.cfg.max_prompt_tokens
        for ids in prompts:
            if (limit is not None and len(ids) > limit) or (self.context and len(ids) > self.context):
                raise ApiError(400, f"the prompt is {len(ids)} tokens; this server scores at most "
                               f"{min(x for x in (limit, self.context) if x)}", param="prompt",
                               code="context_length_exceeded")
        try:
            future = self.engine.call(lambda: score_ids(self.model, prompts, [1] * len(prompts),
                                                        top_k=k or 0))
        except Busy as e:
            raise ApiError(503, f"The server is busy ({e}); retry later.", type="server_error",
                           code="server_busy") from None
        return await asyncio.wrap_future(future)

    def chat_job(self, d: dict) -> tuple[Job, int]:
        messages = d.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param="messages")
        msgs = [_message_text(m, i) for i, m in enumerate(messages)]
        if self.encoder_decoder:  # a translation model translates the last user message
            users = [m["content"] for m in msgs if m["role"] == "user"]
            ids = self.tok.encode(users[-1]) if users else []
            if not ids:
                raise ApiError(400, "no user message to translate", param="messages")
            fields = _sampling(d, self.cfg, default_max_tokens=self.cfg.max_tokens,
                               max_rows=self.engine.max_rows)
            return self.translation_job(ids, fields, "messages"), len(ids) + 1
        text = chat_prompt(msgs, tokenizer=self.tok, template=self.cfg.chat_template)
        ids = self.tok.encode(text) or [self.tok.eos_id]
        room = self.cfg.max_tokens if self.context is None else max(1, self.context - len(ids))
        fields = _sampling(d, self.cfg, default_max_tokens=min(self.cfg.max_tokens, room),
                           max_rows=self.engine.max_rows)
        return self.decoder_job(ids, fields, "messages"), len(ids)

    # -- running jobs
    def submit(self, jobs: list[Job]) -> asyncio.Queue:
        """Submit jobs; their events arrive on the returned queue as (job index, Event)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(k: int):
            def emit(ev: Event) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone (shutting down)
                    loop.call_soon_threadsafe(queue.put_nowait, (k, ev))
            return emit

        for k, job in enumerate(jobs):
            job.emit = sink(k)
        submitted = []
        try:
            for job in jobs:
                self.engine.submit(job)
                submitted.append(job)
        except (Busy, ScratchLMError) as e:
            for job in submitted:
                self.engine.cancel(job)
            if isinstance(e, Busy):
                raise ApiError(503, f"The server is busy ({e}); retry later.", type="server_error",
                               code="server_busy") from None
            raise
        return queue

    async def collect(self, request: Request, jobs: list[Job],
                      queue: asyncio.Queue) -> tuple[list, int] | None:
        """Wait for every choice: ([(text, finish_reason, logprobs)], completion tokens), or
        None if the client went away (its jobs are cancelled, which frees their slots)."""
        n = jobs[0].n
        texts: list[list[str]] = [[] for _ in range(len(jobs) * n)]
        reasons: list[str | None] = [None] * len(texts)
        logprobs: list[list | None] = [None] * len(texts)
        tokens, left = 0, len(texts)
        check = time.monotonic()
        try:
            while left:
                # Ten times a second, whether tokens come or not: a client that went away frees
                # its slot within 0.1 s (a short request may finish first; that is fine too).
                if time.monotonic() >= check:
                    if await request.is_disconnected():
                        return None
                    check = time.monotonic() + DISCONNECT_CHECK_S
                try:
                    k, ev = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_CHECK_S)
                except TimeoutError:
                    continue
                i = k * n + ev.row
                if ev.kind == "text":
                    texts[i].append(ev.text)
                elif ev.kind == "finish":
                    reasons[i], tokens, left = ev.finish_reason, tokens + ev.tokens, left - 1
                    logprobs[i] = ev.logprobs
                else:
                    raise ApiError(500, ev.text, type="server_error")
        finally:
            if left:
                for job in jobs:
                    self.engine.cancel(job)
        return [("".join(t), r, lp) for t, r, lp in zip(texts, reasons, logprobs, strict=True)], tokens

    async def stream(self, jobs: list[Job], queue: asyncio.Queue, *, chat: bool, rid: str, n: int,
                     choices: int, prompt_tokens: int, include_usage: bool, k: int | None = None,
                     echoes: list | None = None):
        """Server-sent events: a completion's echoed prompts first (`echoes`: (text or None,
        ids, Score) a prompt), then one chunk per piece of text, carrying (with `k`) the
        log-probabilities of the tokens sampled since the choice's previous chunk; one per
        finished choice, the usage (if asked) and `data: [DONE]`. Without jobs (max_tokens
        0) every choice ends after its prompt. Leaving early (client gone) cancels the jobs."""
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.cfg.model_name}

        def chunk(i: int, text: str | None, reason: str | None = None, role: bool = False,
                  logprobs: dict | None = None) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if role
                         else {} if text is None else {"content": text})
                choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            else:
                choice = {"index": i, "text": text or "", "logprobs": logprobs,
                          "finish_reason": reason}
            return f"data: {json.dumps({**base, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        text: dict[int, str] = {}  # a choice's text not sent yet
        pending: dict[int, list] = {}  # (token, logprob, top) not sent yet
        received = [0] * choices  # (token, logprob, top) that came with "text" events
        sent: list[list[int]] = [[] for _ in range(choices)]  # the tokens sent (offsets)
        offset = [0] * choices  # characters before the first sampled token (an echoed prompt)

        def listed(i: int, entries: list) -> dict:  # a completion chunk's logprobs lists
            lists = sampled_logprobs(self.tok, entries, before=sent[i], base=offset[i])
            sent[i] += [t for t, _, _ in entries]
            return lists

        def piece(i: int) -> str | None:
            """Choice i's chunk of pending text and log-probabilities, if there is any."""
            t, entries = text.pop(i, None), pending.pop(i, [])
            if k is None or (chat and t is None and all(e[0] == self.tok.eos_id for e in entries)):
                return None if t is None else chunk(i, t)
            if not chat and t is None and not entries:
                return None
            return chunk(i, t or "", logprobs=chat_logprobs(self.tok, entries) if chat
                         else listed(i, entries))

        def ended(i: int, reason: str | None) -> str:
            return chunk(i, None, reason, logprobs=None if chat or k is None else listed(i, []))

        left, tokens = (choices if jobs else 0), 0
        try:
            first = [chunk(i, None, role=True) for i in range(choices)] if chat else []
            for i in range(choices if echoes else 0):
                shown, lists = completion_logprobs(self.tok, "", None, echoed=echoes[i // n])
                offset[i] = len(shown)
                first.append(chunk(i, shown, logprobs=lists if k is not None else None))
            if not jobs:
                first += [ended(i, "length") for i in range(choices)]
            if first:
                yield "".join(first)
            failed = False
            while left and not failed:
                # Everything that is ready goes out in one write, a choice's consecutive
                # pieces in one chunk: one token a chunk when the server is idle, fewer and
                # larger chunks when it is busy (each chunk costs the event loop time).
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                out: list[str] = []
                for j, ev in events:
                    i = j * n + ev.row
                    if ev.kind == "text":
                        text[i] = text.get(i, "") + ev.text
                        if k is not None:
                            pending.setdefault(i, []).extend(ev.logprobs or [])
                            received[i] += len(ev.logprobs or [])
                        continue
                    if ev.kind == "finish" and k is not None:  # tokens no text came with
                        pending.setdefault(i, []).extend((ev.logprobs or [])[received[i]:])
                    if (c := piece(i)) is not None:
                        out.append(c)
                    if ev.kind == "finish":
                        left, tokens = left - 1, tokens + ev.tokens
                        out.append(ended(i, ev.finish_reason))
                    else:
                        out.append(f"data: {json.dumps(error_body(ev.text, type='server_error'))}\n\n")
                        failed = True
                        break
                out += [c for i in dict.fromkeys([*text, *pending]) if (c := piece(i)) is not None]
                yield "".join(out)
            if include_usage and not left:
                usage = _usage(prompt_tokens, tokens)
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if left:
                for job in jobs:
                    self.engine.cancel(job)


def _no_emit(event: Event) -> None:  # replaced by _Server.submit
    raise RuntimeError("job submitted without an event sink")


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("scratchlm.serve") / "static"
    return {path: (root.joinpath(name).read_bytes(), media) for path, (name, media) in STATIC.items()}


def create_app(model: torch.nn.Module, tokenizer: Tokenizer, config: ServerConfig, *,
               engine: Engine | None = None) -> FastAPI:
    """The FastAPI app; it starts the engine (its own, by default) when the server starts."""
    engine = engine or Engine(model, tokenizer)
    srv = _Server(model, tokenizer, config, engine)
    files = _static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = srv
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    hosts = None if config.api_key else host_names(config.host, config.allowed_hosts)
    app.add_middleware(Guard, hosts=hosts, port=config.port, origins=set(config.cors_origins))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(ScratchLMError)
    async def _user_error(request: Request, e: ScratchLMError):
        return _error_response(ApiError(400, str(e)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found" if e.status_code == 404 else None
        return _error_response(ApiError(e.status_code, str(e.detail), code=kind))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, **engine.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        srv.authorize(request)
        return {"object": "list", "data": [_model_card(srv)]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request):
        srv.authorize(request)
        if name != config.model_name:
            raise ApiError(404, f"The model '{name}' does not exist", param="model",
                           code="model_not_found")
        return _model_card(srv)

    @app.post("/v1/completions")
    async def completions(request: Request):
        d, k, echo = await srv.read_request(request, chat=False)
        fields = _sampling(d, config, default_max_tokens=min(16, config.max_tokens),
                           max_rows=engine.max_rows, min_tokens=0 if echo else 1)
        prompts = srv.completion_prompts(d, fields["num_samples"])
        ids = [p for _, p in prompts]
        scored = await srv.score_prompts(ids, k) if echo else None
        # max_tokens 0 (with echo): no jobs, the prompts' log-probabilities only
        jobs = srv.completion_jobs(ids, fields) if fields["max_new_tokens"] else []
        prompt_tokens = (sum(len(j.prompt) or len(j.source or []) for j in jobs) if jobs
                         else sum(map(len, ids)))
        return await _respond(srv, request, d, jobs, chat=False, n=fields["num_samples"],
                              choices=len(prompts) * fields["num_samples"],
                              prompt_tokens=prompt_tokens, k=k, prompts=prompts if echo else None,
                              scored=scored)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        d, k, _ = await srv.read_request(request, chat=True)
        job, prompt_tokens = srv.chat_job(d)
        return await _respond(srv, request, d, [job], chat=True, n=job.n, choices=job.n,
                              prompt_tokens=prompt_tokens, k=k)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}",
                                        type="server_error"))

    for path, (body, media) in files.items():
        app.add_api_route(path, _page(body, media), methods=["GET"], include_in_schema=False)
    return app


def _page(body: bytes, media: str):
    async def page():
        # The page may load only its own files: no CDN, no inline script.
        return Response(body, media_type=media, headers={
            "Content-Security-Policy": "default-src 'self'", "X-Content-Type-Options": "nosniff"})
    return page


def _model_card(srv: _Server) -> dict:
    cfg = srv.model.config
    return {"id": srv.cfg.model_name, "object": "model", "created": srv.created,
            "owned_by": "scratchlm",
            "scratchlm": {"family": cfg.family, "context": srv.context,
                          "encoder_decoder": srv.encoder_decoder,
                          "chat_template": srv.cfg.chat_template is not None}}


async def _respond(srv: _Server, request: Request, d: dict, jobs: list[Job], *, chat: bool,
                   n: int, choices: int, prompt_tokens: int, k: int | None = None,
                   prompts: list | None = None, scored: list[Score] | None = None):
    """Run the jobs (n choices each; none: max_tokens 0) and answer, streamed or whole;
    `prompts` and `scored` when a completion echoes its prompts."""
    for job in jobs:
        job.logprobs = k
    queue = srv.submit(jobs)
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    if d.get("stream"):
        options = d.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        echoes = None if prompts is None else [(*p, s) for p, s in zip(prompts, scored, strict=True)]
        events = srv.stream(jobs, queue, chat=chat, rid=rid, n=n, choices=choices,
                            prompt_tokens=prompt_tokens, include_usage=include_usage, k=k,
                            echoes=echoes)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    if not jobs:  # the prompts' log-probabilities only
        results, tokens = [("", "length", [] if k is not None else None)] * choices, 0
    else:
        collected = await srv.collect(request, jobs, queue)
        if collected is None:
            return Response(status_code=499)  # nobody is listening (nginx's "client closed")
        results, tokens = collected
    return _response(srv, rid, results, chat=chat, k=k, prompts=prompts, scored=scored,
                     usage=_usage(prompt_tokens, tokens))


def _response(srv: _Server, rid: str, choices: list, *, chat: bool, k: int | None,
              prompts: list | None, scored: list[Score] | None, usage: dict) -> dict:
    """The whole (not streamed) response; `prompts` and `scored` when the prompts are echoed."""
    if chat:
        out = [{"index": i, "message": {"role": "assistant", "content": text},
                "logprobs": None if k is None else chat_logprobs(srv.tok, lps),
                "finish_reason": reason} for i, (text, reason, lps) in enumerate(choices)]
    else:
        n = len(choices) // (len(prompts) if prompts else 1)
        out = []
        for i, (text, reason, lps) in enumerate(choices):
            echoed = None if prompts is None else (*prompts[i // n], scored and scored[i // n])
            full, logprobs = completion_logprobs(srv.tok, text, lps, echoed=echoed)
            out.append({"index": i, "text": full, "logprobs": logprobs if k is not None else None,
                        "finish_reason": reason})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": srv.cfg.model_name, "choices": out,
            "usage": usage}
