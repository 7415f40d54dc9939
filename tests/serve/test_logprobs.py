"""Log-probabilities over HTTP (a keyless `scratchlm serve`, driven by the official `openai`
client): `echo` + `logprobs` with `max_tokens: 0` gives the prompt's token log-probabilities,
equal to `scratchlm.score`; the tokens a request samples carry the model's own
log-probabilities (teacher-forced `score` of prompt + output gives the same numbers); chat
`logprobs` + `top_logprobs` in OpenAI's shape."""

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
