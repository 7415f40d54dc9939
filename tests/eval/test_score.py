"""`scratchlm.score`: per-token log-probabilities of texts and of continuations, batched, for
every decoder-only family, against a token-by-token reference computed here; and `evaluate
--metric loglik`, which prints and writes the same numbers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import scratchlm
from scratchlm.cli import main
from scratchlm.errors import ScratchLMError
from scratchlm.eval.score import encode_item, score_ids
from scratchlm.modeldir import save_model_dir
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import tiny_model

CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?!.,:\n"
ITEMS = ["the cat sat on the mat.", ("Paris is the capital of", " France"),
         ("Q: what is 2+2?\nA: ", "4"), "x", ("a longer context, so the rows differ in length", "!")]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="char", texts=[CHARS])


def reference(model, ids: list[int], first: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= first, one prefix at a time (no batching, no padding)."""
    out = []
    with torch.no_grad():
        for t in range(first, len(ids)):
            logits = model(torch.tensor([ids[:t]]))[0, -1]  # (V,)
            out.append(float(F.log_softmax(logits.float(), -1)[ids[t]]))
    return out


@pytest.mark.parametrize("family", ["gpt", "llama", "rnn"])
def test_scores_equal_one_prefix_at_a_time(tok, family):
    model = tiny_model(family, vocab_size=tok.vocab_size, init_std=0.1).eval()
    scores = scratchlm.score(model, tok, ITEMS, batch_size=2, top_k=3)
    for item, s in zip(ITEMS, scores, strict=True):
        ids, first = encode_item(tok, item, start_id=tok.eos_id)
        assert s.tokens == ids[first:]
        # Exactly the continuation's tokens are scored (with the context's trailing spaces).
        cont = item if isinstance(item, str) else item[0][len(item[0].rstrip()):] + item[1]
        assert tok.decode(s.tokens) == cont
        assert s.token_logprobs == pytest.approx(reference(model, ids, first), abs=1e-5)
        assert s.logprob == pytest.approx(sum(s.token_logprobs))
        for lp, greedy, top in zip(s.token_logprobs, s.greedy, s.top, strict=True):
            assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
            assert greedy == (lp >= top[0][1])  # greedy: the token is the top choice
    # Batch size changes nothing (the padding after a row is never read).
    one = scratchlm.score(model, tok, ITEMS, batch_size=1)
    for a, b in zip(scores, one, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_greedy_continuation_is_greedy(tok):
    model = tiny_model("gpt", vocab_size=tok.vocab_size, init_std=0.1).eval()
    ids = tok.encode("Hello")
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    context, cont = tok.decode(ids[:5]), tok.decode(ids[5:])
    assert scratchlm.score(model, tok, [(context, cont)])[0].is_greedy
    other = "?" if cont[0] != "?" else "!"
    assert not scratchlm.score(model, tok, [(context, other + cont[1:])])[0].is_greedy


def test_trailing_space_moves_to_the_continuation(tok):
    assert encode_item(tok, ("Paris is ", "France"), start_id=0) == \
        encode_item(tok, ("Paris is", " France"), start_id=0)
    ids, first = encode_item(tok, "abc", start_id=tok.eos_id)
    assert ids[0] == tok.eos_id and first == 1  # a text is read after <eos>


def test_errors_are_one_line(tok):
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=16)
    with pytest.raises(ScratchLMError, match="context is 16"):
        scratchlm.score(model, tok, ["a" * 40])
    with pytest.raises(ScratchLMError, match="pair of strings"):
        scratchlm.score(model, tok, [("a", 1)])
    with pytest.raises(ScratchLMError, match="list of texts"):
        scratchlm.score(model, tok, "abc")
    seq2seq = tiny_model("seq2seq_transformer", vocab_size=tok.vocab_size)
    with pytest.raises(ScratchLMError, match="decoder-only"):
        score_ids(seq2seq, [[1, 2]], [1])


def test_evaluate_loglik_prints_and_writes_the_same_numbers(tok, tmp_path, capsys):
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=96)
    d = save_model_dir(tmp_path / "model", model, tok)
    data = tmp_path / "items.jsonl"
    records = [{"text": ITEMS[0]}, {"context": ITEMS[1][0], "continuation": ITEMS[1][1]},
               {"context": ITEMS[2][0], "continuation": ITEMS[2][1]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "scores.jsonl"
    assert main(["evaluate", str(d), "--data", str(data), "--metric", "loglik", "--json",
                 "--hyps-out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = scratchlm.score(*scratchlm.load(d), ITEMS[:3])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["logprob"] for r in rows] == pytest.approx([s.logprob for s in expected], abs=1e-5)
    assert [r["token_logprobs"] for r in rows][1] == pytest.approx(expected[1].token_logprobs, abs=1e-5)
    assert [r["is_greedy"] for r in rows] == [s.is_greedy for s in expected]
    n = sum(len(s.tokens) for s in expected)
    assert summary["loglik"]["tokens"] == n and summary["loglik"]["items"] == 3
    assert summary["loglik"]["logprob"] == pytest.approx(sum(s.logprob for s in expected), abs=1e-4)
    assert summary["loglik"]["perplexity"] == pytest.approx(
        math.exp(-sum(s.logprob for s in expected) / n), rel=1e-4)
    data.write_text('{"context": "a"}\n')
    assert main(["evaluate", str(d), "--data", str(data), "--metric", "loglik"]) == 1
    assert f"{data}:1" in capsys.readouterr().err
