"""Convert a model between formats: `scratchlm convert SRC DST [--to scratchlm|hf|gguf
--outtype f32|f16|bf16|q8_0|q4_0|q4_1|q4_k_m --overwrite]`.

SRC is a scratchlm model directory, a Hugging Face model directory (config.json, weights in
model.safetensors, sharded safetensors with an index, or pytorch_model.bin; tokenizer.json,
tokenizer_config.json, chat template) or a GGUF file. DST is written as:

- scratchlm (the default for a directory): our model directory. For gpt and llama models it
  is also a Hugging Face directory that `transformers` loads.
- hf: a plain Hugging Face directory (no scratchlm block; an encoder-decoder as Marian).
- gguf (the default when DST ends in .gguf): a GGUF file llama.cpp and ollama load (gpt ->
  llama.cpp's gpt2, llama -> llama or qwen2), matrices in --outtype (norms stay f32); see
  scratchlm.interop.gguf_write. Other llama.cpp types (Q4_K_M, ...) are refused with the
  llama-quantize command that makes them from an f16 export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import check_parents, claim_out_dir, clean_leftovers

HELP = "convert a model between scratchlm, Hugging Face and GGUF formats"
FORMATS = ("scratchlm", "hf", "gguf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from scratchlm.interop.gguf_write import OUTTYPES

    p.add_argument("src", metavar="SRC", help="model directory (scratchlm or Hugging Face) or .gguf file")
    p.add_argument("dst", metavar="DST", help="directory, or a .gguf file")
    p.add_argument("--to", choices=FORMATS, default=None,
                   help="output format (default: gguf if DST ends in .gguf, else scratchlm)")
    p.add_argument("--outtype", default="f32", metavar="TYPE",
                   help=f"GGUF matrix type: {', '.join(OUTTYPES)} (default f32)")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace DST if scratchlm wrote it (a model directory or a GGUF file)")


def describe(path: Path) -> str:
    from scratchlm.interop.gguf import is_gguf_file

    if is_gguf_file(path):
        return "GGUF file"
    if (path / "config.json").is_file():
        import json

        try:
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except ValueError:
            return "model directory"
        if "scratchlm" in raw:
            return "scratchlm model directory"
        return f"Hugging Face directory ({raw.get('model_type')})"
    return "model"


def _claim_gguf(src: Path, dst: Path, *, overwrite: bool) -> None:
    """A GGUF output file: apart from SRC, and replacing only a GGUF file, with --overwrite."""
    from scratchlm.interop.gguf import is_gguf_file

    check_parents(dst)
    s, d = src.resolve(), dst.resolve()
    if s in d.parents or d in s.parents:
        raise ScratchLMError(f"DST {dst} must lie outside SRC {src} (and not hold it)")
    clean_leftovers(dst)
    if dst.is_dir():
        raise ScratchLMError(f"{dst} is a directory; a GGUF output is a file")
    if dst.exists() and not overwrite:
        raise ScratchLMError(f"{dst} exists; pass --overwrite to replace it or choose another DST")
    if dst.exists() and not is_gguf_file(dst):
        raise ScratchLMError(f"{dst} is not a GGUF file, so --overwrite will not replace it; "
                             "remove it yourself or choose another DST")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from scratchlm.interop.gguf_write import check_outtype, gguf_architecture, save_gguf
    from scratchlm.modeldir import load, save_model_dir

    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise ScratchLMError(f"{src} does not exist")
    fmt = args.to or ("gguf" if dst.suffix.lower() == ".gguf" else "scratchlm")
    if src.resolve() == dst.resolve():
        raise ScratchLMError("SRC and DST are the same path")
    if fmt == "gguf":
        outtype = check_outtype(args.outtype)  # before anything is read or written
        _claim_gguf(src, dst, overwrite=args.overwrite)
    else:
        claim_out_dir(dst, overwrite=args.overwrite, inputs=[src], kind="model directory")
    model, tokenizer = load(src)
    cfg = model.config
    n = model.num_params()
    what = f"{cfg.family}, {n / 1e6:.1f}M parameters, vocabulary {cfg.vocab_size}"
    print(f"read {src} ({describe(src)}; {what})")
    if fmt == "gguf":
        save_gguf(dst, model, tokenizer, outtype=outtype)
        print(f"wrote {dst} (GGUF, llama.cpp architecture {gguf_architecture(cfg)}, {outtype})")
        return 0
    save_model_dir(dst, model, tokenizer, plain_hf=fmt == "hf")
    if fmt == "hf" or cfg.family in ("gpt", "llama"):
        note = "; transformers loads it with from_pretrained"
    else:
        note = ""
    print(f"wrote {dst} ({'Hugging Face' if fmt == 'hf' else 'scratchlm'} model directory{note})")
    return 0
