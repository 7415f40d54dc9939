"""Step-level batching with lockstep positions: many generation requests decoded together on
one engine thread (rows join and leave between steps, where the cache allows it), over
the one decoder protocol (`init_cache`, `model(tokens, cache=...)`, `cache.reorder(index)`),
with the decode loop's own parts: each row is a `decode.Row` (its tokens, its streamed text
and the one rule that ends it) and each job's rows are sampled by `decode.pick`, as
`generate` does; the engine only schedules rows (admit, join, step, cancel, stream) and moves
decoding state through the `DecodeState` contract (models/cache.py).

    engine = Engine(model, tokenizer, max_rows=32)
    engine.start()
    engine.submit(Job(prompt=ids, config=GenerationConfig(...), emit=on_event))  # any thread
    engine.cancel(job)                                                          # any thread
    engine.call(fn)    # a Future: fn() run on the engine thread between steps (scoring)
    engine.stats()     # counters, as GET /health shows them

A job is one prompt with n choices: n rows. Rows decode in batches that share a cache. Each
engine iteration admits waiting jobs, then feeds every batch one token a row and runs the
sampler once per job on that job's rows, with the job's own settings and seeded generator.
Rows leave a batch (`reorder`) as soon as they finish or their client goes away, which
frees their slot for the next waiting job.

How a Transformer row joins a running batch of length L (the KV cache has one length for all
its rows): a prompt no longer than L is left-padded to it, so its last prompt token lines up
with the batch's next position; it is prefilled alone (the padding positions are masked and
never computed; its positions count from its first token, `KVCache.set_left_padding`) and
appended to the batch. A longer prompt is prefilled with its first L tokens, appended, and fed
the rest one token a step (its logits are ignored until its prompt is in; at most
`max_catch_up` tokens). Requests that arrive together start a new batch at the length of
their shortest prompt; a request that fits no running batch (a padded join needs the batch's
length + 1 + max_tokens positions within the context) starts a new one (at most
`max_batches` run at a time, stepped in turn) or waits for one to end. RNN state has no positions, so RNN rows join the running batch at any time.
Encoder-decoder rows start from <bos> with their own encoded source; they are batched with
the requests admitted at the same time (sources padded and masked, as `translate` does).
docs/serving.md discusses how this plays out under load.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from scratchlm.data.seq2seq import collate
from scratchlm.errors import ScratchLMError
from scratchlm.generate.decode import GenerationConfig, Row, init_cache, pick
from scratchlm.models.cache import RNNState
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers import Tokenizer


class Busy(Exception):
    """No free slot and the waiting line is full: try again later."""


@dataclass
class Event:
    """What the engine tells a job's owner, from the engine thread."""

    kind: str  # "text" | "finish" | "error"
    row: int = 0  # the choice (0 .. n-1)
    text: str = ""  # "text": newly final text; "error": the message
    finish_reason: str | None = None  # "finish": "stop" (eos or a stop string) or "length"
    tokens: int = 0  # "finish": tokens the row generated (an eos included)
    ids: list[int] = field(default_factory=list)  # "finish": the generated ids (no eos)
    # For a job with `logprobs`, (token, logprob, top [(id, logprob)]) a sampled token:
    # "finish": every sampled token, an <eos> included; "text": those sampled since the row's
    # previous "text" event (a token whose text is held back, e.g. for a stop string, comes
    # with the text that follows it; the ones no text followed are the finish list's rest)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None


@dataclass(eq=False)
class Job:
    """One prompt and `config.num_samples` choices. `prompt`: token ids for a decoder-only
    model; for an encoder-decoder, `source` (ids ending in <eos>) and no prompt.
    `config.max_new_tokens` must already fit the model's context. `emit` is called on the
    engine thread and must not block. `logprobs` (k >= 0): report each sampled token's
    log-probability under the model (before temperature and the other filters) and the k
    likeliest tokens there."""

    config: GenerationConfig
    emit: Callable[[Event], None]
    prompt: list[int] = field(default_factory=list)
    source: list[int] | None = None
    cancelled: bool = False
    generator: torch.Generator | None = None  # set when admitted (seeded jobs)
    finished_rows: int = 0
    logprobs: int | None = None

    @property
    def n(self) -> int:
        return self.config.num_samples


class _Row:
    """One choice of a job in a batch: its `decode.Row` and how many of its tokens (prompt,
    then what was sampled) are in the cache."""

    def __init__(self, job: Job, index: int, seq: list[int], fed: int, *, tokenizer: Tokenizer,
                 vocab_size: int, device: torch.device) -> None:
        self.job, self.index, self.fed = job, index, fed
        self.row = Row(seq, config=job.config, eos_id=tokenizer.eos_id, vocab_size=vocab_size,
                       device=device, tokenizer=tokenizer, on_text=self._text)
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.sent = 0  # of self.logprobs, those already sent with a "text" event

    def _text(self, text: str) -> None:
        new = None
        if self.job.logprobs is not None:
            new, self.sent = self.logprobs[self.sent :], len(self.logprobs)
        self.job.emit(Event("text", self.index, text, logprobs=new))

    @property
    def seq(self) -> list[int]:
        return self.row.seq

    @property
    def done(self) -> bool:
        return self.row.done


class _Batch:
    """Rows sharing one cache. `length`: positions in the cache (the same for every row of a
    Transformer batch); `joinable`: whether rows may be added while it runs."""

    def __init__(self, cache, rows: list[_Row], length: int, max_len: int, joinable: bool) -> None:
        self.cache, self.rows, self.length = cache, rows, length
        self.max_len, self.joinable = max_len, joinable


class Engine:
    """The batching engine. `max_rows`: rows decoding at once (slots); `max_waiting`: jobs that
    may wait for a slot before `submit` raises Busy; `max_batches`: batches stepped in turn;
    `max_catch_up`: most prompt tokens a row may be fed one a step to join a batch."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Tokenizer, *, max_rows: int = 32,
        max_waiting: int = 64, max_batches: int = 2, max_catch_up: int = 64,
    ) -> None:
        if max_rows < 1 or max_batches < 1 or min(max_waiting, max_catch_up) < 0:
            raise ScratchLMError("max_rows and max_batches must be >= 1, max_waiting and "
                                 "max_catch_up >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self.max_batches, self.max_catch_up = max_batches, max_catch_up
        self.device = next(model.parameters()).device
        self.encoder_decoder = is_encoder_decoder(model)
        self.position_free = (not self.encoder_decoder
                              and isinstance(init_cache(model, batch_size=1, max_len=1), RNNState))
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._rows_in_use = 0  # rows admitted and not yet dropped (under _cv)
        self._batches: list[_Batch] = []  # the engine thread's own
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stats = {"requests": 0, "finished": 0, "cancelled": 0, "rejected": 0,
                       "tokens": 0, "steps": 0, "row_steps": 0, "max_rows_in_step": 0}

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scratchlm-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, job: Job) -> None:
        """Queue a job; raises Busy when it does not fit now and the waiting line is full."""
        if job.n > self.max_rows:
            raise ScratchLMError(f"n={job.n} is more than the server's {self.max_rows} slots")
        if self.encoder_decoder != (job.source is not None):
            raise ScratchLMError("an encoder-decoder job needs a source, a decoder-only job a prompt")
        if not self.encoder_decoder and not job.prompt:
            raise ScratchLMError("the prompt is empty")
        with self._cv:
            if self._closing:
                raise Busy("the server is shutting down")
            free = self.max_rows - self._rows_in_use - sum(j.n for j in self._waiting)
            if job.n > free and len(self._waiting) >= self.max_waiting:
                self._stats["rejected"] += 1
                raise Busy("all slots are busy and the waiting line is full")
            self._waiting.append(job)
            self._stats["requests"] += 1
            self._cv.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn() on the engine thread before its next step (work that uses the model
        besides decoding, e.g. scoring a prompt, so the two never run at once); its result or
        exception arrives on the returned Future. Raises Busy as submit does."""
        future: Future = Future()
        with self._cv:
            if self._closing:
                raise Busy("the server is shutting down")
            if len(self._calls) >= max(1, self.max_waiting):
                self._stats["rejected"] += 1
                raise Busy("too many scoring requests are waiting")
            self._calls.append((fn, future))
            self._cv.notify()
        return future

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away): its rows leave their batch at the next step."""
        with self._cv:
            if job.cancelled or job.finished_rows == job.n:
                return
            job.cancelled = True
            self._stats["cancelled"] += 1
            if job in self._waiting:
                self._waiting.remove(job)
            self._cv.notify()

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {**self._stats, "running_rows": self._rows_in_use,
                    "waiting": len(self._waiting), "batches": len(self._batches)}

    # ------------------------------------------------------------------ engine thread
    @torch.inference_mode()
    def step(self) -> None:
        """One iteration: admit waiting jobs, then feed every batch one token a row. The
        engine thread runs it in a loop; tests may call it directly instead of start()."""
        while True:
            with self._cv:
                if not self._calls:
                    break
                fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as e:  # the caller reports it
                    future.set_exception(e)
        self._admit()
        for batch in list(self._batches):
            self._guarded(self._step, batch, [r.job for r in batch.rows])
        self._batches = [b for b in self._batches if b.rows]

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._closing or self._waiting or self._batches or self._calls):
                    self._cv.wait()
                if self._closing:
                    break
            self.step()
        with self._cv:
            jobs = list(self._waiting) + [r.job for b in self._batches for r in b.rows]
            self._waiting.clear()
            calls, self._calls = list(self._calls), deque()
        for _, future in calls:
            future.cancel()
        for job in dict.fromkeys(jobs):
            job.emit(Event("error", text="the server is shutting down"))

    def _guarded(self, fn, batch_or_jobs, jobs: list[Job]) -> None:
        """Run fn; on an exception, fail the jobs it concerned (the others go on)."""
        try:
            fn(batch_or_jobs)
        except Exception as e:
            if not isinstance(e, ScratchLMError):
                traceback.print_exc(file=sys.stderr)
            message = str(e) if isinstance(e, ScratchLMError) else f"internal error: {e}"
            failed = set(jobs)
            placed = {r.job for b in self._batches for r in b.rows}
            with self._cv:  # admitted, but failed before it had rows in a batch
                self._rows_in_use -= sum(j.n for j in failed if j not in placed)
            for b in self._batches:
                if any(r.job in failed for r in b.rows):
                    failed.update(r.job for r in b.rows)  # its cache may be half-updated
                    self._release(b.rows)
                    b.rows = []
            for job in failed:
                job.emit(Event("error", text=message))

    def _release(self, rows: list[_Row]) -> None:
        with self._cv:
            self._rows_in_use -= len(rows)

    def _admit(self) -> None:
        """Move waiting jobs into batches, in arrival order: a job joins a running batch where
        the protocol allows it, else it starts a new batch with the other newcomers (while
        fewer than max_batches run), else it keeps waiting. Nobody overtakes a job that waits
        for free slots."""
        with self._cv:
            waiting = list(self._waiting)
            free = self.max_rows - self._rows_in_use
        joins: list[tuple[_Batch, Job]] = []
        new: list[Job] = []
        for job in waiting:
            if job.n > free:
                break
            target = self._joinable(job)
            if target is not None:
                joins.append((target, job))
            elif len(self._batches) < self.max_batches:
                new.append(job)
            else:
                continue
            free -= job.n
        groups = self._group(new)
        admitted = [j for _, j in joins] + [j for g in groups for j in g]
        if not admitted:
            return
        with self._cv:
            for job in admitted:
                if job in self._waiting:
                    self._waiting.remove(job)
            self._rows_in_use += sum(j.n for j in admitted)
        for job in admitted:
            if job.config.seed is not None:
                job.generator = torch.Generator(device=self.device).manual_seed(job.config.seed)
        for batch, job in joins:
            self._guarded(lambda j, b=batch: self._join(b, j), job, [job])
        for group in groups:
            self._guarded(self._start, group, group)

    def _joinable(self, job: Job) -> _Batch | None:
        if self.encoder_decoder:
            return None
        if self.position_free:
            return self._batches[0] if self._batches else None
        p = len(job.prompt) - 1  # the last prompt token is fed by a step, for its logits
        context = self.model.max_context
        # A batch no longer than the prompt (the newcomer catches up alone), or longer (the
        # newcomer is left-padded to it) if its rows still fit the context; the closest one.
        fits = [b for b in self._batches if b.joinable and (
            p - self.max_catch_up <= b.length <= p
            or (b.length > p and b.length + 1 + job.config.max_new_tokens <= context))]
        return min(fits, key=lambda b: (abs(b.length - p), b.length), default=None)

    def _group(self, jobs: list[Job]) -> list[list[Job]]:
        """Newcomers -> new batches: by prompt length, each batch starting at its shortest
        prompt and taking the prompts within max_catch_up of it (up to max_batches)."""
        if not jobs:
            return []
        room = self.max_batches - len(self._batches)
        if self.encoder_decoder or self.position_free:
            return [jobs]
        groups: list[list[Job]] = []
        for job in sorted(jobs, key=lambda j: len(j.prompt)):
            if groups and len(job.prompt) - len(groups[-1][0].prompt) <= self.max_catch_up:
                groups[-1].append(job)
            elif len(groups) < room:
                groups.append([job])
        return groups

    def _rows(self, job: Job, seq: list[int], fed: int) -> list[_Row]:
        return [_Row(job, i, seq, fed, tokenizer=self.tokenizer, device=self.device,
                     vocab_size=self.model.config.vocab_size) for i in range(job.n)]

    def _prefill(self, prompts: list[list[int]], repeats: list[int], max_len: int, *, pad: int = 0):
        """A cache holding `prompts` (equal lengths, possibly 0), each repeated for its rows;
        with `pad`, after that many padding positions, masked and never computed."""
        cache = init_cache(self.model, batch_size=len(prompts), max_len=max_len)
        if pad:  # start after the padding: masked, never computed, never read
            cache.set_left_padding(torch.full((len(prompts),), pad, device=self.device), skip=True)
        if prompts[0]:
            ids = torch.tensor(prompts, dtype=torch.long, device=self.device)  # (J, L)
            _, cache = self.model(ids, cache=cache, logits_to_keep=1)
        index = [j for j, n in enumerate(repeats) for _ in range(n)]
        if index != list(range(len(prompts))):
            cache = cache.reorder(torch.tensor(index, device=self.device))  # (sum(repeats), ...)
        return cache

    def _room(self, jobs: list[Job]) -> int:
        """Cache positions for these jobs' rows: prompt + new tokens, rounded up to 64 and
        capped at the model's context (a model with an 8k context does not get 8k positions
        a row for short requests). 0 for an RNN, whose state has no length."""
        context = self.model.max_context
        if not context:
            return 0
        need = max(len(j.prompt) + j.config.max_new_tokens for j in jobs)
        return min(context, -(-need // 64) * 64)

    def _join(self, batch: _Batch, job: Job) -> None:
        p = len(job.prompt) - 1
        if self.position_free:
            cache = self._prefill([job.prompt[:p]], [job.n], batch.max_len)
            fed = p
        else:
            room = max(self._room([job]), batch.length + 1 + job.config.max_new_tokens)
            if room > batch.max_len:  # a joiner needs more positions than the batch has
                batch.max_len = min(room, self.model.max_context)
                batch.cache.grow(batch.max_len)
            if batch.length > p:  # shorter: left-padded to the batch's length
                cache = self._prefill([job.prompt[:p]], [job.n], batch.max_len, pad=batch.length - p)
                fed = p
            else:  # longer: prefilled to the batch's length, then catches up
                cache = self._prefill([job.prompt[: batch.length]], [job.n], batch.max_len)
                fed = batch.length
        batch.cache = batch.cache.append_rows(cache)
        batch.rows += self._rows(job, job.prompt, fed)

    def _start(self, jobs: list[Job]) -> None:
        if self.encoder_decoder:
            return self._start_encoder_decoder(jobs)
        fed = min(len(j.prompt) for j in jobs) - 1
        max_len = self._room(jobs)
        cache = self._prefill([j.prompt[:fed] for j in jobs], [j.n for j in jobs], max_len)
        rows = [r for j in jobs for r in self._rows(j, j.prompt, fed)]
        self._batches.append(_Batch(cache, rows, fed, max_len, joinable=True))

    def _start_encoder_decoder(self, jobs: list[Job]) -> None:
        # The one seq2seq batch convention (data/seq2seq.py), which adds the <|eos|> a source ends in.
        batch = collate([j.source[:-1] for j in jobs], tokenizer=self.tokenizer)
        memory = self.model.encode(batch["src_ids"].to(self.device), batch["src_mask"].to(self.device))
        index = torch.tensor([i for i, j in enumerate(jobs) for _ in range(j.n)], device=self.device)
        memory = memory.reorder(index)  # one source row per choice
        max_len = 1 + max(j.config.max_new_tokens for j in jobs)
        cache = init_cache(self.model, batch_size=len(index), max_len=max_len, memory=memory)
        rows = [r for j in jobs for r in self._rows(j, [self.tokenizer.bos_id], 0)]
        self._batches.append(_Batch(cache, rows, 0, max_len, joinable=False))

    def _step(self, batch: _Batch) -> None:
        self._drop(batch, [r for r in batch.rows if r.job.cancelled])
        if not batch.rows:
            return
        rows = batch.rows
        tokens = torch.tensor([[r.seq[r.fed]] for r in rows], dtype=torch.long, device=self.device)
        logits, batch.cache = self.model(tokens, cache=batch.cache)  # (B, 1, V)
        logits = logits[:, -1]  # (B, V)
        batch.length += 1
        ready: dict[Job, list[int]] = {}
        for i, r in enumerate(rows):
            r.fed += 1
            if r.fed == len(r.seq):  # its prompt is in: these logits are for a new token
                ready.setdefault(r.job, []).append(i)
        for job, idx in ready.items():  # each job samples its rows with its own settings
            picked = pick(logits[torch.tensor(idx, device=self.device)], [rows[i].row for i in idx],
                          config=job.config, generator=job.generator)  # (len(idx),)
            if job.logprobs is not None:
                self._record_logprobs(job.logprobs, [rows[i] for i in idx], logits[idx], picked)
            for i, t in zip(idx, picked.tolist(), strict=True):
                self._accept(rows[i], t)
        with self._cv:
            self._stats["steps"] += 1
            self._stats["row_steps"] += len(rows)
            self._stats["max_rows_in_step"] = max(self._stats["max_rows_in_step"], len(rows))
        self._drop(batch, [r for r in rows if r.done])

    @staticmethod
    def _record_logprobs(k: int, rows: list[_Row], logits: torch.Tensor, picked: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)  # (R, V) the model's own distribution
        chosen = logp.gather(1, picked[:, None])[:, 0].tolist()  # (R,)
        top = logp.topk(k, dim=-1) if k else None  # (R, k)
        for j, (r, t) in enumerate(zip(rows, picked.tolist(), strict=True)):
            alternatives = (list(zip(top.indices[j].tolist(), top.values[j].tolist(), strict=True))
                            if top is not None else [])
            r.logprobs.append((t, chosen[j], alternatives))

    def _accept(self, row: _Row, token: int) -> None:
        """A sampled token: `decode.Row` takes it (streaming its text) and says if the row ended."""
        row.row.accept(token)
        with self._cv:
            self._stats["tokens"] += 1
        if row.done:
            self._finish(row)

    def _finish(self, row: _Row) -> None:
        with self._cv:
            row.job.finished_rows += 1
            self._stats["finished"] += row.job.finished_rows == row.job.n
        r = row.row
        row.job.emit(Event("finish", row.index, finish_reason=r.finish_reason, tokens=r.generated,
                           ids=r.tokens, logprobs=row.logprobs if row.job.logprobs is not None else None))

    def _drop(self, batch: _Batch, rows: list[_Row]) -> None:
        """Remove finished or cancelled rows from a batch (its cache keeps the others)."""
        if not rows:
            return
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(batch.rows) if id(r) not in gone]
        if keep:
            batch.cache = batch.cache.reorder(torch.tensor(keep, device=self.device))
        else:
            batch.cache = None
        batch.rows = [batch.rows[i] for i in keep]
        self._release(rows)
