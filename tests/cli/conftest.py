"""The decoder-only CLI run that tests/cli/test_cli.py and test_seq2seq_cli.py both use."""

import json

import pytest

from scratchlm.cli import main
from tests.cli.test_cli import cli


@pytest.fixture(scope="session")
def run(corpus, tmp_path_factory):
    """tokenizer train -> prepare -> train -> final model dir (bpe, gpt family). Session
    scope, built once: test_seq2seq_cli only reads it (a decoder-only model and data);
    test_cli's resume continues it to step 24, which those reads do not depend on."""
    d = tmp_path_factory.mktemp("cli")
    cli("tokenizer", "train", "--input", corpus, "--kind", "bpe", "--vocab-size", "400", "--out", d / "tok")
    assert json.loads((d / "tok" / "tokenizer_config.json").read_text())["scratchlm_kind"] == "bpe"
    # prepare in this process (the same `main`; prepare's real command runs in test_prepare_pairs)
    assert main(["prepare", str(corpus), "--out", str(d / "data"), "--tokenizer", str(d / "tok"),
                 "--val-fraction", "0.2"]) == 0
    out = cli("train", "--data", d / "data", "--out", d / "run", "--model.family", "gpt",
              "--model.preset", "tiny", "--model.block_size", "32", "--train.max_steps", "20",
              "--train.batch_size", "4", "--train.eval_every", "10", "--train.eval_batches", "2",
              "--train.warmup_steps", "2")
    assert "generate with:" in out.stdout
    return d
