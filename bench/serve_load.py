"""Load test of `scratchlm serve`: N concurrent streaming clients for a bounded time.

    .venv/bin/python bench/serve_load.py            # N = 1, 8, 32 and 8 serial vs 8 at once;
                                                    # writes its section of docs/serving.md
    .venv/bin/python bench/serve_load.py --quick    # 5 s per case, no doc update
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --model NAME \\
        --clients 8 --seconds 30                    # against a server already running

Each client loops until the time is up: one streaming /v1/completions request (a prompt of
16-64 characters cut at random from the Shakespeare sample, `max_tokens` new tokens with
`ignore_eos`, temperature 0.8), then the next. A request begun before the end is finished
and counted. Reported: requests/s, tokens/s (completion tokens of finished requests over the
wall time), time to first token and latency percentiles, errors, and the server's own count
of rows per decoding step (how much batching happened). "8 serial vs 8 at once" sends the
same 8 requests one after another, then all together.

Without --url the script builds the model it serves (random weights: speed does not depend
on them): the `gpt` preset "16m" (6 layers, 6 heads, 384 wide, block 256) over a character
vocabulary of the sample (~70 tokens), saved to bench/out/serve-16m, served on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import _common as C

DOC = C.ROOT / "docs" / "serving.md"
MODEL_DIR = C.OUT / "serve-16m"


# ----------------------------------------------------------------------------- the server
def build_model(path: Path) -> Path:
    import torch

    from scratchlm.config import run_config_from_dict
    from scratchlm.data.sources import shakespeare_sample_path
    from scratchlm.modeldir import save_model_dir
    from scratchlm.registry import build_model
    from scratchlm.tokenizers.tokenizer import train_tokenizer

    tok = train_tokenizer(kind="char", texts=[shakespeare_sample_path().read_text(encoding="utf-8")])
    torch.manual_seed(0)
    cfg = run_config_from_dict({"model": {"family": "gpt", "preset": "16m",
                                          "vocab_size": tok.vocab_size}})
    return save_model_dir(path, build_model(cfg.model), tok)


class ServerProcess:
    def __init__(self, model_dir: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "scratchlm", "serve", str(model_dir), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            print("  server:", line.rstrip(), flush=True)
            found = re.search(r"at (http://[\d.]+:\d+)/", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class CpuUse:
    """CPU time that other processes (trainings, other benchmarks) use while a case runs, in
    cores: the machine's busy time (/proc/stat) less this process's and the server's. On a
    shared machine this says how far the numbers are from an idle one. Linux only."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float, float] | None:
        """(wall, machine busy, ours) in seconds, or None where /proc cannot say."""
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            busy = sum(fields[i] for i in (0, 1, 2, 5, 6))  # user nice system irq softirq
            ours = 0
            for pid in ("self", *map(str, self.pids)):
                stat = Path(f"/proc/{pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                ours += int(rest[11]) + int(rest[12])  # utime stime, every thread
        except (OSError, ValueError, IndexError):
            return None
        return time.perf_counter(), busy / self.tick, ours / self.tick

    @staticmethod
    def others(a, b) -> float | None:
        """Cores the other processes used between two samples."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        return max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0])


def health(url: str) -> dict:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/health")
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


# ----------------------------------------------------------------------------- one request
def stream_request(url: str, body: dict, key: str | None) -> dict:
    """One streaming completion: {"ok", "ttft", "latency", "tokens"}."""
    u = urlsplit(url)
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        if r.status != 200:
            r.read()
            conn.close()
            return {"ok": False, "error": f"HTTP {r.status}"}
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                break
            msg = json.loads(line[6:])
            if msg.get("error"):
                conn.close()
                return {"ok": False, "error": msg["error"]["message"]}
            if ttft is None and any(c.get("text") for c in msg.get("choices", [])):
                ttft = time.perf_counter() - t0
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
        conn.close()
    except OSError as e:
        return {"ok": False, "error": str(e)}
    return {"ok": True, "ttft": ttft or 0.0, "latency": time.perf_counter() - t0, "tokens": tokens}


class Prompts:
    def __init__(self, seed: int) -> None:
        from scratchlm.data.sources import shakespeare_sample_path

        self.text = shakespeare_sample_path().read_text(encoding="utf-8")
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            n = self.rng.randint(16, 64)
            at = self.rng.randrange(len(self.text) - n)
        return self.text[at : at + n]


def body_for(model: str, prompt: str, max_tokens: int) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


# ----------------------------------------------------------------------------- the cases
def load(url: str, model: str, key: str | None, clients: int, seconds: float, max_tokens: int,
         seed: int) -> dict:
    prompts = Prompts(seed)
    results: list[dict] = []
    lock = threading.Lock()
    before = health(url)
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        while time.perf_counter() < deadline:
            r = stream_request(url, body_for(model, prompts.next(), max_tokens), key)
            r["end"] = time.perf_counter()
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(url)
    return summarize(results, start, before, after) | {"clients": clients}


def summarize(results: list[dict], start: float, before: dict, after: dict) -> dict:
    ok = [r for r in results if r["ok"]]
    wall = max((r["end"] for r in results), default=start) - start
    steps = after["steps"] - before["steps"]
    rows = after["row_steps"] - before["row_steps"]

    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]

    ttft = [r["ttft"] for r in ok]
    lat = [r["latency"] for r in ok]
    return {"requests": len(ok), "errors": len(results) - len(ok), "wall": wall,
            "rps": len(ok) / wall if wall else 0.0,
            "tps": sum(r["tokens"] for r in ok) / wall if wall else 0.0,
            "ttft": {q: pct(ttft, q) for q in (50, 90, 99)},
            "latency": {q: pct(lat, q) for q in (50, 90, 99)},
            "rows_per_step": rows / steps if steps else 0.0,
            "error_kinds": sorted({r["error"] for r in results if not r["ok"]})[:3]}


def burst(url: str, model: str, key: str | None, n: int, max_tokens: int, seed: int,
          *, together: bool) -> dict:
    """The same n requests, one after another or all at once."""
    prompts = Prompts(seed)
    bodies = [body_for(model, prompts.next(), max_tokens) for _ in range(n)]
    results: list[dict] = []
    before = health(url)
    start = time.perf_counter()

    def one(b: dict) -> None:
        r = stream_request(url, b, key)
        r["end"] = time.perf_counter()
        results.append(r)

    if together:
        threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for b in bodies:
            one(b)
    return summarize(results, start, before, health(url)) | {"clients": n if together else 1}


def engine_alone(model_dir: Path, n: int, max_tokens: int, threads: int, repeats: int = 3) -> float:
    """tokens/s of the batching engine itself (in this process, no HTTP): n jobs submitted
    together, stepped until done; the median of `repeats` runs."""
    import torch

    import scratchlm
    from scratchlm.generate.decode import GenerationConfig
    from scratchlm.serve.batching import Engine, Job

    torch.set_num_threads(threads)
    model, tok = scratchlm.load(model_dir)
    prompts = Prompts(n)
    rates = []
    for _ in range(repeats):
        engine = Engine(model, tok, max_rows=32)
        for _ in range(n):
            engine.submit(Job(config=GenerationConfig(max_new_tokens=max_tokens, temperature=0.8,
                                                      ignore_eos=True),
                              emit=lambda ev: None, prompt=tok.encode(prompts.next())))
        t0 = time.perf_counter()
        while engine.stats()["running_rows"] or engine.stats()["waiting"]:
            engine.step()
        rates.append(engine.stats()["tokens"] / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]


# ----------------------------------------------------------------------------- report
def row(name: str, r: dict) -> list[str]:
    ms = lambda s: f"{1000 * s:,.0f}"  # noqa: E731
    return [name, f"{r['requests']}", f"{r['rps']:.2f}", f"{r['tps']:,.0f}",
            " / ".join(ms(r["ttft"][q]) for q in (50, 90, 99)),
            " / ".join(ms(r["latency"][q]) for q in (50, 90, 99)),
            f"{r['rows_per_step']:.1f}", f"{r['errors']}",
            "n/a" if r.get("others") is None else f"{r['others']:.2f}"]


HEADERS = ["case", "requests", "requests/s", "tokens/s", "first token p50 / p90 / p99 (ms)",
           "latency p50 / p90 / p99 (ms)", "rows per step", "errors",
           "other processes' CPU (cores)"]


def measured(cpu: CpuUse | None, fn, *args, **kwargs) -> dict:
    """fn's result with "others": the cores other processes used while it ran."""
    before = cpu.sample() if cpu else None
    r = fn(*args, **kwargs)
    r["others"] = CpuUse.others(before, cpu.sample() if cpu else None)
    return r


def write_doc(body: str) -> None:
    from scratchlm.fileio import atomic_file

    start, end = "<!-- bench:serve_load -->", "<!-- /bench:serve_load -->"
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else f"# Serving\n\n{start}\n{end}\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block + "\n"
    with atomic_file(DOC) as f:
        f.write(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running server (default: start one on the bench model)")
    p.add_argument("--model", help="the model name, with --url")
    p.add_argument("--api-key")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None,
                   help="the server's torch threads (default: serve's own default)")
    p.add_argument("--quick", action="store_true", help="5 s per case, no doc update")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args()
    seconds = 5 if args.quick else args.seconds
    server = None
    threads = args.threads
    if args.url:
        if not args.model:
            raise SystemExit("--model NAME is needed with --url")
        url, model = args.url.rstrip("/"), args.model
    else:
        C.banner(f"building the bench model in {MODEL_DIR}")
        build_model(MODEL_DIR)
        from scratchlm.cli.serve import default_threads

        threads = args.threads or default_threads()
        server = ServerProcess(MODEL_DIR, "--slots", "32", "--max-waiting", "64",
                               "--threads", str(threads))
        url, model = server.url, MODEL_DIR.name
    info = C.env_info()
    cpu = CpuUse([server.proc.pid]) if server is not None else None
    if threads:
        info["threads"] = f"{threads} (the server's)"
    try:
        C.banner("warm-up")
        burst(url, model, args.api_key, 8, 32, 99, together=True)
        burst(url, model, args.api_key, 2, args.max_tokens, 98, together=False)
        rows, results = [], {}
        for n in args.clients:
            C.banner(f"{n} concurrent client(s) for {seconds:g} s")
            r = measured(cpu, load, url, model, args.api_key, n, seconds, args.max_tokens, seed=n)
            results[f"N={n}"] = r
            rows.append(row(f"N = {n}", r))
            print("  " + " | ".join(row(f"N = {n}", r)), flush=True)
        C.banner("8 requests one after another, then the same 8 at once")
        serial = measured(cpu, burst, url, model, args.api_key, 8, args.max_tokens, 7,
                          together=False)
        together = measured(cpu, burst, url, model, args.api_key, 8, args.max_tokens, 7,
                            together=True)
        rows += [row("8 serial", serial), row("8 at once", together)]
        for name, r in (("8 serial", serial), ("8 at once", together)):
            print(f"  {name}: {r['wall']:.2f} s, {r['tps']:,.0f} tokens/s", flush=True)
    finally:
        if server is not None:
            server.close()
    alone, alone_others = {}, None
    if server is not None:
        C.banner("the engine alone, in this process (no HTTP)")
        mine = CpuUse([])
        before = mine.sample()
        for n in (1, 8, 32):
            alone[n] = engine_alone(MODEL_DIR, n, args.max_tokens, threads)
            print(f"  {n} job(s) at once: {alone[n]:,.0f} tokens/s", flush=True)
        alone_others = CpuUse.others(before, mine.sample())
    everything = [*results.values(), serial, together]
    busiest = max((r["others"] for r in everything if r.get("others") is not None), default=None)
    errors = sum(r["errors"] for r in everything)
    speedup = together["tps"] / serial["tps"] if serial["tps"] else float("nan")
    n8 = results.get("N=8")
    n1 = results.get("N=1")
    lines = [
        (f"{C.env_lines(info)} Server: `scratchlm serve --slots 32 --threads {threads}` "
         f"(defaults otherwise), the bench model described above; the clients run on the same "
         f"machine, in another process." if server is not None else f"Server: {url}."),
        "",
        C.md_table(HEADERS, rows),
        "",
        f"Each N case ran {seconds:g} s; every request asked for {args.max_tokens} new tokens "
        f"from a prompt of 16-64 tokens. 8 at once vs 8 serial: {together['wall']:.2f} s vs "
        f"{serial['wall']:.2f} s for the same requests, {speedup:.2f}x the tokens/s.",
    ]
    if n1 and n8:
        lines.append(f"8 concurrent clients vs 1: {n8['tps'] / n1['tps']:.2f}x the tokens/s.")
    if alone:
        lines.append("The engine alone (in one process, no HTTP; jobs submitted together and "
                     "stepped to the end, median of 3): " + ", ".join(
                         f"{n} at once {v:,.0f} tokens/s" for n, v in alone.items()) + ".")
    if alone_others is not None:
        lines[-1] += f" Other processes used {alone_others:.2f} cores meanwhile."
    if busiest is not None:
        cores = os.cpu_count() or 1
        lines.append(
            f"The last column is the CPU time other processes on the machine used during the "
            f"case (its busy time in /proc/stat less the server's and the clients'), out of "
            f"{cores} cores. " + (
                f"The machine was busy (up to {busiest:.2f} of {cores} cores taken by other "
                f"jobs): these numbers are lower than an idle machine gives, and the cases are "
                f"not equally affected, so compare them with care."
                if busiest >= 0.1 else "The machine was otherwise idle."))
    if errors:
        lines.append(f"Errors: {errors} ({'; '.join(k for r in results.values() for k in r['error_kinds'])}).")
    body = "\n".join(lines)
    print("\n" + body)
    if not (args.quick or args.no_doc or args.url):
        write_doc(body)
        print(f"\nwrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
