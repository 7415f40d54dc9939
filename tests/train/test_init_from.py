"""train.init_from: continue training a model that exists (weights, config and tokenizer from
the source; fresh optimizer; shape changes and foreign tokenizers refused in one line)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli import main
from scratchlm.data.pretrain import prepare
from scratchlm.train.init_from import load_source

TINY = ["--model.family", "gpt", "--model.preset", "tiny", "--model.block_size", "32",
        "--train.batch_size", "4", "--train.eval_every", "5", "--train.eval_batches", "2",
        "--train.warmup_steps", "1", "--train.save_every", "5"]


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def source(char_data, tmp_path_factory):
    """A trained tiny gpt (the model to continue) and new text prepared with its tokenizer."""
    d = tmp_path_factory.mktemp("init_from")
    assert main(["train", "--data", str(char_data), "--out", str(d / "src"), *TINY,
                 "--train.max_steps", "10", "--model.dropout", "0.0"]) == 0
    text = d / "new.txt"
    text.write_text("HAMLET:\nTo be, or not to be, that is the question.\n" * 200, encoding="utf-8")
    prepare([text], out=d / "new-data", tokenizer=str(d / "src" / "final"), val_fraction=0.2,
            show_progress=False)
    return d


def test_starts_from_the_source_weights_with_a_fresh_optimizer(source, capsys):
    load_source.cache_clear()
    src = source / "src" / "final"
    rc = main(["train", "--data", str(source / "new-data"), "--out", str(source / "cont"),
               "--train.init_from", str(src), "--train.max_steps", "1", "--train.lr", "1e-12",
               "--train.batch_size", "4", "--train.eval_every", "1", "--train.eval_batches", "2",
               "--train.warmup_steps", "0"])
    assert rc == 0
    assert f"initialised from {src}" in capsys.readouterr().out
    before, after = weights(src), weights(source / "cont" / "final")
    assert before.keys() == after.keys()
    for k in before:  # one step at lr 1e-12 moves nothing measurable
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6)
    cfg = json.loads((source / "cont" / "final" / "config.json").read_text())
    assert cfg["n_layer"] == json.loads((src / "config.json").read_text())["n_layer"]
    # A real continued run lowers the loss on the new text from where the source was.
    rc = main(["train", "--data", str(source / "new-data"), "--out", str(source / "cont2"),
               "--train.init_from", str(src), "--train.max_steps", "30", "--train.lr", "3e-3",
               "--train.batch_size", "8", "--train.eval_every", "30", "--train.eval_batches", "4",
               "--train.warmup_steps", "2", "--model.dropout", "0.1"])
    assert rc == 0
    first = json.loads((source / "cont" / "metrics.jsonl").read_text().splitlines()[-1])
    last = json.loads((source / "cont2" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] < first["val_loss"]


def test_a_shorter_context_cuts_the_learned_position_table(source):
    load_source.cache_clear()
    src = source / "src" / "final"
    assert main(["train", "--data", str(source / "new-data"), "--out", str(source / "short"),
                 "--train.init_from", str(src), "--model.block_size", "16", "--train.max_steps", "1",
                 "--train.lr", "1e-12", "--train.eval_every", "1", "--train.eval_batches", "1",
                 "--train.batch_size", "2", "--train.warmup_steps", "0"]) == 0
    wpe = weights(source / "short" / "final")["transformer.wpe.weight"]
    assert wpe.shape[0] == 16
    torch.testing.assert_close(wpe, weights(src)["transformer.wpe.weight"][:16], rtol=0, atol=1e-6)


@pytest.mark.parametrize("override, needle", [
    (["--model.n_layer", "3"], "model.n_layer 3"),
    (["--model.d_model", "48"], "model.d_model 48"),
    (["--model.preset", "tiny"], "model.preset cannot be combined"),
    (["--model.block_size", "64"], "a learned position table cannot grow"),
])
def test_shape_changes_are_refused_in_one_line(source, tmp_path, capsys, override, needle):
    rc = main(["train", "--data", str(source / "new-data"), "--out", str(tmp_path / "run"),
               "--train.init_from", str(source / "src" / "final"), "--train.max_steps", "1", *override])
    err = capsys.readouterr().err
    assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "final").exists()


def test_data_of_another_tokenizer_is_refused(source, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("xyz only three letters " * 100, encoding="utf-8")
    prepare([other], out=tmp_path / "other-data", tokenizer="char", show_progress=False)
    rc = main(["train", "--data", str(tmp_path / "other-data"), "--out", str(tmp_path / "run"),
               "--train.init_from", str(source / "src" / "final"), "--train.max_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "was not prepared with the tokenizer of" in err and "--tokenizer" in err


def test_a_missing_source_is_one_line(source, tmp_path, capsys):
    rc = main(["train", "--data", str(source / "new-data"), "--out", str(tmp_path / "run"),
               "--train.init_from", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 1 and "no such model directory or GGUF file" in err


def test_an_encoder_decoder_continues_on_new_pairs(tmp_path, capsys):
    """Continue a seq2seq_transformer on another domain's pairs (data prepared with its tokenizer)."""
    from tests.cli.test_prepare_pairs import write_dataset

    write_dataset(tmp_path / "ds")
    assert main(["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "data"), "--tokenizer", "char"]) == 0
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "src"),
                 "--model.family", "seq2seq_transformer", "--model.preset", "tiny", "--train.max_steps", "5",
                 "--train.batch_size", "8", "--train.eval_every", "5", "--train.eval_batches", "1",
                 "--train.val_translate", "0", "--train.device", "cpu"]) == 0
    src = tmp_path / "src" / "final"
    (tmp_path / "ds2").mkdir()
    lines = [f"the dog number {i} ran\tle chien numero {i} a couru" for i in range(60)]
    (tmp_path / "ds2" / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["prepare", str(tmp_path / "ds2" / "pairs.tsv"), "--out", str(tmp_path / "data2"),
                 "--tokenizer", str(src), "--format", "pairs"]) == 0
    load_source.cache_clear()
    assert main(["train", "--data", str(tmp_path / "data2"), "--out", str(tmp_path / "cont"),
                 "--train.init_from", str(src), "--train.max_steps", "1", "--train.lr", "1e-12",
                 "--train.batch_size", "8", "--train.eval_every", "1", "--train.eval_batches", "1",
                 "--train.val_translate", "0", "--train.warmup_steps", "0"]) == 0
    before, after = weights(src), weights(tmp_path / "cont" / "final")
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6)
    assert "initialised from" in capsys.readouterr().out
