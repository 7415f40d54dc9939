"""Draw what a model attends to while it generates:
`scratchlm attention MODEL_DIR --src TEXT --out FILE.png [--layer L] [--head H] [--grid]
[--num-beams K]` for an encoder-decoder (cross-attention: source tokens along x, generated
tokens, ending with <|eos|>, along y), and `scratchlm attention MODEL_DIR --prompt TEXT --out
FILE.png ...` for a decoder-only Transformer (self-attention: each generated token's row is
the attention of the position that produced it, over the prompt and the output before it).
RNN encoder-decoders have one attention map; Transformers have one per layer and head,
averaged unless --layer/--head pick one (--grid: one panel per head of --layer, default the
last)."""

from __future__ import annotations

import argparse

import torch

from scratchlm.cli.generate import add_precision_arguments, load_for_inference
from scratchlm.data.seq2seq import collate, encode_sources
from scratchlm.errors import ScratchLMError
from scratchlm.eval.attention_plot import plot_attention
from scratchlm.generate.beam import BeamConfig, beam_search
from scratchlm.generate.decode import GenerationConfig, generate_tokens
from scratchlm.generate.translate import translate_nbest
from scratchlm.models.attention import capture_attention
from scratchlm.registry import is_encoder_decoder

HELP = "plot an encoder-decoder's attention over the source while it translates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--src", help="source text (an encoder-decoder)")
    p.add_argument("--prompt", help="text to continue (a decoder-only model)")
    p.add_argument("--out", required=True, help="image path (.png, .pdf or .svg)")
    p.add_argument("--layer", type=int, default=None, help="Transformer layer (default: average)")
    p.add_argument("--head", type=int, default=None, help="attention head (default: average)")
    p.add_argument("--grid", action="store_true", help="one panel per head of one layer")
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    text = args.src if args.src is not None else args.prompt
    if text is None:
        raise ScratchLMError("give --src TEXT (an encoder-decoder) or --prompt TEXT (a decoder-only model)")
    if not text.strip():
        raise ScratchLMError(f"{'--src' if args.src is not None else '--prompt'} is empty; give some text")
    model, tok = load_for_inference(args, adapters=False)
    if not is_encoder_decoder(model):
        if args.prompt is None:
            raise ScratchLMError("this is a decoder-only model: give the text to continue with --prompt")
        return _decoder_only(args, model, tok, text)
    if args.src is None:
        raise ScratchLMError("this is an encoder-decoder: give the sentence to translate with --src")
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


def _decoder_only(args: argparse.Namespace, model, tok, text: str) -> int:
    """Self-attention of a decoder-only model while it continues `text` (greedy or beam)."""
    ids = tok.encode(text) or [tok.eos_id]
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)
    if args.num_beams > 1:
        beam = BeamConfig(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
        out = beam_search(model, prompt, config=beam, eos_id=tok.eos_id)[0][0].tokens
    else:
        greedy = GenerationConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
        out = torch.stack(list(generate_tokens(model, prompt, config=greedy, eos_id=tok.eos_id,
                                               pad_id=tok.pad_id)), 1)[0].tolist()
    out = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
    if not out:
        raise ScratchLMError("the model ended the text at once (<|eos|> first): no generated token to draw")
    seq, P = ids + out, len(ids)
    with torch.no_grad(), capture_attention() as captured:
        model(torch.tensor([seq], device=device))
    if not captured:
        raise ScratchLMError(f"{model.config.family} models have no attention to draw")
    # Row i: the query at the position that produced out[i], over the keys it could see.
    weights = torch.stack([w[0] for w in captured])[:, :, P - 1 : len(seq) - 1, : len(seq) - 1]
    label = lambda i: "<eos>" if i == tok.eos_id else tok.decode([i], skip_special_tokens=False)  # noqa: E731
    layer = args.layer if (args.layer is not None or not args.grid) else -1
    path = plot_attention(weights, [label(i) for i in seq[:-1]], [label(i) for i in out], args.out,
                          title=f"{_cut(text)} -> {_cut(tok.decode(out))}", layer=layer,
                          head=args.head, grid=args.grid, keys_label="prompt + output")
    print(f"continuation: {tok.decode(out)}")
    print(f"wrote {path}")
    return 0


def _cut(text: str, limit: int = 120) -> str:
    """Text for a plot title: whole up to `limit` characters, else cut at a word with "..."."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
