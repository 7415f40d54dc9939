"""Log-probabilities over HTTP (a keyless `scratchlm serve`, driven by the official `openai`
client): `echo` + `logprobs` with `max_tokens: 0` gives the prompt's token log-probabilities,
equal to `scratchlm.score`; the tokens a request samples carry the model's own
log-probabilities (teacher-forced `score` of prompt + output gives the same numbers); chat
`logprobs` + `top_logprobs` in OpenAI's shape; streamed, each chunk carries its tokens'
log-probabilities, and the chunks' joined equal the whole response's."""

from __future__ import annotations

import openai
import pytest

import scratchlm
from scratchlm.eval.score import score_ids
from tests.serve.conftest import Server

NAME = "tiny-gpt"


@pytest.fixture(scope="module")
def server(gpt_dir):
    s = Server(gpt_dir, "--max-tokens", "64")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(gpt_dir):
    return scratchlm.load(gpt_dir)


def test_echo_scores_the_prompt_as_score_does(client, ref):
    model, tok = ref
    prompts = ["ROMEO: What light through yonder", "我喜欢吃苹果"]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=0, echo=True, logprobs=2)
    assert r.usage.completion_tokens == 0 and len(r.choices) == 2
    for prompt, choice in zip(prompts, r.choices, strict=True):
        ids = tok.encode(prompt)
        lp = choice.logprobs
        assert choice.text == prompt and "".join(lp.tokens) == prompt
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        expected = score_ids(model, [ids], [1], top_k=2)[0]
        assert lp.token_logprobs[1:] == pytest.approx(expected.token_logprobs, abs=1e-4)
        assert lp.text_offset == [len(tok.decode(ids[:i])) for i in range(len(ids))]
        for token_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
            assert len(top) <= 2 and token_lp <= max(top.values()) + 1e-6
    # The same as a (context, continuation) pair: the continuation's part of the list.
    context, cont = "ROMEO: What light", " through yonder"
    pair = scratchlm.score(model, tok, [(context, cont)])[0]
    n = len(tok.encode(context))
    assert sum(r.choices[0].logprobs.token_logprobs[n:]) == pytest.approx(pair.logprob, abs=1e-4)


def test_token_id_prompt_and_one_generated_token_as_lm_eval_sends_it(client, ref):
    """lm-eval's request: prompt token ids, echo, logprobs 1, max_tokens 1, temperature 0;
    it reads token_logprobs[ctxlen:-1] and compares each with its top_logprobs entry."""
    model, tok = ref
    ids = tok.encode("KING: My lord")
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=1, echo=True, logprobs=1,
                                  temperature=0, seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1  # the prompt, then the sampled token
    generated = tok.encode(lp.tokens[-1]) if lp.tokens[-1] != "<|eos|>" else [tok.eos_id]
    teacher = score_ids(model, [ids + generated], [1], top_k=1)[0]
    assert lp.token_logprobs[1:] == pytest.approx(teacher.token_logprobs, abs=1e-4)
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()), abs=1e-6)


def test_sampled_tokens_carry_their_logprobs(client, ref):
    model, tok = ref
    r = client.completions.create(model=NAME, prompt="HAMLET:", max_tokens=12, temperature=0,
                                  logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 12
    ids = tok.encode("HAMLET:")
    teacher = score_ids(model, [ids + tok.encode(r.choices[0].text)], [len(ids)])[0]
    assert lp.token_logprobs == pytest.approx(teacher.token_logprobs, abs=1e-4)
    assert all(t == pytest.approx(max(top.values()), abs=1e-6)  # greedy: each is the top one
               for t, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True))
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(12)]
    plain = client.completions.create(model=NAME, prompt="HAMLET:", max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.choices[0].text == r.choices[0].text and plain.choices[0].logprobs is None


def test_chat_logprobs_and_top_logprobs(client, ref):
    model, tok = ref
    messages = [{"role": "user", "content": "Who art thou?"}]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    text = r.choices[0].message.content
    assert "".join(c.token for c in content) == text
    assert all(len(c.top_logprobs) == 2 and c.bytes == list(c.token.encode()) for c in content)
    prompt = tok.encode("Who art thou?")  # no chat template: the plain transcript
    teacher = score_ids(model, [prompt + tok.encode(text)], [len(prompt)])[0]
    assert [c.logprob for c in content] == pytest.approx(teacher.token_logprobs, abs=1e-4)
    off = client.chat.completions.create(model=NAME, messages=messages, max_tokens=3)
    assert off.choices[0].logprobs is None


def test_token_bytes_rebuild_the_text_where_tokens_split_characters():
    from scratchlm.serve.logprobs import token_bytes, token_text
    from scratchlm.tokenizers import train_tokenizer

    bpe = train_tokenizer(kind="bpe", texts=["hello world héllo wörld 我喜欢吃苹果 " * 20],
                          vocab_size=300)
    char = train_tokenizer(kind="char", texts=["abc"])  # 我 is three <0xNN> tokens here
    for tok, text in ((bpe, "héllo 我 wörld x"), (char, "ab我")):
        ids = tok.encode(text)
        assert b"".join(token_bytes(tok, t) for t in ids) == text.encode()
        texts = [token_text(tok, t) for t in ids]
        assert any(s.startswith("bytes:\\x") for s in texts)  # a piece of 我
        assert all(s == token_bytes(tok, t).decode() for s, t in zip(texts, ids, strict=True)
                   if not s.startswith("bytes:"))


# ----------------------------------------------------------------------------- streamed
LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def joined_completion(chunks, choices: int) -> list[tuple[str, dict, str | None]]:
    """Per choice: its chunks' text, their logprobs lists joined, its finish_reason."""
    text, lists, reasons = [""] * choices, [{k: [] for k in LISTS} for _ in range(choices)], [None] * choices
    for c in chunks:
        for ch in c.choices:
            text[ch.index] += ch.text
            reasons[ch.index] = ch.finish_reason or reasons[ch.index]
            for k in LISTS:
                lists[ch.index][k] += getattr(ch.logprobs, k)  # every chunk carries its lists
    return list(zip(text, lists, reasons, strict=True))


def assert_same_lists(got: dict, whole) -> None:
    assert got["tokens"] == whole.tokens and got["text_offset"] == whole.text_offset
    assert [x is None for x in got["token_logprobs"]] == [x is None for x in whole.token_logprobs]
    assert ([x for x in got["token_logprobs"] if x is not None]
            == pytest.approx([x for x in whole.token_logprobs if x is not None], abs=1e-5))
    assert len(got["top_logprobs"]) == len(whole.top_logprobs)
    for a, b in zip(got["top_logprobs"], whole.top_logprobs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)


@pytest.mark.parametrize("extra", [
    {"max_tokens": 14, "extra_body": {"ignore_eos": True}},
    {"max_tokens": 20, "stop": "STOP"},  # a stop string from the greedy text (below)
    {"max_tokens": 6, "echo": True, "prompt": ["KING:", "我喜欢"]},  # the prompts come first
    {"max_tokens": 0, "echo": True},  # the prompt's log-probabilities only
], ids=["plain", "stop", "echo", "echo-score-only"])
def test_streamed_completion_logprobs_join_to_the_whole_ones(client, extra):
    kw = {"model": NAME, "prompt": "HAMLET: To be", "temperature": 0, "logprobs": 2, "n": 2, **extra}
    if kw.get("stop") == "STOP":  # held back while it may be the stop string, then cut off
        greedy = client.completions.create(**{**kw, "stop": None}).choices[0].text
        kw["stop"] = greedy[4:6]
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    got = joined_completion(chunks, len(whole.choices))
    for (text, lists, reason), choice in zip(got, whole.choices, strict=True):
        assert text == choice.text and reason == choice.finish_reason
        assert_same_lists(lists, choice.logprobs)
    if "stop" in kw:  # the stop string's tokens are listed, its text is not
        assert whole.choices[0].finish_reason == "stop"
        assert len(got[0][1]["tokens"]) == len(got[0][0]) + 2
    if "extra_body" in kw:
        assert len(got[0][1]["tokens"]) == 14
    before = {}  # each chunk's tokens are its text (a char tokenizer), at its offset
    for c in chunks:
        ch = c.choices[0]
        if ch.text and "stop" not in kw:
            assert "".join(ch.logprobs.tokens) == ch.text
            assert ch.logprobs.text_offset[0] == len(before.get(ch.index, ""))
        before[ch.index] = before.get(ch.index, "") + ch.text
    if kw.get("echo"):
        prompts = kw["prompt"] if isinstance(kw["prompt"], list) else [kw["prompt"]]
        firsts = {}
        for c in chunks:
            firsts.setdefault(c.choices[0].index, c.choices[0])
        for i, first in firsts.items():  # each choice's first chunk is its prompt, scored
            assert first.text == prompts[i // 2] and first.logprobs.token_logprobs[0] is None


def test_streamed_chat_logprobs_join_to_the_whole_ones(client):
    kw = {"model": NAME, "messages": [{"role": "user", "content": "Who art thou?"}],
          "max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 3, "n": 2}
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        content = [e for ch in mine if ch.logprobs is not None for e in ch.logprobs.content]
        want = choice.logprobs.content
        assert "".join(ch.delta.content or "" for ch in mine) == choice.message.content
        assert [e.token for e in content] == [e.token for e in want]
        assert [e.bytes for e in content] == [e.bytes for e in want]
        assert [e.logprob for e in content] == pytest.approx([e.logprob for e in want], abs=1e-5)
        for a, b in zip(content, want, strict=True):
            assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
            assert len(a.top_logprobs) == 3
        assert mine[0].logprobs is None and mine[-1].finish_reason == choice.finish_reason
        # A chunk's tokens are its text (a char tokenizer: no held-back pieces without a stop).
        for ch in mine:
            if ch.logprobs is not None and ch.delta.content:
                assert "".join(e.token for e in ch.logprobs.content) == ch.delta.content
    off = list(client.chat.completions.create(**{**kw, "logprobs": None, "top_logprobs": None},
                                              stream=True))
    assert all(c.choices[0].logprobs is None for c in off)
