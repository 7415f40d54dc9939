"""The CLI end to end on a tiny corpus, in a subprocess like a user runs it."""

import json
import os
import subprocess
import sys
import warnings

import torch

from scratchlm.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "scratchlm", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def cli_in_process(capfd, *args):
    """`scratchlm ARGS` run through the CLI's `main` in this process, as a CompletedProcess
    (no interpreter and torch start-up: for tests of an error's message and exit code; each
    kind of such test keeps one real subprocess). stderr is what reached file descriptor 2
    plus the warnings Python would print there (its default filters: not the Deprecation,
    Import and Resource warnings), so the "one line" checks see what a user sees; an
    exception that escapes `main` (a traceback in a real run) fails the test as it is."""
    argv = [str(a) for a in args]
    capfd.readouterr()
    threads = torch.get_num_threads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    out = capfd.readouterr()
    err = out.err + "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                            for w in caught)
    return subprocess.CompletedProcess(["scratchlm", *argv], rc, out.out, err)


def assert_clean_error(proc, needle):
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_train_outputs(run):
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"]:
        assert (run / "run" / "final" / f).is_file()
    assert (run / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "run" / "metrics.jsonl").read_text().count("val_loss") == 2


def test_generate_and_evaluate(run, capfd):
    out = cli("generate", run / "run" / "final", "--prompt", "ROMEO:", "--max-new-tokens", "20",
              "--seed", "1", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05",
              "--repetition-penalty", "1.1")
    assert out.stdout.startswith("ROMEO:") and len(out.stdout) > len("ROMEO:\n")
    # The rest in this process through the same `main` (the first run above is the real
    # command's): the seeded sample equals the one of that fresh process.
    again = cli_in_process(capfd, "generate", run / "run" / "final", "--prompt", "ROMEO:",
                           "--max-new-tokens", "20", "--seed", "1", "--top-k", "5",
                           "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.1")
    assert again.returncode == 0, again.stderr
    assert again.stdout == out.stdout  # seeded
    many = cli_in_process(capfd, "generate", run / "run" / "final", "--prompt", "A",
                          "--num-samples", "3", "--max-new-tokens", "10", "--greedy")
    assert many.returncode == 0, many.stderr
    assert many.stdout.count("--- sample") == 3
    beams = cli_in_process(capfd, "generate", run / "run" / "final", "--prompt", "A",
                           "--num-beams", "4", "--num-samples", "2", "--max-new-tokens", "8")
    assert beams.returncode == 0, beams.stderr
    assert beams.stdout.count("--- beam") == 2
    ev = cli_in_process(capfd, "evaluate", run / "run" / "final", "--data", run / "data", "--json")
    assert ev.returncode == 0, ev.stderr
    r = json.loads(ev.stdout.strip().splitlines()[-1])
    assert r["perplexity"] > 1 and 0 < r["bits_per_byte"] < 20


def test_resume_and_plot(run, capfd):
    out = cli("train", "--out", run / "run", "--resume", "--train.max_steps", "24", "--train.eval_every", "12",
              "--train.threads", "2")
    assert "(1 process, cpu, 2 torch threads)" in out.stdout  # the tests' default is 1 thread
    rows = [json.loads(x) for x in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 24
    out = cli_in_process(capfd, "plot", run / "run", "--out", run / "curve.png")  # same main
    assert out.returncode == 0, out.stderr
    assert (run / "curve.png").is_file() and "curve.png" in out.stdout


def test_user_errors_are_one_clean_line(run, tmp_path, capfd):
    # The installed command's exit code and stderr, in a real process: an unknown verb
    # (caught before any verb runs) and an error a verb raises.
    assert_clean_error(cli("trian", check=False), "did you mean 'train'")
    assert_clean_error(cli("generate", tmp_path / "nothing", "--prompt", "x", check=False),
                       "does not exist")

    # The other messages through the same `main`, in this process.
    def inproc(*args):
        return cli_in_process(capfd, *args)

    assert_clean_error(inproc("train", "--data", run / "data", "--out", tmp_path / "r",
                              "--model.n_layers", "2"), "did you mean model.n_layer")
    assert_clean_error(inproc("train", "--data", run / "data", "--out", tmp_path / "r",
                              "--train.lr", "fast"), "train.lr must be a number")
    assert_clean_error(inproc("train", "--data", run / "data", "--out", tmp_path / "r",
                              "--train.threads", "-1"), "train.threads must be >= 0")
    assert_clean_error(inproc("train", "--data", run / "data", "--out", run / "run"),
                       "already holds a run")
    assert_clean_error(inproc("train", "--out", run / "run", "--resume", "--model.n_layer", "3"),
                       "model.n_layer")
    assert_clean_error(inproc("generate", run / "run" / "final", "--prompt", "x" * 200),
                       "shorten the prompt")
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(inproc("prepare", tmp_path / "empty.txt", "--out", tmp_path / "d"),
                       "empty")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02" * 10)
    assert_clean_error(inproc("prepare", tmp_path / "bin.dat", "--out", tmp_path / "d"),
                       "binary")
    assert not (tmp_path / "d").exists()


def test_corrupt_model_directory(run, tmp_path, capfd):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run / "run" / "final", bad)
    (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    assert_clean_error(cli("generate", bad, "--prompt", "x", check=False), "corrupt")
    (bad / "model.safetensors").unlink()  # the other two in this process, the same `main`
    assert_clean_error(cli_in_process(capfd, "generate", bad, "--prompt", "x"), "model.safetensors")
    (bad / "config.json").write_text("{")
    assert_clean_error(cli_in_process(capfd, "generate", bad, "--prompt", "x"), "not valid JSON")


def test_python_api(run):
    import torch

    import scratchlm

    model, tok = scratchlm.load(run / "run" / "final")
    ids = torch.tensor([tok.encode("ROMEO: hello")])
    assert model(ids).shape == (1, ids.shape[1], model.config.vocab_size)
    cache = model.init_cache(batch_size=1, max_len=ids.shape[1])
    logits, cache = model(ids, cache=cache)
    assert cache.length == ids.shape[1]
    texts = scratchlm.generate(model, tok, "ROMEO:", scratchlm.GenerationConfig(max_new_tokens=5, num_samples=2))
    assert len(texts) == 2
