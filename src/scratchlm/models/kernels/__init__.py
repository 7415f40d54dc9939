"""scratchlm's own CPU kernels for CPUs with AVX-512 VNNI: int8 matmuls (int8_matmul.c), one
token's attention over the KV cache (`attend_one`) or whole decoder layers (`DecodeLayers`) in
one call (decode.c), and dropout with a hashed mask for training (`dropout`, dropout.c).

Compiled once per machine with the system C compiler (`$CC`, default `cc`; g++/gcc are what
the Makefile's llama.cpp build needs anyway) into ~/.cache/scratchlm/kernels/, keyed by the
source, the flags and the compiler, and loaded with ctypes: no torch headers, so the build
takes about a second. Where the CPU lacks AVX-512 VNNI, no compiler runs, or
`SCRATCHLM_KERNELS=0` is set, `library()` is None and `why_not()` says why; Int8Linear then
uses torch's kernels (fbgemm, `_weight_int8pack_mm`).

    lib = library()
    packed = PackedInt8(qweight, scale, bias, kind="w8a8")   # once, at quantization
    y = packed(x)                                             # x (M, K) fp32 -> (M, N) fp32
"""

from __future__ import annotations

import array
import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm.hardware import capabilities

SOURCES = [Path(__file__).with_name(n) for n in ("int8_matmul.c", "decode.c", "dropout.c")]
# Named ISA extensions rather than -march=native: the library runs on any CPU with them.
FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
         "-mavx512dq", "-mavx512vnni", "-mf16c"]
KINDS = ("w8a8", "w8a8g", "w8a32")
GROUP = 32  # w8a8g: weights and activations share one scale per this many along K
_LAYOUT = {"w8a32": 0, "w8a8": 1, "w8a8g": 2}  # packed_bytes() kind codes
_state = {"not": "", "amx": False}  # why library() is None; whether w8a8 uses AMX tiles: set by it


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scratchlm" / "kernels"


def _compiler() -> tuple[str, str]:
    cc = os.environ.get("CC", "cc")
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return cc, out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else ""


def build(dest_dir: Path | None = None) -> Path:
    """Compile the kernels (if not already built) into one shared library; return its path.
    Written to a temporary name and renamed, so concurrent builds and kill -9 leave either
    nothing or a whole library."""
    cc, version = _compiler()
    if not version:
        raise OSError(f"no C compiler ({cc} --version failed); set CC or install gcc")
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + " ".join(FLAGS + [version]).encode()).hexdigest()[:16]
    dest_dir = dest_dir or cache_dir()
    lib = dest_dir / f"scratchlm_kernels-{key}.so"
    if lib.exists():
        return lib
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".scratchlm_kernels-", suffix=".so.tmp")
    os.close(fd)
    try:
        def compile_with(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([cc, *FLAGS, *extra, *map(str, SOURCES), "-lm", "-o", tmp], capture_output=True,
                                  text=True, timeout=300)

        out = compile_with()
        if out.returncode != 0:  # an assembler without AMX: the rest still builds
            retry = compile_with("-DSCRATCHLM_NO_AMX")
            out = retry if retry.returncode == 0 else out
        if out.returncode != 0:
            raise OSError(f"{cc} failed to compile the kernels: {(out.stderr or out.stdout).strip()[-300:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.pack_w8a8.argtypes = [p, i, i, p, p]
    lib.pack_w8a32.argtypes = [p, i, i, p]
    lib.pack_w8a8g.argtypes = [p, p, i, i, p, p]
    lib.packed_scales.argtypes = [i, i]
    lib.packed_scales.restype = i
    lib.matmul_w8a8g.argtypes = [p, i, i, p, p, p, i, p]
    lib.matmul_w8a8.argtypes = [p, i, i, p, p, p, p, i, p]
    lib.matmul_w8a32.argtypes = [p, i, i, p, p, p, i, p]
    lib.packed_bytes.argtypes = [ctypes.c_int, i, i]
    lib.packed_bytes.restype = i
    lib.amx_init.argtypes = []
    lib.amx_init.restype = ctypes.c_int
    lib.attend_one.argtypes = [p]
    lib.gather_rows.argtypes = [p]
    lib.top_logprobs.argtypes = [p, i, i, i, p, p]
    lib.decode_layers.argtypes = [p, i, p]
    lib.dropout.argtypes = [p, p, i, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    for f in (lib.dropout, lib.top_logprobs, lib.gather_rows, lib.attend_one, lib.decode_layers, lib.pack_w8a8, lib.pack_w8a32, lib.pack_w8a8g, lib.matmul_w8a8, lib.matmul_w8a32,
              lib.matmul_w8a8g):
        f.restype = None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; None where they cannot run here (`why_not()`)."""
    caps = capabilities()
    _state["not"] = ""
    if os.environ.get("SCRATCHLM_KERNELS", "1") == "0":
        _state["not"] = "SCRATCHLM_KERNELS=0"
    elif not (caps.avx512_vnni and caps.avx512f):
        _state["not"] = "the CPU has no AVX-512 VNNI"
    else:
        try:
            lib = _declare(ctypes.CDLL(str(build())))
            # AMX-INT8 tiles for w8a8 at many rows, where the CPU has them and Linux grants them
            _state["amx"] = bool(caps.amx_int8 and os.environ.get("SCRATCHLM_AMX", "1") != "0" and lib.amx_init())
            return lib
        except (OSError, subprocess.SubprocessError) as e:
            _state["not"] = str(e).splitlines()[0]
    return None


def amx() -> bool:
    """Whether w8a8 runs on AMX-INT8 tiles at many rows here (`amx_init` in int8_matmul.c;
    `SCRATCHLM_AMX=0` keeps it on AVX-512 VNNI)."""
    library()
    return _state["amx"]


def why_not() -> str:
    """Why `library()` is None ('' when it is loaded)."""
    library()
    return _state["not"]


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class PackedInt8:
    """An int8 weight (N, K) with its fp32 scales and an optional bias, packed for one kernel:
    `w8a8` (one weight scale per row, activations quantized per row, int8 x int8 -> int32,
    vpdpbusd), `w8a8g` (weights and activations with one scale per row and group of 32 along
    K, `GROUP`, as llama.cpp's Q8_0 dot product: `scale` is (N, ceil(K / 32))) or `w8a32`
    (weight-only, one scale per row: int8 widened to fp32, fp32 activations). Calling it
    multiplies fp32 rows."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, kind: str) -> None:
        lib = library()
        if lib is None or kind not in KINDS:
            raise ValueError(f"int8 kernel {kind!r} is not available here: {why_not() or 'unknown kind'}")
        self.lib, self.kind = lib, kind
        self.n, self.k = qweight.shape
        qweight = qweight.contiguous()
        # 64-byte aligned: the kernels load each block's 64-byte groups with aligned loads
        self.weight = _aligned_int8(lib.packed_bytes(_LAYOUT[kind], self.n, self.k))
        self.scale = scale.float().contiguous()
        self.bias = None if bias is None else bias.float().contiguous()
        self.rowsum = None
        if kind == "w8a8":
            self.rowsum = torch.empty(self.n, dtype=torch.int32)
            lib.pack_w8a8(_ptr(qweight), self.n, self.k, _ptr(self.weight), _ptr(self.rowsum))
        elif kind == "w8a8g":
            if self.scale.shape != (self.n, -(-self.k // GROUP)):
                raise ValueError(f"w8a8g takes ({self.n}, {-(-self.k // GROUP)}) group scales, got {tuple(self.scale.shape)}")
            packed = torch.empty(lib.packed_scales(self.n, self.k), dtype=torch.float16)
            lib.pack_w8a8g(_ptr(qweight), _ptr(self.scale), self.n, self.k, _ptr(self.weight), _ptr(packed))
            self.scale = packed  # fp16, in the kernel's layout
        else:
            lib.pack_w8a32(_ptr(qweight), self.n, self.k, _ptr(self.weight))
        ptrs = [t.data_ptr() if t is not None else None for t in (self.weight, self.rowsum, self.scale, self.bias)]
        if kind == "w8a8":
            self._run, self._args = lib.matmul_w8a8, (self.k, *ptrs, self.n)
        else:  # w8a8g, w8a32: no row sums
            self._run, self._args = getattr(lib, f"matmul_{kind}"), (self.k, ptrs[0], *ptrs[2:], self.n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) fp32 -> (M, N) fp32."""
        x = x.float().contiguous()
        y = torch.empty(x.shape[0], self.n)
        # ctypes takes the addresses as ints; the weight's are fixed at packing (`self._args`)
        _native(f"int8_{self.kind}", self._run, x.data_ptr(), x.shape[0], *self._args, y.data_ptr())
        return y


def _native(name: str, fn, *args) -> None:
    """fn(*args), a kernel call, named scratchlm::`name` in torch.profiler's tables when profiling."""
    if torch._C._autograd._profiler_enabled():
        with torch.profiler.record_function(f"scratchlm::{name}"):
            fn(*args)
    else:
        fn(*args)


def _rope_rows(rotary: tuple[torch.Tensor, torch.Tensor] | None, hd: int) -> tuple[tuple, int, int, int]:
    """RoPE's (cos, sin) rows as the kernels take them: (the contiguous tensors, to keep alive
    over the call), cos and sin addresses (0: no RoPE), row stride (0: one row for all)."""
    if rotary is None:
        return (), 0, 0, 0
    c, s = (t if t.is_contiguous() else t.contiguous() for t in rotary)
    return (c, s), c.data_ptr(), s.data_ptr(), hd if c.numel() > hd else 0


def _int64(t: torch.Tensor | None) -> torch.Tensor | None:
    """t as a contiguous int64 tensor (the kernels index it as int64_t[]), or None."""
    return None if t is None else t.to(torch.int64).contiguous()


def _aligned_int8(size: int) -> torch.Tensor:
    """A zeroed int8 tensor of `size` bytes whose data starts on a 64-byte boundary."""
    raw = torch.zeros(size + 64, dtype=torch.int8)
    offset = (-raw.data_ptr()) % 64
    return raw[offset:offset + size]


MAX_HEAD_DIM = 256  # the attention kernels' limit (decode.c's MAX_HD)


def attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    past: int, *, rotary: tuple[torch.Tensor, torch.Tensor] | None = None, pad: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token's attention (decode.c): q (B, nh, 1, hd), k, v (B, n_kv, 1, hd),
    fp32 with unit stride along hd; k_cache, v_cache one layer's contiguous (B, n_kv, max_len,
    hd) buffers, `past` positions filled. Rotates q and k by `rotary` (cos, sin) rows, (1, hd)
    or (B, 1, 1, hd), writes k and v at position `past`, attends over positions pad[r] .. past
    of each row (`pad` (B,) int64: left padding) and returns (B, nh, 1, hd), a view of a
    (B, 1, nh, hd) buffer: transposed back, it is the output projection's input without a copy."""
    b, nh, _, hd = q.shape
    if hd > MAX_HEAD_DIM or past >= k_cache.shape[2]:
        raise ValueError(f"attend_one takes head_dim <= {MAX_HEAD_DIM} and past < max_len")
    pad = _int64(pad)
    out = torch.empty(b, 1, nh, hd)
    _keep, cos, sin, rope_sb = _rope_rows(rotary, hd)
    qs, ks, vs, cs = q.stride(), k.stride(), v.stride(), k_cache.stride()
    args = array.array("q", (b, nh, k.shape[1], hd, q.data_ptr(), k.data_ptr(), v.data_ptr(), qs[0], qs[1], ks[0],
                             ks[1], vs[0], vs[1], k_cache.data_ptr(), v_cache.data_ptr(), cs[0], cs[1], past, cos,
                             sin, rope_sb, 0 if pad is None else pad.data_ptr(), out.data_ptr()))
    _native("attend_one", library().attend_one, args.buffer_info()[0])
    return out.transpose(1, 2)


@dataclass
class LayerSpec:
    """What `DecodeLayers` needs of one decoder layer, as its family states it: sublayers
    around the residual stream x, each `x += f(norm(x))` (pre-norm) or `x = norm(x + f(x))`
    (`post_norm`), in this order:

        self-attention   qkv, o: `qkv` one layer yielding [q; k; v] (n_head, n_kv, n_kv heads
                         of head_dim) or three; RoPE where the caller passes its rows
        cross-attention  cross = (query, output) projections, over the source's keys and
                         values (encoder-decoders only)
        MLP              down(act(up(x))); `mlp`: "swiglu" (`up` is the fused [gate; up]:
                         silu(gate) * up), "gelu_tanh", "gelu" (erf), "relu" or "silu"

    `norm`: "rms" (weights only) or "layer" (weights and biases); each `*_norm` is (weight,
    bias or None). The linear layers are modules: only int8 ones backed by a `PackedInt8` run
    here (`DecodeLayers.build` says None otherwise)."""

    norm: str
    eps: float
    attn_norm: tuple[torch.Tensor, torch.Tensor | None]
    mlp_norm: tuple[torch.Tensor, torch.Tensor | None]
    qkv: torch.nn.Module | tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module] | None
    o: torch.nn.Module
    up: torch.nn.Module | None
    down: torch.nn.Module
    mlp: str
    n_head: int
    n_kv: int
    head_dim: int
    cross: tuple[torch.nn.Module, torch.nn.Module] | None = None
    cross_norm: tuple[torch.Tensor, torch.Tensor | None] | None = None
    post_norm: bool = False

    def linears(self) -> list:
        qkv = self.qkv if isinstance(self.qkv, tuple) else (self.qkv,)
        return [*qkv, self.o, *(self.cross or ()), self.up, self.down]


NORMS = ("rms", "layer")
ACTIVATIONS = ("swiglu", "gelu_tanh", "gelu", "relu", "silu")  # decode.c's enum, in order


class _Linear(ctypes.Structure):  # decode.c's linear_t
    _fields_ = [("kind", ctypes.c_int64), ("k", ctypes.c_int64), ("n", ctypes.c_int64), ("w", ctypes.c_void_p),
                ("rowsum", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


_NORM_FIELDS = ("attn_norm_w", "attn_norm_b", "cross_norm_w", "cross_norm_b", "mlp_norm_w", "mlp_norm_b")


class _Layer(ctypes.Structure):  # decode.c's layer_t
    _fields_ = [*((f, ctypes.c_int64) for f in ("d", "nh", "nkv", "hd", "ff", "norm", "mlp", "post_norm")),
                ("eps", ctypes.c_double), *((f, ctypes.c_void_p) for f in _NORM_FIELDS),
                *((f, _Linear) for f in ("q", "k", "v", "o", "cq", "co", "up", "down"))]


def _linear(module: torch.nn.Module | None) -> _Linear:
    if module is None:
        return _Linear()
    p = module._packed
    return _Linear(_LAYOUT[p.kind], p.k, p.n, p.weight.data_ptr(),
                   *(None if t is None else t.data_ptr() for t in (p.rowsum, p.scale, p.bias)))


class DecodeLayers:
    """Every layer of a decoder, run for one new token per row in one native call (decode.c's
    `decode_layers`): what the modules compute, with their int8 kernels, without ~190 PyTorch
    ops a layer. Built once from the layers' `LayerSpec`s (`build`), it keeps them alive."""

    def __init__(self, specs: list[LayerSpec]) -> None:
        self.specs = specs
        self.layers = (_Layer * len(specs))()
        self._keep = []  # fp32 copies of norm weights, kept alive for the pointers
        for spec, layer in zip(specs, self.layers, strict=True):
            layer.d, layer.nh, layer.nkv, layer.hd = spec.o._packed.n, spec.n_head, spec.n_kv, spec.head_dim
            layer.ff = spec.up._packed.n // 2 if spec.mlp == "swiglu" else spec.up._packed.n
            layer.norm, layer.mlp = NORMS.index(spec.norm), ACTIVATIONS.index(spec.mlp)
            layer.post_norm, layer.eps = spec.post_norm, spec.eps
            norms = (*spec.attn_norm, *(spec.cross_norm or (None, None)), *spec.mlp_norm)
            for name, t in zip(_NORM_FIELDS, norms, strict=True):
                if t is not None:
                    t = t.detach().float().contiguous()
                    self._keep.append(t)
                setattr(layer, name, None if t is None else t.data_ptr())
            q, k, v = spec.qkv if isinstance(spec.qkv, tuple) else (spec.qkv, None, None)
            cq, co = spec.cross or (None, None)
            for name, module in zip(("q", "k", "v", "o", "cq", "co", "up", "down"),
                                    (q, k, v, spec.o, cq, co, spec.up, spec.down), strict=True):
                setattr(layer, name, _linear(module))

    @classmethod
    def build(cls, specs: list[LayerSpec]) -> DecodeLayers | None:
        """The layers in one call, or None where some layer cannot run here: a linear layer
        without scratchlm's int8 kernels (fp32, bf16, LoRA, torch's int8), gate/up not fused,
        a head larger than MAX_HEAD_DIM, or shapes that differ between layers."""
        if not specs or library() is None:
            return None
        for s in specs:
            if not all(isinstance(getattr(m, "_packed", None), PackedInt8) for m in s.linears()):
                return None
            if s.head_dim > MAX_HEAD_DIM or s.n_head % s.n_kv or s.norm not in NORMS or s.mlp not in ACTIVATIONS:
                return None
            qkv = [m._packed.n for m in (s.qkv if isinstance(s.qkv, tuple) else (s.qkv,))]
            if sum(qkv) != (s.n_head + 2 * s.n_kv) * s.head_dim or (s.cross is not None and s.cross_norm is None):
                return None
            d, nq, up, down = s.o._packed.n, s.n_head * s.head_dim, s.up._packed, s.down._packed
            ff = up.n // 2 if s.mlp == "swiglu" else up.n
            sizes = [s.o._packed.k == nq, up.k == d, down.n == d, down.k == ff,
                     all(m._packed.k == d for m in (s.qkv if isinstance(s.qkv, tuple) else (s.qkv,)))]
            if s.cross is not None:
                sizes += [s.cross[0]._packed.n == nq, s.cross[0]._packed.k == d, s.cross[1]._packed.k == nq,
                          s.cross[1]._packed.n == d, s.n_kv == s.n_head]
            if not all(sizes):
                return None
        shapes = {(s.o._packed.n, tuple(m._packed.n for m in s.linears()), s.n_head, s.n_kv, s.head_dim,
                   s.cross is None) for s in specs}
        return cls(specs) if len(shapes) == 1 else None

    def __call__(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, past: int, *,
                 rotary: tuple[torch.Tensor, torch.Tensor] | None = None, pad: torch.Tensor | None = None,
                 cross: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        """x (B, d) fp32 contiguous, updated in place through every layer; the KV cache's
        (n_layer, B, n_kv, max_len, hd) contiguous keys and values, `past` positions filled
        (position `past` is written); `rotary`, `pad` as `attend_one`'s; `cross`: the
        source's keys and values (n_layer, B, n_head, S, hd) and its mask (B, S) bool,
        contiguous (encoder-decoders)."""
        _keep, cos, sin, rope_sb = _rope_rows(rotary, k_cache.shape[-1])
        cs = k_cache.stride()
        pad = _int64(pad)
        xk = xv = mask = src = 0
        xs = (0, 0, 0)
        if cross is not None:
            ck, cv, m = (t if t.is_contiguous() else t.contiguous() for t in cross)
            if m.dtype != torch.bool:
                raise ValueError("the source mask must be bool")
            xk, xv, mask, xs, src = ck.data_ptr(), cv.data_ptr(), m.data_ptr(), ck.stride(), ck.shape[3]
        args = array.array("q", (x.data_ptr(), x.shape[0], k_cache.data_ptr(), v_cache.data_ptr(), cs[0], cs[1], cs[2],
                                 past, cos, sin, rope_sb, 0 if pad is None else pad.data_ptr(),
                                 xk, xv, xs[0], xs[1], xs[2], src, mask))
        _native("decode_layers", library().decode_layers, self.layers, len(self.specs), args.buffer_info()[0])


def gather_rows(src: torch.Tensor, dst: torch.Tensor, index: torch.Tensor, end: int) -> None:
    """dst[:, i, :, :end] = src[:, index[i], :, :end] for contiguous (n_layer, B, H, max_len, hd)
    caches of one dtype (decode.c's `gather_rows`: one memcpy per layer, row and head)."""
    index = _int64(index)
    args = array.array("q", (src.data_ptr(), dst.data_ptr(), src.shape[0], src.shape[1], dst.shape[1], src.shape[2],
                             src.shape[3], src.shape[4], end, index.data_ptr(), src.element_size()))
    _native("gather_rows", library().gather_rows, args.buffer_info()[0])


MAX_TOPK = 256  # decode.c's top_logprobs takes k up to this


def top_logprobs_ok(x: torch.Tensor, k: int) -> bool:
    """Whether `top_logprobs` can run on x here: the kernels loaded, fp32 CPU rows (R, V),
    1 <= k <= min(V, MAX_TOPK)."""
    return (x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu"
            and 1 <= k <= min(x.shape[1], MAX_TOPK) and library() is not None)


def top_logprobs(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x.log_softmax(-1).topk(k)` where `top_logprobs_ok`: values largest first (ties: lower
    index first) and their indices, in one native pass per row (decode.c)."""
    if not top_logprobs_ok(x, k):
        raise ValueError(f"top_logprobs takes fp32 CPU rows (R, V) and 1 <= k <= min(V, {MAX_TOPK}), "
                         f"got {x.dtype} {x.device.type} {tuple(x.shape)} and k={k}")
    x = x.contiguous()
    vals = torch.empty(x.shape[0], k, dtype=torch.float32, device="cpu")
    idx = torch.empty(x.shape[0], k, dtype=torch.int64, device="cpu")
    _native("top_logprobs", library().top_logprobs, x.data_ptr(), x.shape[0], x.shape[1], k, vals.data_ptr(),
            idx.data_ptr())
    return vals, idx


# ----------------------------------------------------------------------------- dropout
_DROPOUT = (torch.float32, torch.bfloat16)  # dropout.c's dtypes, in its `bf16` flag's order


def dropout_ok(x: torch.Tensor, p: float) -> bool:
    """Whether `dropout` can run on x here: the kernels loaded, an fp32 or bf16 CPU tensor,
    0 < p < 1."""
    return 0.0 < p < 1.0 and x.device.type == "cpu" and x.dtype in _DROPOUT and library() is not None


def _dropout_run(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    thr = min(round(p * 2**32), 2**32 - 1)  # p within 2^-33 of 1 keeps 2^-32, not 1 - p: moot
    _native("dropout", library().dropout, x.data_ptr(), y.data_ptr(), x.numel(), _DROPOUT.index(x.dtype), seed,
            thr, 1.0 / (1.0 - p))
    return y


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.p, ctx.seed = p, seed
        return _dropout_run(x, p, seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # the same mask and scale; through apply again, so a double backward sees it
        return _HashDropout.apply(grad, ctx.p, ctx.seed), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout (needs `dropout_ok`): each element zeroed with probability p, the
    rest scaled by 1 / (1 - p), the mask a hash of a seed drawn from torch's default generator
    and the element's index (dropout.c). Differentiable; the backward recomputes the mask."""
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) % 2**64  # all 64 bits
    return _HashDropout.apply(x, p, seed)
