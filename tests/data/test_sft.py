"""SFT data: exactly which tokens are learned for each format, bad input, truncation,
batches, and packing that leaves every example's logits as they are alone."""

import json

import numpy as np
import pytest
import torch

from scratchlm.data.sft import (
    SFTData,
    block_causal_mask,
    chat_segments,
    collate,
    encode_record,
    load_examples,
    pack,
)
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizers import train_tokenizer
from scratchlm.tokenizers.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from tests.conftest import FAMILIES, tiny_model

# A ChatML template like SmolLM2-Instruct's (with its default system prompt).
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="char", texts=["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789?!.,+=<>|_\n"])


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def _learned(tok, ex):
    """The learned tokens as text, one string per contiguous learned run."""
    runs, cur = [], []
    for i, keep in zip(ex.ids, ex.learn, strict=True):
        if keep:
            cur.append(i)
        elif cur:
            runs.append(_decode(tok, cur))
            cur = []
    if cur:
        runs.append(_decode(tok, cur))
    return runs


def _check_labels(ex):
    labels = ex.labels()
    assert len(labels) == len(ex.ids) and labels[-1] == -100
    for t in range(len(ex.ids) - 1):
        assert labels[t] == (ex.ids[t + 1] if ex.learn[t + 1] else -100)


def test_alpaca_learns_only_the_output(tok):
    rec = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    ex = encode_record(rec, tokenizer=tok)
    assert _learned(tok, ex) == ["5<|eos|>"]
    assert _decode(tok, ex.ids) == ("<|user|>\nAdd the numbers.\n\n2 and 3<|eos|>"
                                    "<|assistant|>\n5<|eos|>")
    _check_labels(ex)
    # the labels are exactly: predict "5" from the "\n" before it, then <eos> from "5"
    labels = ex.labels()
    learned_at = [t for t, v in enumerate(labels) if v != -100]
    n = len(ex.ids)
    assert learned_at == [n - 3, n - 2]
    assert labels[n - 3] == tok.encode("5")[0] and labels[n - 2] == tok.eos_id
    no_input = encode_record({"instruction": "Say hi", "output": "hi"}, tokenizer=tok)
    assert _decode(tok, no_input.ids).startswith("<|user|>\nSay hi<|eos|>")


@pytest.mark.parametrize("template", [None, CHATML])
def test_multi_turn_chat_learns_only_assistant_turns(tok, template):
    tok.chat_template = template
    try:
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2+2?"},
                {"role": "assistant", "content": "4."}]
        ex = encode_record({"messages": msgs}, tokenizer=tok)
        end = "<|eos|>" if template is None else "<|im_end|>\n"
        assert _learned(tok, ex) == ["2" + end, "4." + end]
        _check_labels(ex)
        # what is not learned is the rest of the rendered conversation, in order
        assert _decode(tok, ex.ids) == render_chat(msgs, tokenizer=tok)
        prompt = [i for i, keep in zip(ex.ids, ex.learn, strict=True) if not keep]
        text = _decode(tok, prompt)
        for m in msgs[:2] + msgs[3:4]:
            assert m["content"] in text
        # the first reply's prompt is exactly what generate --chat would feed the model
        first = render_chat(msgs[:2], tokenizer=tok, add_generation_prompt=True)
        k = ex.learn.index(True)
        assert ex.ids[:k] == tok.encode(first)
        if template is not None:  # the template's default system prompt is not used here
            assert "You are helpful." not in _decode(tok, ex.ids)
    finally:
        tok.chat_template = None


def test_prompt_completion_learns_completion_and_eos(tok):
    ex = encode_record({"prompt": "Q: 2+2=", "completion": " 4"}, tokenizer=tok)
    assert _learned(tok, ex) == [" 4<|eos|>"]
    assert _decode(tok, ex.ids) == "Q: 2+2= 4<|eos|>"
    _check_labels(ex)


def test_template_must_grow_by_prefixes(tok):
    bad = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(ScratchLMError, match="prefix"):
        chat_segments(msgs, tokenizer=tok, template=bad)


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


@pytest.mark.parametrize("bad,reason", [
    ("{not json", "not valid JSON"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
     "empty assistant turn"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"text": "plain"}, "unknown record format"),
])
def test_bad_lines_stop_with_file_and_line_or_are_skipped(tok, tmp_path, bad, reason):
    f = _write(tmp_path / "d.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(ScratchLMError, match=rf"d\.jsonl:2: .*{reason}"):
        load_examples(f, tokenizer=tok, max_len=64)
    examples, report = load_examples(f, tokenizer=tok, max_len=64, bad_lines="skip")
    assert len(examples) == 2 and len(report.skipped) == 1 and ":2:" in report.skipped[0]
    assert "1 skipped" in report.summary()


def test_json_array_and_forced_format(tok, tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"instruction": "x", "output": "y"}] * 3))
    examples, _ = load_examples(f, tokenizer=tok, max_len=64)
    assert len(examples) == 3
    with pytest.raises(ScratchLMError, match="a chat record needs"):
        load_examples(f, tokenizer=tok, max_len=64, fmt="chat")


def test_truncation_right_left_drop(tok, tmp_path):
    long = {"messages": [{"role": "user", "content": "u" * 10},
                         {"role": "assistant", "content": "a" * 30}]}
    f = _write(tmp_path / "d.jsonl", [GOOD, long])
    n_long = len(encode_record(long, tokenizer=tok))
    assert n_long > 40
    right, rep = load_examples(f, tokenizer=tok, max_len=40, truncation="right")
    assert rep.truncated == 1 and len(right) == 2 and len(right[1]) == 40
    full = encode_record(long, tokenizer=tok)
    assert right[1].ids == full.ids[:40]
    left, _ = load_examples(f, tokenizer=tok, max_len=40, truncation="left")
    assert left[1].ids == full.ids[-40:] and left[1].learn == full.learn[-40:]
    dropped, rep = load_examples(f, tokenizer=tok, max_len=40, truncation="drop")
    assert len(dropped) == 1 and rep.dropped_long == 1 and "1 dropped" in rep.summary()
    # cut before the reply begins: nothing to learn, so dropped and counted
    _, rep = load_examples(f, tokenizer=tok, max_len=30, truncation="right")
    assert rep.truncated == 1 and rep.dropped_long == 1


def test_collate_pads_with_ignored_labels(tok):
    a = encode_record(GOOD, tokenizer=tok)
    b = encode_record({"prompt": "p", "completion": "q"}, tokenizer=tok)
    batch = collate([[a], [b]], pad_id=tok.pad_id, packed=False)
    assert set(batch) == {"input_ids", "labels"}
    T = max(len(a), len(b))
    assert batch["input_ids"].shape == (2, T)
    assert batch["input_ids"][1, len(b):].eq(tok.pad_id).all()
    assert batch["labels"][1, len(b):].eq(-100).all()
    assert batch["labels"][0].tolist() == a.labels()
    assert batch["labels"][1, : len(b)].tolist() == b.labels()


def test_pack_and_block_mask():
    rows = pack([5, 3, 7, 2, 4, 1], capacity=8)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([5, 3, 7, 2, 4, 1][i] for i in r) <= 8 for r in rows)
    assert len(rows) == 3  # 22 tokens need at least 3 rows of 8
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = block_causal_mask(seg)[0, 0]
    for q in range(6):
        for k in range(6):
            assert bool(mask[q, k]) == (k <= q and seg[0, q] == seg[0, k]), (q, k)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_row_gives_each_example_its_own_logits(family, tok):
    model = tiny_model(family, vocab_size=tok.vocab_size, block_size=128).eval()
    msgs = [
        {"messages": [{"role": "user", "content": "hello there"},
                      {"role": "assistant", "content": "general"}]},
        {"prompt": "abc", "completion": "def"},
        {"instruction": "count", "input": "1 2", "output": "3 4 5"},
    ]
    examples = [encode_record(m, tokenizer=tok) for m in msgs]
    batch = collate([examples], pad_id=tok.pad_id, packed=True)
    assert batch["position_ids"][0].tolist()[: len(examples[0]) + 2] == [
        *range(len(examples[0])), 0, 1]
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=batch["position_ids"],
                       attn_mask=batch["attn_mask"])[0]
        at = 0
        for ex in examples:
            alone = model(torch.tensor([ex.ids]))[0]
            assert (packed[at : at + len(ex)] - alone).abs().max().item() < 1e-5
            at += len(ex)
        # and without the mask/positions, the later examples would differ (the test can fail)
        plain = model(batch["input_ids"])[0]
        n0 = len(examples[0])
        alone = model(torch.tensor([examples[1].ids]))[0]
        assert (plain[n0 : n0 + len(examples[1])] - alone).abs().max().item() > 1e-3
    # the labels never cross from one example into the next
    assert batch["labels"][0, len(examples[0]) - 1].item() == -100


def test_sft_data_batches(tok):
    recs = [{"prompt": "p" * k, "completion": "c"} for k in range(1, 21)]
    examples = [encode_record(r, tokenizer=tok) for r in recs]
    data = SFTData(examples, batch_size=4, block_size=32, pad_id=tok.pad_id)
    b1 = data.batch(np.random.default_rng(7))
    b2 = data.batch(np.random.default_rng(7))
    assert torch.equal(b1["input_ids"], b2["input_ids"])  # a pure function of the rng
    lengths = (b1["labels"] != -100).sum(1)
    assert lengths.eq(2).all()  # "c" and <eos>
    widths = [(row != tok.pad_id).sum().item() for row in b1["input_ids"]]
    assert max(widths) - min(widths) <= 3  # grouped by length: little padding
    packed = SFTData(examples, batch_size=2, block_size=32, pad_id=tok.pad_id, packing=True)
    assert len(packed.rows) < len(examples)
    b = packed.batch(np.random.default_rng(0))
    assert b["attn_mask"].shape == (2, 1, b["input_ids"].shape[1], b["input_ids"].shape[1])
    with pytest.raises(ScratchLMError, match="longer than the context"):
        SFTData(examples, batch_size=2, block_size=8, pad_id=0)


def test_default_template_renders_generation_prompt(tok):
    msgs = [{"role": "user", "content": "hi"}]
    text = render_chat(msgs, tokenizer=tok, template=DEFAULT_CHAT_TEMPLATE,
                       add_generation_prompt=True)
    assert text == "<|user|>\nhi<|eos|><|assistant|>\n"
