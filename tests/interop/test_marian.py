"""Marian (opus-mt) into the seq2seq_transformer family: a randomly initialised
`MarianMTModel` with a MarianTokenizer (sentencepiece + vocab.json) imports with the same
tokens, logits and greedy translations, and exports back to a Marian directory."""

from __future__ import annotations

import io
import json

import pytest
import torch

import scratchlm
from scratchlm.modeldir import save_model_dir

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")

TEXTS = ["Select one of the options and click OK.", "The quick brown fox jumps over the dog.",
         "Sélectionnez l'une de ces options et cliquez sur OK.", "我喜欢吃苹果。"]
SOURCES = ["Select the options, click OK.", "  The lazy   fox  ", ">>fra<< Sélectionnez OK",
           "我喜欢 apples"]


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("marian")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 50), model_writer=buf, vocab_size=50, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        unk_id=1, eos_id=0, bos_id=-1, pad_id=-1, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (d / name).write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab[">>fra<<"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    tok = transformers.MarianTokenizer(source_spm=str(d / "source.spm"),
                                       target_spm=str(d / "target.spm"), vocab=str(d / "vocab.json"))
    tok.save_pretrained(d)
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=vocab["<pad>"],
        decoder_start_token_id=vocab["<pad>"], eos_token_id=0, forced_eos_token_id=None,
        activation_function="swish", scale_embedding=True, init_std=0.2)
    torch.manual_seed(0)
    ref = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms, biases and final_logits_bias
        for n, p in ref.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
        ref.final_logits_bias.normal_(0, 0.5)
    ref.save_pretrained(d)
    return d, ref, tok


def _logits(model, tok, ref_tok, tgt):
    enc = ref_tok(SOURCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(tgt, memory=model.encode(enc.input_ids, enc.attention_mask.bool()))


def _greedy_ours(model, tok, src_ids):
    memory = model.encode(src_ids)
    start = torch.full((src_ids.shape[0], 1), tok.bos_id)
    cfg = scratchlm.GenerationConfig(max_new_tokens=20, temperature=0)
    steps = scratchlm.generate_tokens(model, start, config=cfg, memory=memory)
    return torch.stack(list(steps), 1).tolist()


def test_marian_import_export_parity(marian_dir, tmp_path):
    d, ref, ref_tok = marian_dir
    model, tok = scratchlm.load(d)
    assert model.config.family == "seq2seq_transformer" and model.config.sinusoid_layout == "split"

    # Sources tokenize as MarianTokenizer does (pieces + </s>); targets start from its pad.
    for s in SOURCES:
        assert tok.encode(s) + [tok.eos_id] == ref_tok(s)["input_ids"]
    assert tok.bos_id == ref.config.decoder_start_token_id

    enc = ref_tok(SOURCES, padding=True, return_tensors="pt")
    tgt = torch.randint(0, tok.vocab_size, (len(SOURCES), 12))
    tgt[:, 0] = tok.bos_id
    with torch.no_grad():
        want = ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                   decoder_input_ids=tgt).logits
    diff = (_logits(model, tok, ref_tok, tgt) - want).abs().max().item()
    print(f"marian: import max |logit diff| {diff:.2e}")
    assert diff < 1e-4

    src = ref_tok(SOURCES[:1], return_tensors="pt").input_ids
    theirs = ref.generate(src, max_new_tokens=20, min_new_tokens=20, num_beams=1, do_sample=False,
                          eos_token_id=None, forced_eos_token_id=None)
    assert _greedy_ours(model, tok, src) == theirs[:, 1:].tolist()

    out = tmp_path / "hf"
    save_model_dir(out, model, tok, plain_hf=True)
    assert "scratchlm" not in json.loads((out / "config.json").read_text())
    back = transformers.MarianMTModel.from_pretrained(out).eval()
    with torch.no_grad():
        got = back(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                   decoder_input_ids=tgt).logits
    diff = (got - want).abs().max().item()
    print(f"marian: export max |logit diff| {diff:.2e}")
    assert diff < 1e-4
    fast = transformers.AutoTokenizer.from_pretrained(out)
    assert fast(SOURCES[0])["input_ids"] == ref_tok(SOURCES[0])["input_ids"]
    again, _ = scratchlm.load(out)  # and the exported directory imports again
    assert (_logits(again, tok, ref_tok, tgt) - want).abs().max().item() < 1e-4
