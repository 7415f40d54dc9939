"""scratchlm's own int8 matmul kernels (int8_matmul.c), for decoding on CPUs with AVX-512 VNNI.

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

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from scratchlm.hardware import capabilities

SOURCE = Path(__file__).with_name("int8_matmul.c")
# Named ISA extensions rather than -march=native: the library runs on any CPU with them.
FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
         "-mavx512dq", "-mavx512vnni", "-mf16c"]
KINDS = ("w8a8", "w8a8g", "w8a32")
GROUP = 32  # w8a8g: weights and activations share one scale per this many along K
_LAYOUT = {"w8a32": 0, "w8a8": 1, "w8a8g": 2}  # packed_bytes() kind codes
_why = {"not": ""}  # why library() is None, set by it


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scratchlm" / "kernels"


def _compiler() -> tuple[str, str]:
    cc = os.environ.get("CC", "cc")
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return cc, out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else ""


def build(dest_dir: Path | None = None) -> Path:
    """Compile int8_matmul.c (if not already built) and return the shared library's path.
    Written to a temporary name and renamed, so concurrent builds and kill -9 leave either
    nothing or a whole library."""
    cc, version = _compiler()
    if not version:
        raise OSError(f"no C compiler ({cc} --version failed); set CC or install gcc")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS + [version]).encode()).hexdigest()[:16]
    dest_dir = dest_dir or cache_dir()
    lib = dest_dir / f"int8_matmul-{key}.so"
    if lib.exists():
        return lib
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".int8_matmul-", suffix=".so.tmp")
    os.close(fd)
    try:
        out = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise OSError(f"{cc} failed to compile {SOURCE.name}: {(out.stderr or out.stdout).strip()[-300:]}")
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
    for f in (lib.pack_w8a8, lib.pack_w8a32, lib.pack_w8a8g, lib.matmul_w8a8, lib.matmul_w8a32,
              lib.matmul_w8a8g):
        f.restype = None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; None where they cannot run here (`why_not()`)."""
    caps = capabilities()
    _why["not"] = ""
    if os.environ.get("SCRATCHLM_KERNELS", "1") == "0":
        _why["not"] = "SCRATCHLM_KERNELS=0"
    elif not (caps.avx512_vnni and caps.avx512f):
        _why["not"] = "the CPU has no AVX-512 VNNI"
    else:
        try:
            return _declare(ctypes.CDLL(str(build())))
        except (OSError, subprocess.SubprocessError) as e:
            _why["not"] = str(e).splitlines()[0]
    return None


def why_not() -> str:
    """Why `library()` is None ('' when it is loaded)."""
    library()
    return _why["not"]


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
        if torch._C._autograd._profiler_enabled():  # name the call in torch.profiler's tables
            with torch.profiler.record_function(f"scratchlm::int8_{self.kind}"):
                self._run(x.data_ptr(), x.shape[0], *self._args, y.data_ptr())
        else:
            self._run(x.data_ptr(), x.shape[0], *self._args, y.data_ptr())
        return y


def _aligned_int8(size: int) -> torch.Tensor:
    """A zeroed int8 tensor of `size` bytes whose data starts on a 64-byte boundary."""
    raw = torch.zeros(size + 64, dtype=torch.int8)
    offset = (-raw.data_ptr()) % 64
    return raw[offset:offset + size]
