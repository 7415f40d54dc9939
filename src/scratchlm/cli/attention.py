"""Draw what an encoder-decoder attends to while translating:
`scratchlm attention MODEL_DIR --src TEXT --out FILE.png [--layer L] [--head H] [--grid]
[--num-beams K]`. Source tokens run along x, generated tokens (ending with <|eos|>) along y.
RNN models have one attention map; Transformers have one per layer and head, averaged
unless --layer/--head pick one (--grid: one panel per head of --layer, default the last)."""

from __future__ import annotations

import argparse

import torch

from scratchlm.cli.generate import add_precision_arguments, load_for_inference
from scratchlm.data.seq2seq import collate, encode_sources
from scratchlm.errors import ScratchLMError
from scratchlm.eval.attention_plot import plot_attention
from scratchlm.generate.beam import BeamConfig
from scratchlm.generate.decode import GenerationConfig
from scratchlm.generate.translate import translate_nbest
from scratchlm.registry import is_encoder_decoder

HELP = "plot an encoder-decoder's attention over the source while it translates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--src", required=True, help="source text")
    p.add_argument("--out", required=True, help="image path (.png, .pdf or .svg)")
    p.add_argument("--layer", type=int, default=None, help="Transformer layer (default: average)")
    p.add_argument("--head", type=int, default=None, help="attention head (default: average)")
    p.add_argument("--grid", action="store_true", help="one panel per head of one layer")
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.src.strip():
        raise ScratchLMError("--src is empty; give a sentence to translate")
    model, tok = load_for_inference(args, adapters=False)
    if not is_encoder_decoder(model):
        raise ScratchLMError("attention maps over a source need an encoder-decoder model "
                             "(seq2seq_rnn or seq2seq_transformer)")
    beam = BeamConfig(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens) \
        if args.num_beams > 1 else None
    greedy = GenerationConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    out_tokens = translate_nbest(model, tok, [args.src], beam=beam, config=greedy)[0][0][0]
    device = next(model.parameters()).device
    src = encode_sources(tok, [args.src], limit=model.config.block_size)
    batch = collate(src, tokenizer=tok)
    ids, mask = batch["src_ids"].to(device), batch["src_mask"].to(device)
    src_ids = batch["src_ids"][0].tolist()  # its tokens and <|eos|>
    tgt_in = torch.tensor([[tok.bos_id, *out_tokens]], device=device)
    weights = model.cross_attention(model.encode(ids, mask), tgt_in)[:, 0]  # (L, H, T, S)
    label = lambda i: "<eos>" if i == tok.eos_id else tok.decode([i], skip_special_tokens=False)  # noqa: E731
    layer = args.layer if (args.layer is not None or not args.grid) else -1
    path = plot_attention(weights, [label(i) for i in src_ids],
                          [label(i) for i in [*out_tokens, tok.eos_id]], args.out,
                          title=f"{_cut(args.src)} -> {_cut(tok.decode(out_tokens))}",
                          layer=layer, head=args.head, grid=args.grid)
    print(f"translation: {tok.decode(out_tokens)}")
    print(f"wrote {path}")
    return 0


def _cut(text: str, limit: int = 120) -> str:
    """Text for a plot title: whole up to `limit` characters, else cut at a word with "..."."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
