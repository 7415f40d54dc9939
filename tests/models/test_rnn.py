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
