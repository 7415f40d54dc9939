"""Train, translate, evaluate and plot attention for an encoder-decoder, end to end through
the CLI on a tiny pairs dataset; and the errors of mixing the two kinds of model and data."""

import json

import pytest

from tests.cli.test_cli import assert_clean_error, cli, cli_in_process
from tests.cli.test_prepare_pairs import write_dataset


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    d = tmp_path_factory.mktemp("mt")
    write_dataset(d / "ds")
    cli("prepare", d / "ds", "--out", d / "data", "--tokenizer", "char")
    out = cli("train", "--data", d / "data", "--out", d / "run", "--model.family", "seq2seq_transformer",
              "--model.preset", "tiny", "--train.max_steps", "30", "--train.batch_size", "8",
              "--train.eval_every", "15", "--train.eval_batches", "2", "--train.val_translate", "4",
              "--train.best_metric", "val_bleu", "--train.label_smoothing", "0.1",
              "--train.teacher_forcing_end", "0.8", "--train.device", "cpu")
    return d, out


def test_train_logs_bleu_and_keeps_best_by_it(mt):
    d, out = mt
    assert "val bleu" in out.stdout and "translate with:" in out.stdout
    records = [json.loads(line) for line in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bleu" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert all(0 <= r["val_bleu"] <= 100 and 0 <= r["val_chrf"] <= 100 for r in evals)
    assert (d / "run" / "best" / "model.safetensors").is_file()


def test_translate_evaluate_attention(mt, tmp_path, capfd):
    d, _ = mt
    model = d / "run" / "final"
    one = cli("translate", model, "--src", "the cat number 3 sat on the mat", "--num-beams", "3")
    assert len(one.stdout.splitlines()) == 1

    # The rest in this process, through the same `main` as the real command above.
    def ok(*args):
        proc = cli_in_process(capfd, *args)
        assert proc.returncode == 0, proc.stderr
        return proc

    nbest = ok("translate", model, "--src", "the cat", "--num-beams", "3", "--num-return-sequences", "3")
    assert len(nbest.stdout.splitlines()) == 3 and all("\t" in ln for ln in nbest.stdout.splitlines())
    (tmp_path / "in.txt").write_text("the cat\nthe mat\n", encoding="utf-8")
    ok("translate", model, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.txt")
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 2
    ev = ok("evaluate", model, "--data", d / "data", "--metric", "bleu", "--metric", "chrf",
            "--metric", "ppl", "--json")
    r = json.loads(ev.stdout.strip().splitlines()[-1])
    assert r["pairs"] == 10 and r["split"] == "test"
    assert r["bleu"]["signature"].startswith("nrefs:1|") and r["ppl"]["perplexity"] > 1
    ev = ok("evaluate", model, "--data", d / "ds" / "test.tsv", "--metric", "rouge")
    assert "ROUGE-1" in ev.stdout and "ROUGE-L" in ev.stdout
    att = ok("attention", model, "--src", "the cat sat", "--out", tmp_path / "a.png", "--grid")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in att.stdout


def test_max_new_tokens_is_honoured_by_evaluate_and_attention(mt, tmp_path, capfd):
    """Issue 15: these two accepted --max-new-tokens and then ignored it (greedy). In this
    process, through the CLI's `main` (the real command runs in the test above)."""
    d, _ = mt
    model = d / "run" / "final"

    def cli(*args):
        proc = cli_in_process(capfd, *args)
        assert proc.returncode == 0, proc.stderr
        return proc

    for beams in ("1", "3"):
        cli("evaluate", model, "--data", d / "data", "--metric", "chrf", "--max-new-tokens", "2",
            "--num-beams", beams, "--hyps-out", tmp_path / f"h{beams}.jsonl")
        rows = [json.loads(x) for x in (tmp_path / f"h{beams}.jsonl").read_text().splitlines()]
        assert rows and all(len(r["output"]) <= 2 for r in rows), rows[:3]  # char model: 2 tokens
    att = cli("attention", model, "--src", "the cat sat", "--out", tmp_path / "a.png",
              "--max-new-tokens", "3")
    line = next(x for x in att.stdout.splitlines() if x.startswith("translation: "))
    assert len(line[len("translation: "):]) <= 3


def test_mixing_kinds_is_a_clean_error(mt, run, tmp_path, capfd):
    d, _ = mt
    assert_clean_error(cli("generate", d / "run" / "final", "--prompt", "hi", check=False),
                       "scratchlm translate")  # the real command; the others in this process
    assert_clean_error(cli_in_process(capfd, "translate", run / "run" / "final", "--src", "hi"),
                       "decoder-only")
    assert_clean_error(cli_in_process(capfd, "train", "--data", d / "data", "--out", tmp_path / "r",
                                      "--model.family", "llama", "--model.preset", "tiny"),
                       "encoder-decoder")
    assert_clean_error(cli_in_process(capfd, "train", "--data", run / "data", "--out", tmp_path / "r2",
                                      "--model.family", "seq2seq_rnn"), "parallel")
    assert_clean_error(cli_in_process(capfd, "evaluate", d / "run" / "final", "--data",
                                      d / "nope.tsv"), "not a pairs file")
