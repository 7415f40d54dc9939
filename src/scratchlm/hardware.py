"""What the CPU (or GPU) can do fast: matrix units and precision paths, found at run time.

The same code runs on CPUs where bf16 matmuls are several times faster than fp32 (Intel AMX,
AVX-512 BF16) and on CPUs where they are ~100x slower (AVX2 only), so precision is chosen
here, from the CPU's flags and, where the flags say bf16 could be fast, a tiny GEMM probe
(measured once per process, ~0.1 s):

    from scratchlm.hardware import capabilities, describe
    caps = capabilities()     # cached
    caps.fast_bf16, caps.fast_int8
    print(describe())         # one line for headers and logs

`train`, `generate`, `serve` and `bench/*` print `describe()`; the first record of a training
run's metrics.jsonl carries `as_dict()`.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# bf16 counts as fast when a bf16 GEMM runs at least this much faster than fp32.
FAST_BF16_MIN_SPEEDUP = 1.2
_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni",
          "avx512f", "avx2")


@dataclass(frozen=True)
class Capabilities:
    cpu: str
    isa: str  # torch.backends.cpu.get_cpu_capability(): the kernels torch dispatches to
    amx_tile: bool
    amx_bf16: bool
    amx_int8: bool
    avx512_bf16: bool
    avx512_vnni: bool
    avx_vnni: bool
    avx512f: bool
    avx2: bool
    int8_engine: str | None  # torch's quantized engine for int8 Linear (fbgemm/x86), if any
    bf16_speedup: float | None  # measured bf16 / fp32 GEMM throughput; None: not probed
    cuda: str | None  # the first CUDA device's name, if any

    @property
    def fast_bf16(self) -> bool:
        """bf16 matmuls are worth it on this CPU (measured, not assumed from the flags)."""
        return self.bf16_speedup is not None and self.bf16_speedup >= FAST_BF16_MIN_SPEEDUP

    @property
    def fast_bf16_training(self) -> bool:
        """bf16 autocast pays for training wherever the measured bf16 GEMM is fast (AMX-BF16 or
        AVX-512 BF16). bench/train_speed.py on a 2-core Zen 4 (AVX-512 BF16, no AMX; load ~1.5):
        GPT-2 124M 473 tokens/s in bf16 autocast vs 185 in fp32 (2.56x), the nanoGPT CPU recipe
        19,596 vs 18,777 (1.04x); SmolLM2 LoRA steps 2.2x (bench/lora_step.py). On a 2-core Xeon
        with AMX, HF GPT-2 124M trained 1.73x fp32 (issue 13). An earlier 0.75x on the Zen 4 was
        measured at load ~10 on 2 cores. AVX2-only CPUs measure slow bf16 and stay fp32."""
        return self.fast_bf16

    @property
    def fast_int8(self) -> bool:
        """int8 dynamic-quantized Linear layers can run (fbgemm needs AVX2 at least)."""
        return self.int8_engine is not None

    @property
    def vnni(self) -> bool:
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    def as_dict(self) -> dict:
        return {**asdict(self), "fast_bf16": self.fast_bf16,
                "fast_bf16_training": self.fast_bf16_training, "fast_int8": self.fast_int8}


def parse_flags(cpuinfo: str) -> set[str]:
    """The `flags` of the first processor in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: torch's ISA level below is all we know
        return ""


def int8_engine(flags: set[str], isa: str) -> str | None:
    """The quantized engine for int8 Linear: fbgemm (x86 with AVX2 or better), else None."""
    engines = torch.backends.quantized.supported_engines
    x86 = "avx2" in flags or isa.startswith(("AVX2", "AVX512"))
    if x86 and "fbgemm" in engines:
        return "fbgemm"
    return None


def probe_bf16_speedup(*, n: int = 128, repeats: int = 15) -> float:
    """bf16 / fp32 throughput of an (n x 768) @ (768 x 768) GEMM: one thread (a busy
    machine stalls multi-threaded kernels at their barriers), fp32 and bf16 alternated, the
    best time of each (a shared machine only ever slows a run down). About 30 ms."""
    g = torch.Generator().manual_seed(0)  # not torch's default one: probing must not move a run's RNG
    a, b = torch.randn(n, 768, generator=g), torch.randn(768, 768, generator=g)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, y in pairs.values():
            x @ y  # warm-up: oneDNN builds its kernel on first use
        for _ in range(repeats):
            for dt, (x, y) in pairs.items():
                t = time.perf_counter()
                x @ y
                best[dt] = min(best[dt], time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


def detect(cpuinfo: str | None = None, *, probe: bool = True) -> Capabilities:
    """Capabilities from cpuinfo text (default: this machine's). The bf16 GEMM probe runs
    only where the flags promise bf16 instructions: elsewhere it would take seconds."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = parse_flags(text)
    isa = torch.backends.cpu.get_cpu_capability()
    has = {f: f in flags for f in _FLAGS}
    speedup = None
    if probe and (has["amx_bf16"] or has["avx512_bf16"]):
        with torch.inference_mode():
            speedup = round(probe_bf16_speedup(), 2)
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return Capabilities(cpu=_cpu_name(text), isa=isa, **has, int8_engine=int8_engine(flags, isa),
                        bf16_speedup=speedup, cuda=cuda)


@functools.cache
def capabilities() -> Capabilities:
    """This machine's capabilities, detected (and the bf16 probe run) once per process."""
    return detect()


def describe(caps: Capabilities | None = None) -> str:
    """One line: the CPU, its matrix units and which precision paths are fast on it."""
    c = caps or capabilities()
    yn = {True: "yes", False: "no"}
    vnni = [n for n, v in (("avx512_vnni", c.avx512_vnni), ("avx_vnni", c.avx_vnni),
                           ("amx_int8", c.amx_int8)) if v]
    bf16 = ("not probed" if c.bf16_speedup is None
            else f"{'fast' if c.fast_bf16 else 'slow'}, GEMM {c.bf16_speedup:.1f}x fp32")
    int8 = f"fast ({c.int8_engine})" if c.fast_int8 else "unavailable"
    gpu = f"; CUDA: {c.cuda} (bf16 autocast)" if c.cuda else ""
    return (f"CPU: {c.cpu}, torch ISA {c.isa}; AMX tiles {yn[c.amx_tile]} "
            f"(bf16 {yn[c.amx_bf16]}, int8 {yn[c.amx_int8]}); AVX-512 BF16 {yn[c.avx512_bf16]}; "
            f"VNNI {', '.join(vnni) or 'no'}; AVX2 {yn[c.avx2]}; bf16 {bf16}; int8 {int8}{gpu}")
