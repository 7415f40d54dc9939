"""Build llama.cpp from the source vendored in the PyPI sdist `llama-cpp-python==0.3.36`, cached
outside the repository, and find the built binaries.

Used by the llama.cpp tests (tests/interop/test_llamacpp.py: our GGUF exports loaded by llama.cpp
itself), by `.ci/run` (builds once per machine) and by benchmarks that compare against llama.cpp.
`make test` never builds it: it took 45 minutes on 2 shared cores (load ~10).

    .venv/bin/python bench/llamacpp.py            # build if absent, print the bin directory
    .venv/bin/python bench/llamacpp.py --find     # print it only if already built (exit 1 if not)

From Python: `from bench.llamacpp import find_bin_dir, build` (or load this file by path);
`build()` returns the bin directory, or None after printing one line saying why it could not.

The binaries are linked statically (BUILD_SHARED_LIBS=OFF) and copied into `bin/` only when
every target built, so a `bin/` directory that exists is complete. SCRATCHLM_LLAMACPP_BIN
points at another directory holding the same binaries (a llama.cpp you built yourself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scratchlm" / f"llama.cpp-{VERSION}"
# llama-completion is the non-interactive generator of this llama.cpp (llama-cli is chat-only
# here and needs the server build); llama-tokenize checks tokenization.
TARGETS = ("llama-completion", "llama-simple", "llama-perplexity", "llama-quantize", "llama-bench",
           "llama-tokenize")
CMAKE_FLAGS = ("-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF")


def tool_env() -> dict[str, str]:
    """The environment to run llama.cpp's tools in. On CPUs with AMX-INT8, this llama.cpp
    repacks weights for its AMX kernels, and `ggml_backend_amx_mul_mat` then crashes (SIGSEGV)
    on any batch of more than one token (seen on a 2-core Sapphire Rapids Xeon, 2026-12-02:
    llama-completion, llama-perplexity, llama-batched-bench, llama-bench -p 32; decoding one
    token at a time from an empty context runs). There repacking is turned off
    (LLAMA_ARG_REPACK=0), so its AVX-512/VNNI kernels run instead; elsewhere nothing changes."""
    env = dict(os.environ)
    try:
        with open("/proc/cpuinfo") as f:
            amx = " amx_int8" in f.read()
    except OSError:
        amx = False
    if amx:
        env.setdefault("LLAMA_ARG_REPACK", "0")
    return env


def find_bin_dir() -> Path | None:
    """The directory holding every target, or None (no build attempted)."""
    env = os.environ.get("SCRATCHLM_LLAMACPP_BIN")
    for d in ([Path(env)] if env else []) + [CACHE / "bin"]:
        if all((d / t).is_file() for t in TARGETS):
            return d
    return None


def _run(cmd: list[str], log, cwd: Path | None = None) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=True)


def build(jobs: int = 2, log_path: Path | None = None) -> Path | None:
    """Download the sdist, configure and build the targets, copy them to CACHE/bin.

    Returns the bin directory (at once when it is already there), or None after printing one
    line naming the step that failed and the log to read.
    """
    found = find_bin_dir()
    if found:
        return found
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            print(f"llama.cpp: cannot build: {tool} is not installed (apt-get install cmake g++)")
            return None
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = log_path or CACHE / "build.log"
    sdist = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
    src = CACHE / "src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    work = CACHE / "build"
    step = "download"
    with open(log_path, "a") as log:
        try:
            if not sdist.is_file():
                tmp = CACHE / "download.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                      f"llama-cpp-python=={VERSION}", "-d", str(tmp)], log)
                os.replace(tmp / sdist.name, sdist)
                shutil.rmtree(tmp, ignore_errors=True)
            step = "unpack"
            if not (src / "CMakeLists.txt").is_file():
                shutil.rmtree(CACHE / "src", ignore_errors=True)
                with tarfile.open(sdist) as tar:  # "data": no links or paths out of the folder
                    kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(CACHE / "src", **kw)
            step = "cmake configure"
            _run(["cmake", "-S", str(src), "-B", str(work), *CMAKE_FLAGS], log)
            step = "cmake build"
            _run(["cmake", "--build", str(work), "-j", str(jobs), "--target", *TARGETS], log)
        except (subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
            print(f"llama.cpp: cannot build ({step} failed: {e}); see {log_path}")
            return None
    tmp_bin, bin_dir = CACHE / "bin.tmp", CACHE / "bin"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tmp_bin.mkdir()
    for t in TARGETS:
        shutil.copy2(work / "bin" / t, tmp_bin / t)
    os.replace(tmp_bin, bin_dir)
    return bin_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--find", action="store_true", help="do not build; exit 1 if absent")
    p.add_argument("--jobs", "-j", type=int, default=2)
    args = p.parse_args()
    d = find_bin_dir() if args.find else build(args.jobs)
    if d is None:
        if args.find:
            print(f"llama.cpp: not built; run: .venv/bin/python bench/llamacpp.py (builds into {CACHE})")
        return 1
    print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
