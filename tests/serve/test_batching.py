"""The batching engine, driven step by step: whatever rows share a batch, when they join and
leave, every request gets exactly the tokens `generate_tokens` / `translate` give it alone."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate.decode import GenerationConfig, generate, generate_tokens
from scratchlm.generate.translate import translate_nbest
from scratchlm.serve.batching import Busy, Engine, Job
from tests.conftest import tiny_model


class Sink:
    """Collects a job's events."""

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.ids: dict[int, list[int]] = {}
        self.reasons: dict[int, str] = {}
        self.errors: list[str] = []
        self.events: list = []  # the "finish" events

    def __call__(self, ev) -> None:
        if ev.kind == "finish":
            self.events.append(ev)
        if ev.kind == "text":
            self.text[ev.row] = self.text.get(ev.row, "") + ev.text
        elif ev.kind == "finish":
            self.ids[ev.row], self.reasons[ev.row] = ev.ids, ev.finish_reason
        else:
            self.errors.append(ev.text)


def alone(model, tok, prompt: list[int], cfg: GenerationConfig) -> list[list[int]]:
    """What generate_tokens gives the prompt alone: per row, the tokens before <eos>."""
    ids = torch.tensor([prompt] * cfg.num_samples)
    rows = [[] for _ in range(cfg.num_samples)]
    ended = [False] * cfg.num_samples
    for step in generate_tokens(model, ids, config=cfg, eos_id=tok.eos_id, pad_id=tok.pad_id):
        for r, t in enumerate(step.tolist()):
            if ended[r] or (t == tok.eos_id and not cfg.ignore_eos):
                ended[r] = True
                continue
            rows[r].append(t)
    return rows


def streamed(model, tok, text: str, cfg: GenerationConfig) -> str:
    """The text `generate` streams for the prompt alone (one row)."""
    pieces = []
    generate(model, tok, text, cfg, on_text=lambda row, piece: pieces.append(piece))
    return "".join(pieces)


def submit(engine, tok, text: str, cfg: GenerationConfig) -> tuple[Job, Sink]:
    sink = Sink()
    job = Job(config=cfg, emit=sink, prompt=tok.encode(text))
    engine.submit(job)
    return job, sink


def run(engine, steps: int | None = None) -> None:
    for _ in range(steps if steps is not None else 10_000):
        engine.step()
        if steps is None and engine.stats()["running_rows"] == 0 and not engine.stats()["waiting"]:
            return


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_transformer_rows_join_and_leave_without_changing_outputs(family, tokenizer):
    tok = tokenizer
    model = tiny_model(family, vocab_size=tok.vocab_size, block_size=256, init_std=0.1).eval()
    engine = Engine(model, tok, max_rows=16, max_batches=2)
    # Rows that ignore <eos> keep the first batch alive; the others may end early.
    long = GenerationConfig(max_new_tokens=80, temperature=0, ignore_eos=True)
    sampled = GenerationConfig(max_new_tokens=70, temperature=0.9, top_k=20, top_p=0.9, seed=7)
    penalized = GenerationConfig(max_new_tokens=60, temperature=0, repetition_penalty=1.5,
                                 ignore_eos=True)
    greedy = GenerationConfig(max_new_tokens=30, temperature=0)
    too_long = GenerationConfig(max_new_tokens=200, temperature=0, ignore_eos=True)
    cases = [("ROMEO: wherefore", long), ("JULIET: what light through yonder window", sampled),
             ("Ay", penalized), ("O", greedy), ("Be", too_long)]
    sinks = [submit(engine, tok, *cases[0])[1]]
    run(engine, 3)  # the batch is now 15 + 3 positions long
    assert engine.stats()["batches"] == 1
    # A longer prompt joins the running batch (prefilled to its length, then catches up).
    sinks.append(submit(engine, tok, *cases[1])[1])
    run(engine, 1)
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 2
    # A shorter one joins too, left-padded to the batch's length.
    sinks.append(submit(engine, tok, *cases[2])[1])
    run(engine, 1)
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 3
    run(engine, 40)
    # Far shorter than the batch (about 60 positions): still joins, padded.
    sinks.append(submit(engine, tok, *cases[3])[1])
    run(engine, 1)
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 4
    # 200 new tokens past the batch's length would overrun the 256-token context: a new batch.
    sinks.append(submit(engine, tok, *cases[4])[1])
    run(engine, 1)
    assert engine.stats()["batches"] == 2
    run(engine)
    for sink, (text, cfg) in zip(sinks, cases, strict=True):
        assert not sink.errors
        assert sink.ids == dict(enumerate(alone(model, tok, tok.encode(text), cfg)))
        assert sink.text.get(0, "") == streamed(model, tok, text, cfg)


def test_a_request_that_fits_no_batch_waits_for_one_to_end(tokenizer):
    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=128, init_std=0.1).eval()
    engine = Engine(model, tok, max_batches=1)
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, ignore_eos=True)
    a = submit(engine, tok, "a prompt of some length", cfg)[1]
    run(engine, 10)
    long = GenerationConfig(max_new_tokens=100, temperature=0, ignore_eos=True)
    b = submit(engine, tok, "b", long)[1]  # padded to the batch (~33), +100 > the 128 context
    run(engine, 1)
    assert engine.stats()["waiting"] == 1 and engine.stats()["batches"] == 1
    run(engine)
    assert a.ids[0] == alone(model, tok, tok.encode("a prompt of some length"), cfg)[0]
    assert b.ids[0] == alone(model, tok, tok.encode("b"), long)[0]


def test_rnn_rows_join_at_any_time(tokenizer):
    tok = tokenizer
    model = tiny_model("rnn", vocab_size=tok.vocab_size, init_std=0.1).eval()
    engine = Engine(model, tok, max_rows=8)
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, ignore_eos=True)
    a = submit(engine, tok, "a long prompt that is decoded first", cfg)
    run(engine, 5)
    b = submit(engine, tok, "b", cfg)  # shorter than the batch is long: fine for an RNN
    run(engine, 1)
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 2
    run(engine)
    assert a[1].ids[0] == alone(model, tok, tok.encode("a long prompt that is decoded first"), cfg)[0]
    assert b[1].ids[0] == alone(model, tok, tok.encode("b"), cfg)[0]


def test_seeded_choices_equal_generate_with_the_same_seed(tokenizer):
    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=128, init_std=0.1).eval()
    engine = Engine(model, tok)
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, seed=123, num_samples=3,
                           ignore_eos=True)
    other = GenerationConfig(max_new_tokens=15, temperature=1.0, seed=9)
    job, sink = submit(engine, tok, "KING:", cfg)
    submit(engine, tok, "QUEEN:", other)  # shares the batch, draws from its own generator
    run(engine)
    expected = alone(model, tok, tok.encode("KING:"), cfg)
    assert [sink.ids[r] for r in range(3)] == expected
    assert len({tuple(r) for r in expected}) > 1  # the three choices are different samples


def test_requests_arriving_together_share_every_step(tokenizer):
    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=128, init_std=0.1).eval()
    engine = Engine(model, tok)
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, ignore_eos=True)
    prompts = ["To be", "or not to be", "that is", "the question"]  # 5 to 12 tokens
    sinks = [submit(engine, tok, p, cfg)[1] for p in prompts]
    run(engine)
    stats = engine.stats()
    # One batch from the shortest prompt: 8 steps of catch-up for the longest + 20 tokens,
    # instead of 4 x 20 steps one request after another.
    assert stats["batches"] == 0 and stats["max_rows_in_step"] == 4
    lengths = [len(tok.encode(p)) for p in prompts]
    # The batch starts at the shortest prompt minus one token; the longest prompt is fed
    # (max - min + 1) steps, the last of which samples its first token; 19 steps more.
    assert stats["steps"] == (max(lengths) - min(lengths) + 1) + 19
    assert stats["tokens"] == 80
    for p, sink in zip(prompts, sinks, strict=True):
        assert sink.ids[0] == alone(model, tok, tok.encode(p), cfg)[0]
        assert sink.reasons[0] == "length"


@pytest.mark.parametrize("family", ["seq2seq_transformer", "seq2seq_rnn"])
def test_encoder_decoder_jobs_are_batched_translations(family, tokenizer):
    tok = tokenizer
    init = {"init_std": 0.1} if family == "seq2seq_transformer" else {}
    model = tiny_model(family, vocab_size=tok.vocab_size, **init).eval()
    engine = Engine(model, tok)
    sources = ["Click OK.", "The quick brown fox", "A"]
    sinks = []
    for s in sources:
        sink = Sink()
        engine.submit(Job(config=GenerationConfig(max_new_tokens=12, temperature=0), emit=sink,
                          source=[*tok.encode(s), tok.eos_id]))
        sinks.append(sink)
    engine.step()
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 3
    run(engine)
    expected = translate_nbest(model, tok, sources, config=GenerationConfig(max_new_tokens=12,
                                                                            temperature=0))
    special = tok.special_ids
    for sink, nbest in zip(sinks, expected, strict=True):
        assert [t for t in sink.ids[0] if t not in special] == nbest[0][0]


def test_cancel_frees_the_slot_mid_stream(tokenizer):
    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=256, init_std=0.1).eval()
    engine = Engine(model, tok, max_rows=1, max_waiting=0)
    long = GenerationConfig(max_new_tokens=200, temperature=0, ignore_eos=True)
    job, sink = submit(engine, tok, "Long story:", long)
    run(engine, 10)
    with pytest.raises(Busy):  # the only slot is taken, and nobody may wait
        submit(engine, tok, "next", long)
    engine.cancel(job)
    engine.step()
    stats = engine.stats()
    assert stats["running_rows"] == 0 and stats["batches"] == 0 and stats["cancelled"] == 1
    assert stats["tokens"] < 200 and not sink.ids  # stopped mid-stream, never finished
    job2, sink2 = submit(engine, tok, "next", GenerationConfig(max_new_tokens=5, temperature=0,
                                                               ignore_eos=True))
    run(engine)
    assert sink2.reasons == {0: "length"} and len(sink2.ids[0]) == 5


def test_a_failing_batch_reports_an_error_and_the_engine_goes_on(tokenizer):
    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=64, init_std=0.1).eval()
    engine = Engine(model, tok)
    bad = Sink()
    # max_new_tokens past the context: the cache refuses (the server caps it before this).
    engine.submit(Job(config=GenerationConfig(max_new_tokens=100, temperature=0,
                                              ignore_eos=True), emit=bad, prompt=tok.encode("x")))
    run(engine)
    assert len(bad.errors) == 1 and "longer than the context" in bad.errors[0]
    assert engine.stats()["running_rows"] == 0
    job, good = submit(engine, tok, "y", GenerationConfig(max_new_tokens=5, temperature=0))
    run(engine)
    assert good.ids[0] == alone(model, tok, tok.encode("y"), GenerationConfig(max_new_tokens=5,
                                                                            temperature=0))[0]


def test_a_batch_grows_its_cache_for_a_longer_request(tokenizer):
    tok = tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=256, init_std=0.1).eval()
    engine = Engine(model, tok)
    short = GenerationConfig(max_new_tokens=20, temperature=0, ignore_eos=True)  # 64 positions
    longer = GenerationConfig(max_new_tokens=150, temperature=0, ignore_eos=True)  # 192
    a = submit(engine, tok, "a", short)[1]
    run(engine, 5)
    b = submit(engine, tok, "to be or not", longer)[1]  # joins, and needs a bigger cache
    run(engine, 1)
    assert engine.stats()["batches"] == 1 and engine.stats()["running_rows"] == 2
    run(engine)
    assert not a.errors and not b.errors
    assert a.ids[0] == alone(model, tok, tok.encode("a"), short)[0]
    assert b.ids[0] == alone(model, tok, tok.encode("to be or not"), longer)[0]


@pytest.mark.parametrize("family", ["gpt", "llama", "rnn"])
def test_sampled_logprobs_equal_teacher_forced_scores_whatever_the_batch(family, tokenizer):
    """Rows joining a running batch (left-padded or catching up) report the log-probabilities
    `score_ids` gives their prompt + output read whole, one row alone; Engine.call runs on the
    engine's own step, between decoding steps."""
    from scratchlm.eval.score import score_ids

    tok = tokenizer
    model = tiny_model(family, vocab_size=tok.vocab_size, block_size=256, init_std=0.1).eval()
    engine = Engine(model, tok, max_rows=8, max_batches=2)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=3, ignore_eos=True)

    def start(text: str) -> tuple[Job, Sink]:
        sink = Sink()
        job = Job(config=cfg, emit=sink, prompt=tok.encode(text), logprobs=2)
        engine.submit(job)
        return job, sink

    first = [start("ROMEO: wherefore art")]
    run(engine, steps=4)  # a running batch for the next ones to join
    later = [start(p) for p in ("KING:", "JULIET: what light through yonder")]
    future = engine.call(lambda: "ran")
    run(engine)
    assert future.result(timeout=0) == "ran"
    for job, sink in first + later:
        record = sink.events[0].logprobs
        assert [t for t, _, _ in record] == sink.ids[0] and len(record) == 12
        whole = job.prompt + sink.ids[0]
        teacher = score_ids(model, [whole], [len(job.prompt)], top_k=2)[0]
        assert [lp for _, lp, _ in record] == pytest.approx(teacher.token_logprobs, abs=1e-4)
        assert [[i for i, _ in top] for _, _, top in record] == [[i for i, _ in t] for t in teacher.top]


def test_text_events_carry_the_logprobs_of_their_tokens(tokenizer):
    """What a streamed response's logprobs come from: each "text" event brings the tokens
    sampled since the previous one (a token whose text is held back for a stop string comes
    later); joined, and with the finish list's rest, they are the finish list."""
    from dataclasses import replace

    tok = tokenizer
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=256, init_std=0.1).eval()
    engine = Engine(model, tok)
    greedy = GenerationConfig(max_new_tokens=16, temperature=0, ignore_eos=True)
    text = streamed(model, tok, "KING:", greedy)
    stop = text[6:8]
    for cfg in (greedy, replace(greedy, stop=[stop])):
        events = []
        engine.submit(Job(config=cfg, emit=events.append, prompt=tok.encode("KING:"), logprobs=1))
        run(engine)
        *texts, finish = events
        assert finish.kind == "finish" and all(e.kind == "text" for e in texts)
        sent = [x for e in texts for x in e.logprobs]
        assert sent == finish.logprobs[: len(sent)]
        if cfg is greedy:  # one token a step, its text with it (a char tokenizer)
            assert [tok.decode([t for t, _, _ in e.logprobs]) for e in texts] == [e.text for e in texts]
            assert len(sent) == 16 and "".join(e.text for e in texts) == text
        else:  # the stop string's two tokens were held back, then cut: only in the finish list
            assert "".join(e.text for e in texts) == text[: text.index(stop)]
            assert len(finish.logprobs) - len(sent) == 2 and finish.finish_reason == "stop"
    events = []
    engine.submit(Job(config=greedy, emit=events.append, prompt=tok.encode("KING:")))
    run(engine)
    assert all(e.logprobs is None for e in events)
