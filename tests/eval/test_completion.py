"""`scratchlm evaluate` of a decoder-only model on prompt -> reference records (SFT files):
generated outputs scored with BLEU/chrF/ROUGE, and the references' teacher-forced loss."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.cli import main
from scratchlm.data.sft import encode_record
from scratchlm.eval.completion import completion_loss, read_items
from scratchlm.eval.metrics import chrf
from scratchlm.generate.decode import GenerationConfig, generate
from scratchlm.modeldir import load, save_model_dir
from scratchlm.tokenizers import train_tokenizer
from scratchlm.tokenizers.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from tests.conftest import tiny_model

CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?!.,:\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("completion") / "model"
    tok = train_tokenizer(kind="char", texts=[CHARS])
    save_model_dir(d, tiny_model("llama", vocab_size=tok.vocab_size, block_size=96), tok)
    return d


PROMPTS = ["Summarize: the cat sat on the mat.\nSummary:", "Q: what is 2+2?\nA:",
           "Translate: hello world\nFrench:", "List three colours:"]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def greedy(model_dir, prompt, max_new=12, stop=()):
    model, tok = load(model_dir)
    return generate(model, tok, prompt, GenerationConfig(max_new_tokens=max_new, temperature=0,
                                                         stop=list(stop)))[0].strip()


def test_outputs_are_greedy_generations_and_scores_follow(model_dir, tmp_path, capsys):
    # References = what greedy decoding writes for the first two prompts, something else for
    # the other two: chrF of the evaluate run must be the chrF of exactly those outputs.
    outs = [greedy(model_dir, p) for p in PROMPTS]
    refs = [outs[0], outs[1], "a different answer", "red green blue"]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": " " + r}) + "\n"
                            for p, r in zip(PROMPTS, refs, strict=True)))
    hyps = tmp_path / "hyps.jsonl"
    rc, out, err = run(capsys, "evaluate", model_dir, "--data", data, "--metric", "chrf",
                       "--metric", "bleu", "--max-new-tokens", 12, "--hyps-out", hyps)
    assert rc == 0, err
    rows = [json.loads(x) for x in hyps.read_text().splitlines()]
    assert [r["output"] for r in rows] == outs
    assert [r["prompt"] for r in rows] == PROMPTS and [r["reference"] for r in rows] == refs
    assert out.splitlines()[0] == "4 pairs (test.jsonl), greedy"
    expected = chrf(outs, refs)
    assert f"chrF2 = {expected.score:.2f}" in out and "BLEU = " in out
    # the first two alone are perfect (if greedy wrote anything), the last two are not
    rc, out, _ = run(capsys, "evaluate", model_dir, "--data", data, "--metric", "chrf",
                     "--max-new-tokens", 12, "--max-sentences", 2)
    assert out.startswith("2 pairs") and (not all(outs[:2]) or "chrF2 = 100.00" in out)
    assert expected.score < 100


def test_stop_string_escape_and_beam(model_dir, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": "x"}) + "\n" for p in PROMPTS))
    hyps = tmp_path / "h.txt"
    rc, _, err = run(capsys, "evaluate", model_dir, "--data", data, "--metric", "chrf",
                     "--max-new-tokens", 40, "--stop", "\\n", "--hyps-out", hyps)
    assert rc == 0, err
    got = hyps.read_text().splitlines()
    assert got == [greedy(model_dir, p, 40, stop=["\n"]) for p in PROMPTS]
    rc, out, err = run(capsys, "evaluate", model_dir, "--data", data, "--metric", "chrf",
                       "--max-new-tokens", 8, "--num-beams", 3)
    assert rc == 0, err
    assert out.splitlines()[0] == "4 pairs (t.jsonl), beam 3"


def test_chat_records_prompt_is_the_template_up_to_the_last_assistant_turn(model_dir, tmp_path):
    """Asked as `scratchlm chat` asks: the model's own template (a fine-tuned model carries the
    one it learned); this model has none, so the plain transcript, then with the built-in one."""
    _, tok = load(model_dir)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": " fine "}]
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": messages}) + "\n"
                 + json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"}) + "\n")
    a, b = read_items(f, tokenizer=tok)
    assert a.prompt == "hi" + "hello" + "\nhow are you?"  # no template: plain continuation
    assert a.reference == "fine" and a.where == f"{f}:1"
    tok.chat_template = DEFAULT_CHAT_TEMPLATE  # as `finetune` leaves it in its output
    a, b = read_items(f, tokenizer=tok)
    assert a.prompt == render_chat(messages[:3], tokenizer=tok, add_generation_prompt=True)
    assert b.prompt == render_chat([{"role": "user", "content": "Add\n\n2 and 3"}], tokenizer=tok,
                                   add_generation_prompt=True)
    assert b.reference == "5"


def test_ppl_is_the_token_weighted_loss_of_the_learned_spans(model_dir, tmp_path):
    # Batched and padded, the loss must equal each record scored alone (learned tokens only).
    model, tok = load(model_dir)
    records = [{"prompt": p, "completion": " answer " * (i + 1)} for i, p in enumerate(PROMPTS)]
    records.append({"messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello there"}]})
    f = tmp_path / "mix.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            ex = encode_record(r, tokenizer=tok)
            labels = torch.tensor(ex.labels())
            logits = model(torch.tensor([ex.ids]))[0]
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    got = completion_loss(model, tok, read_items(f, tokenizer=tok), batch_size=3)
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_user_errors_are_one_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    for args, needle in [
        (["--data", bad, "--metric", "rouge"], f"{bad}:2: expected"),
        (["--data", bad, "--split", "test"], "--split is for data directories"),
        (["--data", tmp_path / "missing.jsonl"], "missing.jsonl does not exist"),
    ]:
        rc, _, err = run(capsys, "evaluate", model_dir, *args)
        assert rc == 1 and needle in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_max_sentences_reads_only_those_records_and_must_be_positive(model_dir, tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                 + json.dumps({"prompt": "c", "completion": "d"}) + "\n"
                 + json.dumps({"prompt": "e", "completion": ""}) + "\n")  # bad, but past the limit
    rc, out, err = run(capsys, "evaluate", model_dir, "--data", f, "--metric", "ppl", "--metric", "chrf",
                       "--max-sentences", 2, "--max-new-tokens", 4)
    assert rc == 0, err
    assert out.startswith("2 pairs") and "ppl: loss" in out and "chrF2 = " in out
    rc, _, err = run(capsys, "evaluate", model_dir, "--data", f, "--metric", "ppl")
    assert rc == 1 and f"{f}:3: the completion is empty" in err and "finetune" not in err
    rc, _, err = run(capsys, "evaluate", model_dir, "--data", f, "--max-sentences", 0)
    assert rc == 1 and "--max-sentences must be at least 1" in err


def test_a_prompt_longer_than_the_context_is_named_before_decoding(model_dir, tmp_path, capsys):
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                 + json.dumps({"prompt": "x" * 200, "completion": "y"}) + "\n")
    rc, _, err = run(capsys, "evaluate", model_dir, "--data", f, "--metric", "rouge")
    assert rc == 1 and f"{f}:2: the prompt is 200 tokens and the model's context 96" in err


def test_generate_batch_gives_each_prompt_its_own_room():
    """A prompt near the end of the context gets only the tokens that fit after it; it must
    not cap the new tokens of the shorter prompts batched with it."""
    from scratchlm.generate import generate_batch

    model, tok = None, train_tokenizer(kind="char", texts=[CHARS])
    model = tiny_model("gpt", vocab_size=tok.vocab_size, block_size=32).eval()
    prompts, cfg = ["a", "b" * 30, "cc"], GenerationConfig(max_new_tokens=12, temperature=0, ignore_eos=True)
    alone = [generate(model, tok, p, cfg)[0] for p in prompts]
    assert [len(tok.encode(t)) for t in alone] == [12, 2, 12]
    assert generate_batch(model, tok, prompts, cfg) == alone
