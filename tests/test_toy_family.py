"""Adding a model family is its file, one registry line and its test (issue 15): a toy GRU
language model, registered here, trains, generates, beam-searches and is served exactly like
the built-in families, and export refuses it in one line, without touching any other file."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from scratchlm import registry
from scratchlm.cli import main
from scratchlm.generate import GenerationConfig, generate
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.modeldir import load
from scratchlm.models.cache import RNNState
from scratchlm.models.config import check_sizes
from scratchlm.serve.batching import Engine, Job


# ----------------------------------------------------------------------------- "its file"
@dataclass
class ToyConfig:
    family: str = "toy"
    preset: str | None = None
    vocab_size: int = 0
    n_layer: int = 1
    d_model: int = 32
    block_size: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_sizes(self, ("n_layer", "d_model", "block_size"))


class Toy(nn.Module):
    """A GRU language model: the smallest thing that keeps the decoder protocol."""

    max_context = None  # a recurrent state has no positions to run out of

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.rnn = nn.GRU(config.d_model, config.d_model, config.n_layer, batch_first=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_cache(self, *, batch_size: int, max_len: int = 0) -> RNNState:
        p = next(self.parameters())
        return RNNState(h=torch.zeros(self.config.n_layer, batch_size, self.config.d_model,
                                      device=p.device, dtype=p.dtype))

    def forward(self, input_ids, *, cache=None, logits_to_keep: int = 0):
        out, h = self.rnn(self.embed_tokens(input_ids), None if cache is None else cache.h)
        logits = self.lm_head(out[:, -logits_to_keep:] if logits_to_keep else out)  # (B, T, V)
        if cache is None:
            return logits
        cache.h = h
        cache.advance(input_ids.shape[1])
        return logits, cache


# ----------------------------------------------------------------------------- "one registry line"
@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    families = registry._families

    monkeypatch.setattr(registry, "_families", lambda: {
        **families(), "toy": registry.FamilySpec("toy", ToyConfig, Toy, {"tiny": {"d_model": 32}})})


# ----------------------------------------------------------------------------- "its test"
@pytest.fixture()
def trained(char_data, tmp_path, capsys):
    rc = main(["train", "--data", str(char_data), "--out", str(tmp_path / "run"), "--model.family", "toy",
               "--model.preset", "tiny", "--train.max_steps", "20", "--train.batch_size", "4",
               "--train.eval_every", "10", "--train.eval_batches", "2", "--train.warmup_steps", "2",
               "--train.lr", "3e-3"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "model: toy" in out.out and "generate with:" in out.out
    return tmp_path / "run" / "final"


def test_a_toy_family_trains_generates_beam_searches_and_serves(trained, tmp_path, capsys):
    model, tok = load(trained)
    assert isinstance(model, Toy) and model.config.vocab_size == tok.vocab_size
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    text = generate(model, tok, "ROMEO:", cfg)[0]
    assert len(text) > 0
    ids = torch.tensor([tok.encode("ROMEO:")])
    beam1 = beam_search(model, ids, config=BeamConfig(num_beams=1, max_new_tokens=12), eos_id=tok.eos_id)
    assert tok.decode(beam1[0][0].tokens) == text  # beam 1 is greedy
    beams = beam_search(model, ids, config=BeamConfig(num_beams=3, max_new_tokens=12, num_return_sequences=3),
                        eos_id=tok.eos_id)[0]
    assert len(beams) == 3 and beams[0].score >= beams[-1].score
    # The server's engine: two requests in one batch give what generate gives alone.
    engine = Engine(model, tok, max_rows=4)
    got: dict[str, list[str]] = {"a": [], "b": []}
    for name, prompt in (("a", "ROMEO:"), ("b", "JULIET: O")):
        engine.submit(Job(config=cfg, prompt=tok.encode(prompt),
                          emit=lambda ev, n=name: got[n].append(ev.text) if ev.kind == "text" else None))
    for _ in range(100):
        engine.step()
        if engine.stats()["running_rows"] == 0 and not engine.stats()["waiting"]:
            break
    assert "".join(got["a"]) == text
    assert "".join(got["b"]) == generate(model, tok, "JULIET: O", cfg)[0]
    assert main(["generate", str(trained), "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + text + "\n"


@pytest.mark.parametrize("dst", ["hf-out", "model.gguf"])
def test_export_refuses_a_toy_family_in_one_line(trained, tmp_path, capsys, dst):
    args = ["convert", str(trained), str(tmp_path / dst)] + (["--to", "hf"] if dst == "hf-out" else [])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "toy" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / dst).exists()

