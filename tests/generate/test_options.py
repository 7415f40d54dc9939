"""Every decoding option in every mode (greedy, sampling, beam) is honoured or refused:
n-gram blocking and repetition penalty act the same in greedy and beam (beam 1 == greedy),
stop strings end beams, and options beam search cannot honour are refused in one line."""

from __future__ import annotations

import pytest
import torch

from scratchlm.cli import main
from scratchlm.generate import GenerationConfig, generate_tokens, sampling
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import generate, stop_at, stop_checker
from scratchlm.tokenizers import train_tokenizer
from tests.conftest import FAMILIES, tiny_model


def ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def greedy(model, prompt, **cfg):
    return torch.stack(list(generate_tokens(model, prompt, config=GenerationConfig(
        max_new_tokens=24, temperature=0, **cfg))), 1).tolist()


def test_no_repeat_ngram_bans_exactly_the_completing_tokens():
    logits = torch.zeros(2, 6)
    out = sampling.no_repeat_ngram(logits, [[1, 2, 3, 1, 2], [4, 4, 4]], 3)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [3]  # "1 2" was followed by 3
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [4]  # "4 4" was followed by 4
    assert torch.equal(sampling.no_repeat_ngram(logits, [[1, 2]], 3), logits)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n", [2, 3])
def test_greedy_and_sampling_never_repeat_an_ngram(family, n):
    model = tiny_model(family, vocab_size=8).eval()  # a small vocabulary repeats itself fast
    prompt = torch.tensor([[1, 2, 3, 1], [5, 6, 5, 6]])
    free = greedy(model, prompt)
    assert any(len(set(ngrams(p + r, n))) < len(ngrams(p + r, n))
               for p, r in zip(prompt.tolist(), free, strict=True)), "the test needs repeats to ban"
    for rows in (greedy(model, prompt, no_repeat_ngram_size=n),
                 torch.stack(list(generate_tokens(model, prompt, config=GenerationConfig(
                     max_new_tokens=24, temperature=1.0, seed=3, no_repeat_ngram_size=n))), 1).tolist()):
        for p, r in zip(prompt.tolist(), rows, strict=True):
            # The prompt may repeat itself; nothing generated repeats an n-gram seen before.
            seq = p + r
            for i in range(len(p) - n + 1, len(seq) - n + 1):
                assert tuple(seq[i : i + n]) not in ngrams(seq[: i + n - 1], n)


def test_no_repeat_ngram_ignores_left_padding():
    model = tiny_model("gpt", vocab_size=8).eval()
    alone = greedy(model, torch.tensor([[3, 4, 3]]), no_repeat_ngram_size=2)[0]
    padded = torch.stack(list(generate_tokens(
        model, torch.tensor([[4, 4, 3, 4, 3], [1, 2, 3, 4, 5]]), left_pad=torch.tensor([2, 0]),
        config=GenerationConfig(max_new_tokens=24, temperature=0, no_repeat_ngram_size=2))), 1)
    assert padded[0].tolist() == alone  # the padding ids (4 4) are not part of the row


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("opts", [{"repetition_penalty": 3.0}, {"no_repeat_ngram_size": 2},
                                  {"repetition_penalty": 2.0, "no_repeat_ngram_size": 3}])
def test_beam_1_equals_greedy_with_the_same_options(family, opts):
    model = tiny_model(family, vocab_size=8, init_std=1.0).eval()  # varied, peaky logits
    prompt = torch.tensor([[1, 2, 3, 1], [5, 6, 5, 6]])
    hyps = beam_search(model, prompt, config=BeamConfig(num_beams=1, max_new_tokens=24, **opts),
                       eos_id=None)
    assert [h[0].tokens for h in hyps] == greedy(model, prompt, **opts)
    assert [h[0].tokens for h in hyps] != greedy(model, prompt)  # the options changed something


def test_beam_with_an_n_gram_ban_repeats_no_ngram():
    model = tiny_model("llama", vocab_size=8).eval()
    prompt = [1, 2, 3]
    for h in beam_search(model, torch.tensor([prompt]), eos_id=None, config=BeamConfig(
            num_beams=4, num_return_sequences=4, max_new_tokens=20, no_repeat_ngram_size=2))[0]:
        seq = prompt + h.tokens
        assert len(set(ngrams(seq, 2))) == len(ngrams(seq, 2))


def test_stop_strings_end_beams():
    tok = train_tokenizer(kind="char", texts=["abcdefgh \n"])
    model = tiny_model("gpt", vocab_size=tok.vocab_size).eval()
    ids = torch.tensor([tok.encode("ab")])
    free = beam_search(model, ids, config=BeamConfig(num_beams=3, max_new_tokens=30), eos_id=tok.eos_id)
    text = tok.decode(free[0][0].tokens)
    stop = text[4:6]
    assert stop_at(text, [stop]) == text.find(stop)
    hyps = beam_search(model, ids, config=BeamConfig(num_beams=3, max_new_tokens=30, num_return_sequences=3),
                       eos_id=tok.eos_id, ends=stop_checker(tok, [stop]))[0]
    assert any(stop_at(tok.decode(h.tokens), [stop]) is not None for h in hyps)
    for h in hyps:  # each hypothesis ends at its first stop string (or eos, or the length)
        assert stop_at(tok.decode(h.tokens[:-1]), [stop]) is None


def test_generate_stop_cut_equals_stop_at():
    tok = train_tokenizer(kind="char", texts=["abcdefgh \n"])
    model = tiny_model("gpt", vocab_size=tok.vocab_size).eval()
    cfg = dict(max_new_tokens=40, temperature=1.0, seed=0)
    free = generate(model, tok, "ab", GenerationConfig(**cfg))[0]
    stops = [free[7:9], free[3:5]]
    cut = generate(model, tok, "ab", GenerationConfig(**cfg, stop=stops))[0]
    assert cut == free[: stop_at(free, stops)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from scratchlm.modeldir import save_model_dir

    tok = train_tokenizer(kind="char", texts=["abcdefgh \n"])
    model = tiny_model("gpt", vocab_size=tok.vocab_size).eval()
    d = tmp_path_factory.mktemp("opts") / "m"
    save_model_dir(d, model=model, tokenizer=tok)
    return d


@pytest.mark.parametrize("flags, needle", [
    (["--num-beams", "3", "--top-k", "5"], "--top-k sample(s) tokens"),
    (["--num-beams", "3", "--seed", "1"], "--seed sample(s) tokens"),
    (["--num-beams", "0"], "--num-beams must be at least 1"),
    (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size must be >= 0"),
    (["--num-beams", "2", "--repetition-penalty", "0"], "repetition_penalty must be > 0"),
])
def test_cli_refuses_what_it_cannot_honour(model_dir, capsys, flags, needle):
    assert main(["generate", str(model_dir), "--prompt", "ab", "--max-new-tokens", "5", *flags]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err


def test_cli_beam_honours_stop_and_ngram(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "ab", "--max-new-tokens", "30",
                 "--num-beams", "3"]) == 0
    free = capsys.readouterr().out.rstrip("\n")[2:]  # after the prompt
    stop = free[3:5]
    assert main(["generate", str(model_dir), "--prompt", "ab", "--max-new-tokens", "30",
                 "--num-beams", "3", "--stop", stop, "--no-repeat-ngram-size", "3"]) == 0
    out = capsys.readouterr().out.rstrip("\n")[2:]
    assert stop not in out
    # Greedy honours the n-gram ban too (checked token by token in the tests above).
    runs = []
    for extra in ([], ["--no-repeat-ngram-size", "2"]):
        assert main(["generate", str(model_dir), "--prompt", "ab", "--max-new-tokens", "30",
                     "--greedy", *extra]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] != runs[1]
