"""scratchlm.hardware: flags parsed from /proc/cpuinfo text, what counts as fast, one line."""

from __future__ import annotations

from dataclasses import replace

from scratchlm.hardware import Capabilities, capabilities, describe, detect, parse_flags

AMX = "model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8\n"
AVX2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx2 fma\n"


def test_parse_flags_reads_the_first_flags_line():
    assert parse_flags(AMX + "flags : avx\n") >= {"amx_tile", "amx_bf16", "avx2"}
    assert parse_flags("model name : x\n") == set()


def test_avx2_only_cpu_is_not_probed_and_bf16_is_not_fast():
    c = detect(AVX2)  # the probe would run bf16 GEMMs ~100x slower than fp32 here: skipped
    assert c.cpu == "AMD EPYC 7B12"
    assert c.avx2 and not (c.avx512_bf16 or c.amx_tile or c.vnni)
    assert c.bf16_speedup is None and not c.fast_bf16
    assert c.fast_int8 == (c.int8_engine == "fbgemm")


def test_flags_alone_do_not_make_bf16_fast():
    c = detect(AMX, probe=False)
    assert c.amx_tile and c.amx_bf16 and c.amx_int8 and c.vnni
    assert not c.fast_bf16  # only a measured speedup does
    assert replace(c, bf16_speedup=3.2).fast_bf16
    assert not replace(c, bf16_speedup=1.0).fast_bf16


def test_describe_is_one_line_naming_every_unit():
    c = replace(detect(AMX, probe=False), bf16_speedup=3.2)
    line = describe(c)
    assert "\n" not in line
    for word in ("Intel Xeon", "AMX tiles yes", "AVX-512 BF16 yes", "avx512_vnni", "AVX2 yes",
                 "bf16 fast, GEMM 3.2x"):
        assert word in line, word
    assert "AMX tiles no" in describe(detect(AVX2))


def test_capabilities_are_cached_and_serialisable():
    c = capabilities()
    assert c is capabilities()
    d = c.as_dict()
    assert isinstance(c, Capabilities) and d["fast_bf16"] == c.fast_bf16 and d["isa"] == c.isa
