"""Greedy decoding by precision, GPT-2 124M shape, batch 1 and 8, side by side in one process:
scratchlm fp32 / bf16 / int8 (models/quant.py) vs Hugging Face fp32 and CTranslate2 float32 / int8.

    .venv/bin/python bench/precision.py            # writes docs/benchmarks.md's "precision" section
    .venv/bin/python bench/precision.py --quick    # batch 1 only, 2 repeats, no doc update
    .venv/bin/python bench/precision.py --new 32 --threads 1 --batches 1 --repeats 2   # a loaded machine

Same random weights everywhere (decode_speed.build_pair: ours, exported into
`GPT2LMHeadModel`). CTranslate2 gets that model through `ctranslate2.converters
.TransformersConverter` (what `ct2-transformers-converter` runs) with a stand-in vocab.json of
one token string per id ("t0", "t1", ..., "<|endoftext|>" last), and is fed those strings;
its int8 model is the float32 one loaded with `compute_type="int8"` (weights quantized at
load, as `--quantization int8` does at conversion). Prompt of 32 random tokens, 128 new tokens
forced, tokens/s = batch x 128 / wall time of the call; runners interleaved, medians.
"same tokens" compares each runner's greedy tokens with scratchlm fp32's (share of all
positions up to each row's first difference). After the table, a profile of where scratchlm
int8's decoding time goes at batch 1.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import decode_speed
import torch
from decode_speed import GPT2, PROMPT, build_pair, run_hf, run_ours

from scratchlm.models.quant import apply_precision, choose_precision, int8_kernel, output_format

NEW = decode_speed.NEW

GOALS = {1: 1.0, 8: 1.2}  # issue 13: ours / CTranslate2 int8


def ct2_generators(hf, vocab_size: int, threads: int):
    """CTranslate2 float32 and int8 generators of `hf`, or None (with the reason printed)."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        print("CTranslate2 is not installed (pip install ctranslate2, the `bench` extra): its rows are skipped")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="scratchlm-bench-ct2-"))
    hf.save_pretrained(tmp / "hf")
    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"<|endoftext|>": vocab_size - 1}
    (tmp / "hf" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp / "hf" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    t = time.perf_counter()
    TransformersConverter(str(tmp / "hf")).convert(str(tmp / "ct2"), quantization="float32", force=True)
    print(f"converted to CTranslate2 in {time.perf_counter() - t:.1f} s")
    return {ct: ctranslate2.Generator(str(tmp / "ct2"), device="cpu", compute_type=ct,
                                      intra_threads=threads, inter_threads=1)
            for ct in ("float32", "int8")}


def option(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


def run_ct2(gen, ids: torch.Tensor) -> torch.Tensor:
    tokens = [[f"t{i}" for i in row] for row in ids.tolist()]
    res = gen.generate_batch(tokens, max_length=NEW, min_length=NEW, sampling_topk=1,
                             include_prompt_in_result=False)
    return torch.tensor([r.sequences_ids[0] for r in res])  # (B, NEW)


def same_share(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of positions equal to `ref` before each row's first difference."""
    total = 0
    for x, y in zip(a.tolist(), ref.tolist(), strict=True):
        n = next((i for i, (u, v) in enumerate(zip(x, y, strict=True)) if u != v), len(y))
        total += n
    return total / ref.numel()


def profile_ours(model, ids: torch.Tensor, steps: int = 16) -> list[list[str]]:
    """Self CPU time by op over `steps` cached decoding steps at this batch (C.profile_table),
    and a last row: the wall time of the same steps without the profiler (the gap between
    it and "all ops" is Python and dispatch between the ops)."""
    with torch.inference_mode():
        cache = model.init_cache(batch_size=ids.shape[0], max_len=ids.shape[1] + 2 * steps + 1)
        model(ids, cache=cache, logits_to_keep=1)
        x = ids[:, -1:]

        def run() -> None:
            for _ in range(steps):
                model(x, cache=cache, logits_to_keep=1)

        t = time.perf_counter()
        run()
        wall = (time.perf_counter() - t) / steps
        rows = C.profile_table(run, per=steps)
    return rows + [["wall time, no profiler", f"{wall * 1e3:.2f}", "", ""]]


def overhead_line(prof: list[list[str]]) -> str:
    """What profile_ours' last two rows say: op time against wall time per forward step."""
    ops, wall = float(prof[-2][1]), float(prof[-1][1])
    outside = (f"the other {wall - ops:.1f} ms are Python and dispatch around them (embedding, the "
               "final norm, the cache's bookkeeping)." if wall > ops else
               "the ops under the profiler took longer than the whole step without it (the "
               "profiler's own cost, or a noisy machine), so the time outside them is too small "
               "to measure this way.")
    return (f"At batch 1 the ops of a forward step take {ops:.1f} ms under the profiler; the step "
            f"takes {wall:.1f} ms without it ({prof[-2][3]} op calls a step). "
            "`scratchlm::decode_layers` is every layer in one native call (models/kernels/decode.c: "
            "the int8 matmuls, norms, RoPE, the KV-cache write and attention, as CTranslate2 and "
            "llama.cpp run a layer); the output layer is `scratchlm::int8_*`; " + outside)


def main() -> None:
    global NEW
    NEW = decode_speed.NEW = int(option("--new", str(NEW)))  # run_ours/run_hf read decode_speed's
    threads = int(option("--threads", str(C.THREADS)))
    C.setup(seed=0, threads=threads)
    quick = C.argv_flag("--quick")
    info = C.env_info()
    print(C.env_lines(info))
    t0 = time.perf_counter()
    m, ours, hf = build_pair(GPT2)
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    # What --quantize int8 and --quantize int8-dynamic run on this CPU (the CLI's own path).
    int8 = apply_precision(copy.deepcopy(ours), choose_precision(quantize="int8"))
    int8_dyn = apply_precision(copy.deepcopy(ours), choose_precision(quantize="int8-dynamic"))
    kernel = int8_kernel("int8")
    ct2 = ct2_generators(hf, m.vocab_size, threads)
    runners = {"scratchlm fp32": (run_ours, ours), "scratchlm bf16": (run_ours, bf16),
               f"scratchlm int8 ({kernel.replace('_', '-')})": (run_ours, int8),
               "scratchlm int8-dynamic": (run_ours, int8_dyn), "HF fp32": (run_hf, hf)}
    if ct2:
        runners |= {"CTranslate2 float32": (run_ct2, ct2["float32"]),
                    "CTranslate2 int8": (run_ct2, ct2["int8"])}
    batches = (1,) if quick else tuple(int(b) for b in option("--batches", "1,8").split(","))
    results: dict[int, dict] = {}
    for b in batches:
        C.banner(f"GPT-2 124M shape, batch {b}")
        g = torch.Generator().manual_seed(42)
        ids = torch.randint(0, m.vocab_size - 1, (b, PROMPT), generator=g)
        ref = run_ours(ours, ids)
        same = {k: same_share(fn(model, ids), ref) for k, (fn, model) in runners.items()}  # + warm-up
        print("same tokens as scratchlm fp32:", {k: f"{v:.0%}" for k, v in same.items()})

        def timer(fn, model, ids=ids):
            def go() -> float:
                t = time.perf_counter()
                out = fn(model, ids)
                dt = time.perf_counter() - t
                assert out.shape == (ids.shape[0], NEW), out.shape
                return out.numel() / dt
            return go

        res = C.interleave({k: timer(fn, model) for k, (fn, model) in runners.items()},
                           int(option("--repeats", "2" if quick else "3")))
        results[b] = {"tok_s": {k: C.median(v) for k, v in res.items()},
                      "spread": {k: C.spread(v) for k, v in res.items()}, "same": same}
    prof = profile_ours(int8_dyn, torch.randint(0, m.vocab_size - 1, (1, PROMPT)))
    total = time.perf_counter() - t0

    peer = "CTranslate2 int8" if ct2 else "HF fp32"
    rows = []
    for k in runners:
        row = [k]
        for b in batches:
            r = results[b]
            row += [f"{r['tok_s'][k]:,.1f} ({r['spread'][k]})",
                    f"{r['tok_s'][k] / r['tok_s'][peer]:.2f}x", f"{r['same'][k]:.0%}"]
        rows.append(row)
    headers = ["runner"]
    for b in batches:
        headers += [f"batch {b} tok/s", f"/ {peer}", "same tokens"]
    def ratio(b: int) -> float:
        return results[b]["tok_s"]["scratchlm int8-dynamic"] / results[b]["tok_s"][peer]

    goals = "; ".join(f"batch {b}: scratchlm int8-dynamic / {peer} = {ratio(b):.2f}x (goal "
                      f"{GOALS.get(b, '-')}x, {'met' if ratio(b) >= GOALS.get(b, 9e9) else 'not met'})"
                      for b in batches)
    body = "\n".join([
        "## Precision: decoding GPT-2 124M in fp32, bf16 and int8 vs CTranslate2",
        "",
        C.env_lines(info),
        "",
        f"Greedy decoding, prompt of {PROMPT} random tokens, {NEW} new tokens forced, GPT-2 124M "
        "shape (12 layers, 768 wide, vocab 50257), the same random weights in every runner "
        f"(bench/precision.py). scratchlm int8 ({kernel.replace('_', '-')}) is what `--quantize int8` "
        f"runs on this CPU: {choose_precision(quantize='int8').describe().removeprefix('precision: ')}"
        + (" (models/quant.py `HalfLinear` for the tied output layer, as llama.cpp keeps output.weight at "
           "higher precision in its k-quants)" if output_format("int8") == "fp16" else "")
        + "; int8-dynamic is `--quantize int8-dynamic`: "
        f"{choose_precision(quantize='int8-dynamic').describe().removeprefix('precision: ')}, "
        "as CTranslate2's int8. The scratchlm kernels are models/kernels/int8_matmul.c "
        "(bench/int8_kernels.py times them against fbgemm's), and an int8 model decodes a token "
        "with every layer in one native call (models/kernels/decode.c). bf16 is "
        "`--dtype bfloat16` (weights, activations and KV cache). CTranslate2 "
        f"{__import__('ctranslate2').__version__ if ct2 else '(not installed)'} with "
        f"intra_threads={threads}, {NEW} new tokens. Median over interleaved repeats (± half the min-max range); "
        "\"same tokens\": share of positions equal to scratchlm fp32's greedy tokens up to each "
        "row's first difference (random weights make near-ties common, so this is a loose check; "
        "the quality bars are tested on trained models in tests/models/test_quant.py).",
        "",
        C.md_table(headers, rows),
        "",
        f"Goals (issue 13): {goals}.",
        "",
        "Reading it: `--quantize int8-dynamic` quantizes each row's activations with one scale "
        "(W8A8, as CTranslate2's int8): the fastest, but on a real LLM its greedy output drifts "
        "(SmolLM2-135M: outlier activation channels up to 720x their mean; see the next "
        "section and `Int8Linear`). Where scratchlm's kernels run, `--quantize int8` is "
        "llama.cpp's Q8_0 scheme instead, one scale per 32 weights and per 32 activations, "
        "which keeps SmolLM2's greedy tokens (next section) at a little more arithmetic a "
        "weight (the 8-row column). Tried and not enough before it: SmoothQuant-style migration "
        "of the outlier channels into the weights (Xiao et al. 2022; alpha 0.5 and 0.8) left "
        "per-row W8A8's SmolLM2 greedy tokens at 0 of 20 prompts. "
        + overhead_line(prof),
        "",
        "Where scratchlm int8-dynamic's time goes at batch 1 (torch.profiler, self CPU time per decoding "
        "step, top 8 ops):",
        "",
        C.md_table(["op", "ms / step", "share", "calls / step"], prof),
        "",
        f"Script wall time: {total / 60:.1f} min; load average at the end: {C.loadavg()}.",
    ])
    print("\n" + body)
    if not quick:
        print(f"\nwrote {C.write_section('precision', body)}")


if __name__ == "__main__":
    main()
