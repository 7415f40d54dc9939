"""One fine-tuning step on SmolLM2-135M: scratchlm vs `transformers` + `peft`, and LoRA vs
full fine-tuning: time per step and peak resident memory.

    .venv/bin/python bench/lora_step.py MODEL_DIR          # writes docs/benchmarks.md section
    .venv/bin/python bench/lora_step.py MODEL_DIR --quick  # 1 round, no doc update
    .venv/bin/python bench/lora_step.py MODEL_DIR --dtype bfloat16   # both under bf16 autocast
    .venv/bin/python bench/lora_step.py MODEL_DIR --dtype auto       # what train.dtype auto picks here (make bench)

MODEL_DIR is SmolLM2-135M-Instruct as a model directory (`scratchlm convert
SmolLM2-135M-Instruct.Q4_1.gguf MODEL_DIR`; transformers loads the same directory), so both
sides start from the same fp32 weights. One step = forward on a batch of 4 x 128 random
tokens, mean next-token cross-entropy, backward, AdamW (torch's fused kernel, lr 1e-4, no
weight decay) over the trainable parameters. LoRA: r=8, alpha 16, dropout 0.05, on q_proj and
v_proj. Two kinds of labels: "LM", every position learned (pretraining-style), and "SFT",
the first 2/3 of each row masked with -100 as a prompt is (on chatterbot-en, 34% of the tokens
are learned). Each side computes its loss as its library does: transformers + peft the
cross-entropy over all logits with ignore_index=-100; scratchlm `sft_loss`, which computes
logits only where a label is. Each configuration runs in its own process (peak RSS is per process), in rounds
ours, peer, ours, peer, ...; the peak is the high-water mark of resident memory during the
steps only (reset after loading through /proc/self/clear_refs), so it holds the weights,
activations, gradients and optimizer state, not the loading. With `--dtype bfloat16` both
sides run forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 master
weights and AdamW state: what scratchlm's `train.dtype bfloat16` does and HF's Trainer does
with `bf16=True`), into its own section.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

RUNS = {  # name -> (implementation, method, labels)
    "scratchlm LoRA, SFT": ("ours", "lora", "sft"),
    "transformers + peft LoRA, SFT": ("hf", "lora", "sft"),
    "scratchlm LoRA, LM": ("ours", "lora", "lm"),
    "transformers + peft LoRA, LM": ("hf", "lora", "lm"),
    "scratchlm full, SFT": ("ours", "full", "sft"),
    "transformers full, SFT": ("hf", "full", "sft"),
}
BATCH, SEQ, WARMUP, STEPS = 4, 128, 2, 5


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(model_dir: str, impl: str, method: str, labels: str, dtype: str = "float32",
           profile: str = "") -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F

    C.setup()
    if impl == "ours":
        from scratchlm.modeldir import load
        from scratchlm.peft import apply_lora, mark_only_lora_trainable

        model, _ = load(model_dir)
        if method == "lora":
            apply_lora(model, r=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"])
            mark_only_lora_trainable(model)

        from scratchlm.train.finetune import sft_loss

        def loss_of(x, y):
            return sft_loss(model, {"input_ids": x, "labels": y})
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if method == "lora":
            import peft

            cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                  target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
            model = peft.get_peft_model(model, cfg)

        def loss_of(x, y):
            logits = model(input_ids=x).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    y = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    if labels == "sft":
        y[:, : 2 * SEQ // 3] = -100  # the prompt
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
    times = []
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    def step():
        with autocast:
            loss = loss_of(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        loss = step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for p in params)
    out = {"step_s": C.median(times), "peak_rss_mb": _peak_rss_mb(), "trainable": trainable,
           "loss": float(loss)}
    if profile:  # one more step under torch.profiler (after the peak was read)
        out["profile"] = C.profile_table(step)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(*sys.argv[2:8])))
        return
    dtype = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "float32"
    if dtype == "auto":  # as train.dtype auto on CPU: bf16 autocast where bf16 training is fast
        from scratchlm.hardware import capabilities

        dtype = "bfloat16" if capabilities().fast_bf16_training else "float32"
    if dtype not in ("float32", "bfloat16"):
        sys.exit(f"--dtype must be float32, bfloat16 or auto, got {dtype!r}")
    argv = [a for i, a in enumerate(sys.argv[1:]) if not (i and sys.argv[i] == "--dtype")]
    args = [a for a in argv if not a.startswith("--")]
    if not args:
        sys.exit("usage: bench/lora_step.py MODEL_DIR [--quick] [--dtype float32|bfloat16|auto]")
    model_dir, quick = args[0], C.argv_flag("--quick")
    info = C.env_info()
    rounds = 1 if quick else 3
    results: dict[str, list[dict]] = {k: [] for k in RUNS}
    for r in range(rounds):
        for name, (impl, method, labels) in RUNS.items():
            profiled = r == 0 and method == "lora" and labels == "sft"
            out = subprocess.run([sys.executable, __file__, "--worker", model_dir, impl, method, labels,
                                  dtype, "profile" if profiled else ""],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(res)
            print(f"  round {r + 1}/{rounds}  {name:<32s} {res['step_s']:.3f} s/step, "
                  f"peak {res['peak_rss_mb']:,.0f} MB, loss {res['loss']:.4f}", flush=True)
    rows, med = [], {}
    for name, rs in results.items():
        t = C.median([x["step_s"] for x in rs])
        m = C.median([x["peak_rss_mb"] for x in rs])
        med[name] = (t, m)
        rows.append([name, f"{rs[0]['trainable']:,}", f"{t:.3f}",
                     C.spread([x["step_s"] for x in rs]), f"{m:,.0f}"])
    table = C.md_table(["run", "trainable params", "s / step", "spread", "peak RSS (MB)"], rows)
    verdict = []
    for kind in ("SFT", "LM"):
        (ot, om), (ht, hm) = med[f"scratchlm LoRA, {kind}"], med[f"transformers + peft LoRA, {kind}"]
        verdict.append(f"LoRA step, {kind} labels: scratchlm is {ht / ot:.2f}x the speed of "
                       f"transformers + peft (goal: at least 1.3x) with {om / hm:.2f}x its peak "
                       f"memory (goal: at most 1x).")
    (ot, om), (ft, fm) = med["scratchlm LoRA, SFT"], med["scratchlm full, SFT"]
    verdict.append(f"LoRA vs full fine-tuning (scratchlm, SFT): {fm - om:,.0f} MB less peak "
                   f"memory, {ft / ot:.2f}x the speed.")
    verdict = " ".join(verdict)
    profiles = "\n\n".join(
        C.profile_md(f"Where a {name} step's time goes (torch.profiler, self CPU time, one step "
                     "after the timed ones, round 1, top 8 ops):", results[name][0]["profile"])
        for name in ("scratchlm LoRA, SFT", "transformers + peft LoRA, SFT"))
    precision = "fp32" if dtype == "float32" else "bf16 autocast on both sides, fp32 master weights"
    title = "" if dtype == "float32" else ", bf16 autocast"
    body = (f"## Fine-tuning step: LoRA and full, ours vs transformers + peft{title}\n\n"
            f"`bench/lora_step.py`: SmolLM2-135M-Instruct ({precision}), batch {BATCH} x {SEQ}, LoRA "
            f"r=8 on q_proj+v_proj, median of {STEPS} steps after {WARMUP}, {rounds} rounds "
            f"of separate processes. {C.env_lines(info)}\n\n{table}\n\n{verdict}\n\n{profiles}\n")
    print("\n" + body)
    if not quick:
        name = "lora_step" if dtype == "float32" else "lora_step_bf16"
        print(f"wrote {C.write_section(name, body)}")


if __name__ == "__main__":
    main()
