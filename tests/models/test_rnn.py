"""The recurrent family through the same decoder protocol, beam search and Trainer."""

import pytest
import torch

import scratchlm
from scratchlm.generate import BeamConfig, GenerationConfig, beam_search, generate_tokens
from scratchlm.modeldir import save_model_dir
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import tiny_model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_equals_full_and_reorder(cell):
    model = tiny_model("rnn", cell=cell, n_layer=2).eval()
    x = torch.randint(0, 97, (3, 9))
    full = model(x)
    state = model.init_cache(batch_size=3, max_len=0)
    steps = []
    for t in range(9):
        logits, state = model(x[:, t : t + 1], cache=state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    state = model.init_cache(batch_size=3)
    _, state = model(x[:, :5], cache=state)
    state.reorder(torch.tensor([1, 1, 2]))
    out, _ = model(x[[1, 1, 2], 5:], cache=state)
    torch.testing.assert_close(out, model(x[[1, 1, 2]])[:, 5:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_1_equals_greedy_and_save_load(cell, tmp_path):
    tok = train_tokenizer(kind="char", texts=["abc def\n"])
    model = tiny_model("rnn", cell=cell, vocab_size=tok.vocab_size, tie_embeddings=True).eval()
    prompt = torch.tensor([tok.encode("abc")])
    greedy = [int(t) for t in generate_tokens(model, prompt, config=GenerationConfig(
        max_new_tokens=100, temperature=0))]  # beyond block_size: no context limit
    assert len(greedy) == 100
    hyp = beam_search(model, prompt, config=BeamConfig(num_beams=1, max_new_tokens=100), eos_id=None)
    assert hyp[0][0].tokens == greedy
    save_model_dir(tmp_path, model, tok)
    again, _ = scratchlm.load(tmp_path)
    assert again.lm_head.weight is again.embed_tokens.weight
    torch.testing.assert_close(again(prompt), model(prompt))


def test_rnn_lm_learns_to_copy(tmp_path, cell="lstm"):
    """A decoder-only RNN learns `x1..xn | x1..xn` (n = 2..4) through the one Trainer and
    lm_loss, to >= 95% exact greedy copies of held-out strings."""
    import numpy as np

    from scratchlm.config import run_config_from_dict
    from scratchlm.registry import build_model
    from scratchlm.train.trainer import Trainer

    V, SEP = 12, 11  # symbols 1..10, separator 11, pad 0

    def batches(split, rng):
        B, T = 32, 10
        x = torch.zeros(B, T, dtype=torch.long)
        y = torch.full((B, T), -100)
        for r in range(B):
            n = int(rng.integers(2, 5))
            s = [int(v) for v in rng.integers(1, 11, size=n)]
            seq = [*s, SEP, *s]
            x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            y[r, n : len(seq) - 1] = torch.tensor(seq[n + 1 :])  # loss only on the copy
        return {"input_ids": x, "labels": y}

    tok = train_tokenizer(kind="char", texts=["x"])
    cfg = run_config_from_dict({
        "model": {"family": "rnn", "cell": cell, "vocab_size": V, "n_layer": 1, "d_model": 64,
                  "block_size": 10, "dropout": 0.0},
        "train": {"max_steps": 500, "lr": 1e-2, "warmup_steps": 20, "eval_every": 500,
                  "eval_batches": 1, "save_every": 500, "device": "cpu", "weight_decay": 0.0},
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    Trainer(model=model, config=cfg, tokenizer=tok, batches=batches, out_dir=tmp_path,
            show_progress=False).fit()
    model.eval()
    rng = np.random.default_rng(777)
    correct = 0
    for _ in range(40):
        n = int(rng.integers(2, 5))
        s = [int(v) for v in rng.integers(1, 11, size=n)]
        out = list(generate_tokens(model, torch.tensor([[*s, SEP]]),
                                   config=GenerationConfig(max_new_tokens=n, temperature=0)))
        correct += [int(t) for t in out] == s
    assert correct / 40 >= 0.95, f"{correct}/40"
