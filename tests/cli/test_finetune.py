"""`scratchlm finetune`, `merge-lora` and `generate --chat` end to end on a tiny model
(in-process through the CLI's main, as a user's command line)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import scratchlm
from scratchlm.cli import main
from scratchlm.modeldir import save_model_dir
from scratchlm.peft import load_with_adapter
from scratchlm.tokenizers import train_tokenizer
from scratchlm.tokenizers.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    tok = train_tokenizer(kind="char", texts=["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789?!.,+=<>|_\n"])
    save_model_dir(d / "base", tiny_model("llama", vocab_size=tok.vocab_size, block_size=128), tok)
    with open(d / "chat.jsonl", "w") as f:
        for i in range(24):
            a, b = i % 7, i % 5
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "math"},
                {"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": f"{a + b}"},
                {"role": "user", "content": "twice?"}, {"role": "assistant", "content": f"{2 * (a + b)}!"},
            ]}) + "\n")
    return d


COMMON = ["--train.batch_size", "4", "--train.eval_every", "3", "--train.eval_batches", "2",
          "--train.save_every", "3", "--train.log_every", "1", "--train.warmup_steps", "0",
          "--train.min_lr_ratio", "1.0",  # a constant lr: max_steps may change on --resume
          "--train.lr", "1e-2"]
LORA = ["--lora.r", "4", "--lora.alpha", "8", "--lora.dropout", "0.1",
        "--lora.targets", "q_proj,v_proj,down_proj", "--finetune.packing", "true",
        "--finetune.max_len", "100"]


def ok(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def fails(capsys, needle, *args):
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 1 and needle in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_lora_finetune_exact_resume_and_merge(base, tmp_path, capsys):
    run = ["finetune", base / "base", "--data", base / "chat.jsonl", *COMMON, *LORA]
    out = ok(capsys, *run, "--out", tmp_path / "full", "--train.max_steps", "6")
    # per layer: q_proj 4x64 + 64x4, v_proj 4x64 + 32x4, down_proj 4x192 + 64x4; 2 layers
    assert "trainable params: 3,840 /" in out and "LoRA r=4" in out
    assert "rows of up to 100 tokens" in out  # packed to finetune.max_len, not the context
    final = tmp_path / "full" / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        ".scratchlm", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "full" / "last" / "trainer_state.pt").is_file()
    assert not (tmp_path / "full" / "last" / "model.safetensors").exists()  # adapter only
    # interrupted after step 3, then resumed: bit-identical adapter
    ok(capsys, *run, "--out", tmp_path / "part", "--train.max_steps", "3")
    step3 = load_file(tmp_path / "part" / "last" / "adapter_model.safetensors")
    ok(capsys, *run, "--out", tmp_path / "part", "--train.max_steps", "6", "--resume")
    a = load_file(final / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 2 * 3 * 2
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], step3[k]) for k in a)  # steps 4-6 did train
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # a resume that changes the adapter's shape is refused
    fails(capsys, "lora.r", *run, "--out", tmp_path / "part", "--train.max_steps", "9",
          "--resume", "--lora.r", "8")

    # merge-lora: a plain model directory that transformers loads with the same logits
    out = ok(capsys, "merge-lora", tmp_path / "full", "--out", tmp_path / "merged")
    assert "6 layers" in out
    adapted, tok = load_with_adapter(final)
    # The base has no chat template: it learned the built-in one, and carries it from now on
    # (chat, serve, generate --chat and evaluate then render conversations with it).
    assert scratchlm.load(base / "base")[1].chat_template is None
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert scratchlm.load(tmp_path / "merged")[1].chat_template == DEFAULT_CHAT_TEMPLATE
    merged, _ = scratchlm.load(tmp_path / "merged")
    x = torch.randint(0, tok.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    base_model, _ = scratchlm.load(base / "base")
    with torch.no_grad():
        ours = adapted(x)
        assert (ours - base_model(x)).abs().max() > 1e-4  # training changed the model
        assert (merged(x) - ours).abs().max().item() < 1e-5
        transformers = pytest.importorskip("transformers")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        assert (hf(x).logits - ours).abs().max().item() < 1e-4

    # generate --chat on the adapter: the model's reply to the rendered prompt, nothing else
    out = ok(capsys, "generate", final, "--chat", "--prompt", "3+4?", "--greedy",
             "--max-new-tokens", "6")
    prompt = render_chat([{"role": "user", "content": "3+4?"}], tokenizer=tok,
                         add_generation_prompt=True)
    expected = scratchlm.generate(adapted, tok, prompt,
                                  scratchlm.GenerationConfig(max_new_tokens=6, temperature=0))[0]
    assert out == expected + "\n"
    assert "<|user|>" not in out


def test_full_finetune_with_frozen_parts(base, tmp_path, capsys):
    out = ok(capsys, "finetune", base / "base", "--data", base / "chat.jsonl", "--method", "full",
             "--out", tmp_path / "run", *COMMON, "--train.max_steps", "3", "--train.lr", "1e-3",
             "--finetune.freeze_layers", "1", "--finetune.freeze_embeddings", "true",
             "--finetune.gradient_checkpointing", "true", "--finetune.group_by_length", "false")
    assert "full fine-tuning" in out
    before = load_file(base / "base" / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        frozen = k.startswith("model.layers.0.") or k == "model.embed_tokens.weight"
        assert torch.equal(before[k], after[k]) == frozen, k
    fails(capsys, "full model directory", "merge-lora", tmp_path / "run", "--out", tmp_path / "m")


def test_user_errors_are_one_line(base, tmp_path, capsys):
    run = ["finetune", base / "base", "--data", base / "chat.jsonl", "--out", tmp_path / "r",
           "--train.max_steps", "1"]
    err = fails(capsys, "matches no linear layer", *run, "--lora.targets", "q_proj,query")
    assert "up_proj" in err and "lm_head" not in err
    fails(capsys, "takes the model", *run, "--model.n_layer", "3")
    fails(capsys, "lora.* settings apply to --method lora", *run, "--method", "full",
          "--lora.r", "4")
    bad = tmp_path / "bad.jsonl"
    lines = (base / "chat.jsonl").read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], "{oops", lines[2]]) + "\n")
    fails(capsys, "bad.jsonl:3: not valid JSON", "finetune", base / "base", "--data", bad,
          "--out", tmp_path / "r2", "--train.max_steps", "1")
    fails(capsys, "holds no LoRA adapter", "merge-lora", tmp_path, "--out", tmp_path / "m")
