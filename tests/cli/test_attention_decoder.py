"""`scratchlm attention` on decoder-only models (issue 15): the generated continuation's
self-attention, captured from the same kernel that decodes (models.attention)."""

from __future__ import annotations

import pytest
import torch

from scratchlm.cli import main
from scratchlm.modeldir import save_model_dir
from scratchlm.models.attention import capture_attention
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(kind="char", texts=["abcdefgh \n"])


@pytest.mark.parametrize("family, extra", [("gpt", {}), ("llama", {"n_kv_head": 1})])
def test_captured_weights_are_causal_distributions_and_change_nothing(tok, family, extra):
    model = tiny_model(family, vocab_size=tok.vocab_size, **extra).eval()
    x = torch.randint(0, tok.vocab_size, (2, 9))
    with torch.no_grad():
        plain = model(x)
        with capture_attention() as w:
            captured = model(x)
    assert torch.equal(plain, captured)
    assert len(w) == model.config.n_layer
    for a in w:
        assert a.shape == (2, model.config.n_head, 9, 9)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, model.config.n_head, 9))
        assert a.triu(diagonal=1).abs().max() == 0  # no query sees a later key


@pytest.mark.parametrize("family, beams", [("gpt", "1"), ("llama", "2")])
def test_attention_cli_on_a_decoder_only_model(tok, tmp_path, capsys, family, beams):
    d = save_model_dir(tmp_path / family, tiny_model(family, vocab_size=tok.vocab_size).eval(), tok)
    for grid in ([], ["--grid"]):
        png = tmp_path / f"a{len(grid)}.png"
        rc = main(["attention", str(d), "--prompt", "abc", "--out", str(png), "--max-new-tokens", "6",
                   "--num-beams", beams, *grid])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "continuation:" in out.out


def test_attention_cli_errors_are_one_line(tok, tmp_path, capsys):
    rnn = save_model_dir(tmp_path / "rnn", tiny_model("rnn", vocab_size=tok.vocab_size).eval(), tok)
    for args, needle in ((["--prompt", "abc"], "rnn models have no attention to draw"),
                         (["--prompt", "  "], "--prompt is empty"),
                         ([], "give --src TEXT (an encoder-decoder) or --prompt TEXT")):
        rc = main(["attention", str(rnn), "--out", str(tmp_path / "x.png"), *args])
        err = capsys.readouterr().err
        assert rc == 1 and needle in err and "Traceback" not in err, err
        assert not (tmp_path / "x.png").exists()
