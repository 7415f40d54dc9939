"""One token generator over the decoder protocol, and text generation on top of it.

    for tokens in generate_tokens(model, input_ids, config=GenerationConfig(temperature=0)):
        ...  # tokens: (B,) next token of every row; finished rows get the pad id

    texts = generate(model, tokenizer, "ROMEO:", GenerationConfig(max_new_tokens=50))

The prompt is run once to fill the KV cache; every step after feeds one token per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from scratchlm.errors import ScratchLMError
from scratchlm.generate import sampling
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers import Tokenizer


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    no_repeat_ngram_size: int = 0  # 0: off; n: no n-gram of the prompt or output twice
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    seed: int | None = None
    num_samples: int = 1
    ignore_eos: bool = False  # keep going after <|eos|> (benchmarks)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0 (0: off)"),
            (self.num_samples >= 1, "num_samples must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ScratchLMError(msg)
        if any(not s for s in self.stop):
            raise ScratchLMError("stop strings must not be empty")


def next_token(
    logits: torch.Tensor, *, config: GenerationConfig, generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None, history: list[list[int]] | None = None,
) -> torch.Tensor:
    """The one sampling step: (B, V) next-token logits -> (B,) tokens.

    Repetition penalty over `seen` (B, V bool), n-gram blocking over `history` (each row's
    prompt and output tokens; needed when config.no_repeat_ngram_size > 0), then greedy
    (temperature 0) or temperature,
    top-k, top-p, min-p and a draw from `generator`. `generate_tokens` calls it for its whole
    batch; the server's batching engine (scratchlm.serve.batching) calls it once per request
    on that request's rows of a shared batch, so every request samples with its own settings
    and its own seeded generator."""
    if seen is not None:
        logits = sampling.repetition_penalty(logits, seen, config.repetition_penalty)
    if config.no_repeat_ngram_size > 0:
        logits = sampling.no_repeat_ngram(logits, history, config.no_repeat_ngram_size)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    logits = sampling.top_k(logits, config.top_k)
    logits = sampling.top_p(logits, config.top_p)
    logits = sampling.min_p(logits, config.min_p)
    return sampling.sample(logits, generator)


def init_cache(model: torch.nn.Module, *, batch_size: int, max_len: int, memory=None):
    """The model's decoding state; encoder-decoders build theirs from the encoded source."""
    if is_encoder_decoder(model):
        if memory is None:
            raise ScratchLMError("this is an encoder-decoder model: it translates a source "
                                 "(use `scratchlm translate` or pass memory=model.encode(src))")
        return model.init_cache(batch_size=batch_size, max_len=max_len, memory=memory)
    if memory is not None:
        raise ScratchLMError("memory= is for encoder-decoder models; this is a decoder-only model")
    return model.init_cache(batch_size=batch_size, max_len=max_len)


def max_new_tokens_for(model: torch.nn.Module, prompt_len: int, wanted: int) -> int:
    """How many tokens fit after a prompt in the model's context; errors if none do."""
    block = model.max_context
    if block is None:
        return wanted
    if prompt_len >= block:
        raise ScratchLMError(
            f"the prompt is {prompt_len} tokens but the model's context is {block} tokens; "
            "shorten the prompt"
        )
    return min(wanted, block - prompt_len)


class Row:
    """One sequence being decoded (its prompt, then what is sampled) and the one rule that
    ends it: <|eos|> (unless config.ignore_eos), a stop string in its text (cut off), or
    max_new_tokens. `generate`, `generate_batch`, `evaluate` and the server's batch engine
    all decode through it; the decode loop that owns the row calls `finish("length")` when
    the context has no room left.

    With a tokenizer the row streams its text (`TextStream`) to `on_text`; `seen` (V,) is its
    memory for the repetition penalty, `seq` for n-gram blocking."""

    def __init__(
        self, prompt: list[int], *, config: GenerationConfig, eos_id: int | None,
        vocab_size: int, device: torch.device | str = "cpu", tokenizer: Tokenizer | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self.seq, self.prompt_len = list(prompt), len(prompt)
        self.config, self.eos_id, self.on_text = config, eos_id, on_text
        self.generated = 0  # tokens sampled (an <|eos|> included)
        self.done, self.finish_reason = False, None  # "stop" (eos, stop string) or "length"
        self.stream = TextStream(tokenizer, config.stop) if tokenizer is not None else None
        self.seen = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(self.seq, dtype=torch.long, device=device)] = True

    @property
    def tokens(self) -> list[int]:
        """The generated tokens (an ending <|eos|> left out)."""
        return self.seq[self.prompt_len :]

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def accept(self, token: int) -> None:
        """A sampled token."""
        self.generated += 1
        if token == self.eos_id and not self.config.ignore_eos:
            return self.finish("stop")
        self.seq.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if self.stream is not None:
            self._emit(self.stream.push(token))
            if self.stream.done:
                return self.finish("stop")
        if self.generated >= self.config.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        """End the row (the rest of its text, held back so far, is emitted)."""
        if self.done:
            return
        self.done, self.finish_reason = True, reason
        if self.stream is not None:
            self._emit(self.stream.finish())

    def _emit(self, text: str) -> None:
        if text and self.on_text is not None:
            self.on_text(text)


def rows_for(
    model: torch.nn.Module, input_ids: torch.Tensor, *, config: GenerationConfig, eos_id: int | None,
    left_pad: torch.Tensor | None = None, tokenizer: Tokenizer | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Row]:
    """One Row per prompt of `input_ids` (B, T), its left padding left out; with a tokenizer,
    each streams its text to on_text(row, text)."""
    pads = [0] * input_ids.shape[0] if left_pad is None else left_pad.tolist()
    return [Row(ids[p:], config=config, eos_id=eos_id, vocab_size=model.config.vocab_size,
                device=input_ids.device, tokenizer=tokenizer,
                on_text=None if on_text is None else (lambda text, i=i: on_text(i, text)))
            for i, (ids, p) in enumerate(zip(input_ids.tolist(), pads, strict=True))]


def pick(logits: torch.Tensor, rows: list[Row], *, config: GenerationConfig,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each of `rows` (which share `config`) from their (R, V) logits:
    `next_token` with the rows' repetition-penalty and n-gram memory."""
    seen = torch.stack([r.seen for r in rows]) if config.repetition_penalty != 1.0 else None
    history = [r.seq for r in rows] if config.no_repeat_ngram_size > 0 else None
    return next_token(logits, config=config, generator=generator, seen=seen, history=history)


@torch.inference_mode()
def generate_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    config: GenerationConfig,
    eos_id: int | None = None,
    pad_id: int = 0,
    memory=None,
    left_pad: torch.Tensor | None = None,
    rows: list[Row] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until max_new_tokens or every row ended.

    `input_ids` (B, T) are prompts of equal length, or of different lengths left-padded:
    `left_pad` (B,) says how many padding tokens open each row (decoder-only Transformers).
    max_new_tokens is capped to what fits in the model's context after the longest prompt
    (see `max_new_tokens_for`). For an encoder-decoder, pass
    memory=model.encode(src_ids, src_mask) and input_ids = <|bos|> per row. `rows` (one per
    input row, e.g. with tokenizers to stream text) are made here when not given; a row that
    ended yields pad_id."""
    B, T = input_ids.shape
    n_new = max_new_tokens_for(model, T, config.max_new_tokens)
    device = input_ids.device
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    if rows is None:
        rows = rows_for(model, input_ids, config=config, eos_id=eos_id, left_pad=left_pad)
    cache = init_cache(model, batch_size=B, max_len=T + n_new, memory=memory)
    if left_pad is not None:
        if not getattr(model, "supports_left_padding", False):
            raise ScratchLMError(f"{type(model).__name__} decodes prompts of one length only "
                                 "(left padding is for decoder-only Transformers)")
        cache.set_left_padding(left_pad)
    logits, cache = model(input_ids, cache=cache, logits_to_keep=1)  # prefill: (B, 1, V)
    logits = logits[:, -1]
    for i in range(n_new):
        tok = pick(logits, rows, config=config, generator=generator)  # (B,)
        if any(r.done for r in rows):  # an ended row yields pad_id
            tok = tok.masked_fill(torch.tensor([r.done for r in rows], device=device), pad_id)
        for r, t in zip(rows, tok.tolist(), strict=True):
            if not r.done:
                r.accept(t)
        yield tok
        if all(r.done for r in rows):
            return
        if i == n_new - 1:
            break
        logits, cache = model(tok[:, None], cache=cache)  # (B, 1, V)
        logits = logits[:, -1]
    for r in rows:  # out of room in the context
        r.finish("length")


def stop_at(text: str, stop: list[str]) -> int | None:
    """Where the first stop string in `text` starts (None: none is there). The one rule for
    stop strings: generate, beam search, the server and evaluate all cut text here."""
    cuts = [at for at in (text.find(s) for s in stop) if at != -1]
    return min(cuts) if cuts else None


def stop_checker(tokenizer: Tokenizer, stop: list[str]) -> Callable[[list[int]], bool] | None:
    """For beam search: does a hypothesis' text (its tokens) hold a stop string?"""
    if not stop:
        return None
    return lambda tokens: stop_at(tokenizer.decode(tokens), stop) is not None


class TextStream:
    """Incremental detokenization of one row, holding back text that might still change:
    a partial UTF-8 character, or a prefix of a stop string.

    Each token costs O(1) decoding, whatever the length of the row: only a window of the
    last tokens is decoded (as vLLM's incremental detokenizer does). `ids[_prefix:_read]`
    is the context already turned into text; a new token decodes `ids[_prefix:]`, and what
    that adds to the text of `ids[_prefix:_read]` is new text, unless it ends in U+FFFD (a
    multi-byte character split across tokens; the window grows until it is complete). The
    context token keeps decoders that look at neighbours (SentencePiece's leading space)
    consistent. Stop strings are searched for in the text not yet returned, which holds the
    last len(longest stop) - 1 characters back."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tok = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.done = False
        self._stopped = False  # a stop string ended the text
        self._prefix = self._read = 0  # token offsets of the decoded window
        self._out: list[str] = []  # text returned so far
        self._pending = ""  # decoded text not returned yet (held back, or cut by a stop)

    @property
    def text(self) -> str:
        """The row's text so far (cut at a stop string), returned or held back."""
        return "".join(self._out) + self._pending

    def push(self, token: int) -> str:
        """Add a token; return newly safe text."""
        self.ids.append(token)
        if self.done:
            return ""
        new = self._decoded(complete_only=True)
        if new:
            self._add(new)
        if self.done:
            return self.finish()
        end = len(self._pending) - self.hold
        if end <= 0:
            return ""
        out, self._pending = self._pending[:end], self._pending[end:]
        self._out.append(out)
        return out

    def finish(self) -> str:
        """The rest of the text (what was held back, a trailing incomplete character as
        U+FFFD); the row is over."""
        if not self._stopped:  # (`done` may be set from outside: an eos ends the row)
            rest = self._decoded(complete_only=False)
            if rest:
                self._add(rest)
        out, self._pending = self._pending, ""
        self._out.append(out)
        return out

    def _decoded(self, *, complete_only: bool) -> str:
        """The text the tokens past `_read` add, advancing the window; "" while it would
        end in an incomplete character (unless complete_only is False)."""
        if self._read == len(self.ids):
            return ""
        before = self.tok.decode(self.ids[self._prefix : self._read])
        after = self.tok.decode(self.ids[self._prefix :])
        if complete_only and (len(after) <= len(before) or after.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def _add(self, new: str) -> None:
        """Append decoded text; cut it at the first stop string (one may start in the
        held-back text, which is the only text returned text does not end in)."""
        text = self._pending + new
        at = stop_at(text, self.stop)
        if at is not None:
            self.done = self._stopped = True
            text = text[:at]
        self._pending = text


def generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    config: GenerationConfig | None = None,
    *,
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Generate `config.num_samples` continuations of `prompt` in one batch.

    Returns the generated texts (without the prompt). `on_text(row, text)` is called with
    each piece of text as soon as it is final (for streaming to a terminal)."""
    config = config or GenerationConfig()
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.eos_id]  # an empty prompt starts a new document
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids] * config.num_samples, dtype=torch.long, device=device)
    return _decode_rows(model, tokenizer, input_ids, config, on_text=on_text)


def generate_batch(
    model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], config: GenerationConfig | None = None,
) -> list[str]:
    """One continuation of each prompt, decoded in one batch: prompts of different lengths
    are left-padded (decoder-only Transformers; other models take them one by one). Each row
    is what `generate` gives for that prompt alone, up to float rounding: a prompt too long
    for max_new_tokens to fit after it in the context (which caps its new tokens) is decoded
    alone, so it does not cap the others'."""
    config = config or GenerationConfig()
    if config.num_samples != 1:
        raise ScratchLMError("generate_batch gives one continuation a prompt (num_samples=1)")
    if not getattr(model, "supports_left_padding", False):
        return [generate(model, tokenizer, p, config)[0] for p in prompts]
    rows = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    context = model.max_context or 10**9
    together = [i for i, r in enumerate(rows) if len(r) + config.max_new_tokens <= context]
    out = {i: generate(model, tokenizer, prompts[i], config)[0]
           for i in sorted(set(range(len(rows))) - set(together))}
    if together:
        T = max(len(rows[i]) for i in together)
        device = next(model.parameters()).device
        input_ids = torch.tensor([[tokenizer.pad_id] * (T - len(rows[i])) + rows[i] for i in together],
                                 device=device)
        left_pad = torch.tensor([T - len(rows[i]) for i in together], device=device)
        texts = _decode_rows(model, tokenizer, input_ids, config, left_pad=left_pad)
        out.update(zip(together, texts, strict=True))
    return [out[i] for i in range(len(rows))]


def _decode_rows(
    model: torch.nn.Module, tokenizer: Tokenizer, input_ids: torch.Tensor, config: GenerationConfig,
    *, left_pad: torch.Tensor | None = None, on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Decode every row to text (`Row` says when a row ends)."""
    rows = rows_for(model, input_ids, config=config, eos_id=tokenizer.eos_id, left_pad=left_pad,
                    tokenizer=tokenizer, on_text=on_text)
    for _ in generate_tokens(model, input_ids, config=config, eos_id=tokenizer.eos_id,
                             pad_id=tokenizer.pad_id, left_pad=left_pad, rows=rows):
        pass
    return [r.text for r in rows]
