"""The recipe driver: steps, logs, output parsing and page rewriting (`python -m recipes`).

A recipe is a list of steps, each one command a user types (the page lists the same
commands, written with `scratchlm`; the driver runs them as `python -m scratchlm` of this
interpreter). Each step's stdout and stderr go to runs/recipes/NAME/NN-STEP.out/.err and its
wall time to runs/recipes/NAME/timings.json. Then the recipe's `render` function parses the
printed metrics and samples into Markdown, which replaces the text between
`<!-- recipe:NAME:begin -->` and `<!-- recipe:NAME:end -->` in the recipe's page: the
committed tables are what the last run printed. A step that fails stops its recipe with one
line (the command and the last line it printed, e.g. "apt-get download fortunes-zh failed
...; install apt/dpkg or put the files in DIR") and the driver exits non-zero; the page is
left as it was.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = Path("runs/recipes")


@dataclass
class Step:
    name: str
    argv: list[str]  # a `scratchlm` command (argv[0] == "scratchlm") or `python FILE ...`

    def shell(self) -> str:
        """The command as the page shows it."""
        return " ".join(shlex.quote(a) for a in self.argv)

    def command(self) -> list[str]:
        if self.argv[0] == "scratchlm":
            return [sys.executable, "-m", "scratchlm", *self.argv[1:]]
        if self.argv[0] == "python":
            return [sys.executable, *self.argv[1:]]
        return list(self.argv)


@dataclass
class Recipe:
    name: str
    page: str  # relative to the repository root
    title: str
    steps: list[Step]
    render: Callable[[dict[str, str], dict[str, float]], str]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- parsing
def last_match(pattern: str, text: str, *, flags: int = 0) -> re.Match[str] | None:
    found = list(re.finditer(pattern, text, flags))
    return found[-1] if found else None


def need(pattern: str, text: str, what: str) -> re.Match[str]:
    m = last_match(pattern, text, flags=re.M)
    if m is None:
        raise RecipeError(f"could not find {what} in the output (pattern {pattern!r})")
    return m


def parse_lm_eval(text: str) -> dict[str, float]:
    """`scratchlm evaluate` of a language model: 'val: loss L  perplexity P  bits/byte B (...)'."""
    m = need(r"^(\w+): loss ([\d.]+)\s+perplexity ([\d.]+)\s+bits/byte ([\d.]+)\s+\(([\d,]+) tokens",
             text, "the loss/perplexity line")
    return {"split": m.group(1), "loss": float(m.group(2)), "ppl": float(m.group(3)),
            "bpb": float(m.group(4)), "tokens": int(m.group(5).replace(",", ""))}


def parse_train(text: str) -> dict[str, float]:
    """The trainer's last 'done: step N, train loss X, val loss Y (best Z)' line."""
    m = need(r"^done: step (\d+), train loss ([\d.]+), val loss ([\d.]+)(?: \(best ([\d.]+)\))?",
             text, "the trainer's 'done:' line")
    out = {"steps": int(m.group(1)), "train_loss": float(m.group(2)), "val_loss": float(m.group(3))}
    if m.group(4):
        out["best_val_loss"] = float(m.group(4))
    before = last_match(r"^val loss before fine-tuning: ([\d.]+)", text, flags=re.M)
    if before:
        out["val_loss_before"] = float(before.group(1))
    return out


def parse_scores(text: str) -> dict[str, float]:
    """`scratchlm evaluate --metric ...` lines such as 'BLEU = 21.55 ...', 'chrF2 = 45.28',
    'ROUGE-1 = 40.1' (case-insensitive; the first number after the name)."""
    scores: dict[str, float] = {}
    for name, key in (("BLEU", "bleu"), ("chrF2?\\+*", "chrf"), ("ROUGE-1", "rouge1"),
                      ("ROUGE-2", "rouge2"), ("ROUGE-L\\w*", "rougeL")):
        m = last_match(rf"\b{name}\b\s*[=:]\s*([\d.]+)", text, flags=re.I)
        if m:
            scores[key] = float(m.group(1))
    return scores


def parse_samples(text: str) -> list[str]:
    """`scratchlm generate --num-samples N` output: '--- sample k ---' headers, or one text."""
    parts = re.split(r"^--- sample \d+ ---\n", text, flags=re.M)
    samples = [p.rstrip("\n") for p in parts if p.strip()]
    return samples or [text.rstrip("\n")]


def fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def code_block(text: str, lang: str = "text") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def md_cell(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rstrip() + " ..."
    return text.replace("|", "\\|") or "(empty)"


def timing_table(recipe: Recipe, timings: dict[str, float], machine: dict | None = None) -> str:
    rows = ["| step | wall time |", "|---|---:|"]
    for step in recipe.steps:
        if step.name in timings:
            rows.append(f"| `{step.name}` | {fmt_time(timings[step.name])} |")
    rows.append(f"| **total** | **{fmt_time(sum(timings.values()))}** |")
    if machine:
        loads = machine.get("load", [])
        threads = f" ({machine['threads']} torch thread{'s' if machine['threads'] != 1 else ''})" if "threads" in machine else ""
        rows += ["", f"Machine: {machine.get('cpus', '?')} CPUs{threads}, torch {machine.get('torch', '?')}, "
                     f"Python {machine.get('python', '?')}; 1-minute load average before each step "
                     f"{', '.join(f'{x:.1f}' for x in loads)} (above {machine.get('cpus', '?')} means other "
                     f"jobs shared the cores, and the times are longer than on an idle machine)."]
        if "hardware" in machine:  # what train.dtype auto chose from: bf16 autocast where bf16 is fast
            rows.append(f"Hardware: {machine['hardware']}.")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- pages
class RecipeError(Exception):
    pass


def markers(name: str) -> tuple[str, str]:
    return f"<!-- recipe:{name}:begin -->", f"<!-- recipe:{name}:end -->"


def replace_section(page_text: str, name: str, body: str) -> str:
    """The page with the text between recipe NAME's markers replaced by `body`."""
    begin, end = markers(name)
    i, j = page_text.find(begin), page_text.find(end)
    if i < 0 or j < 0 or j < i:
        raise RecipeError(f"the page has no '{begin}' ... '{end}' section to rewrite")
    return page_text[: i + len(begin)] + "\n" + body.strip() + "\n" + page_text[j:]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def log_paths(logs: Path, index: int, step: Step) -> tuple[Path, Path]:
    stem = f"{index:02d}-{step.name}"
    return logs / f"{stem}.out", logs / f"{stem}.err"


def read_logs(recipe: Recipe, logs: Path) -> tuple[dict[str, str], dict[str, float]]:
    outputs = {}
    for i, step in enumerate(recipe.steps):
        out, _ = log_paths(logs, i, step)
        if not out.is_file():
            raise RecipeError(f"no output of step {step.name!r} in {logs}; run the recipe first")
        outputs[step.name] = out.read_text(encoding="utf-8")
    timings_file = logs / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    return outputs, timings


def read_machine(logs: Path) -> dict | None:
    f = logs / "machine.json"
    return json.loads(f.read_text()) if f.is_file() else None


def render_page(recipe: Recipe, outputs: dict[str, str], timings: dict[str, float],
                *, root: Path = ROOT, stamp: str | None = None, machine: dict | None = None) -> None:
    body = recipe.render(outputs, timings)
    stamp = stamp or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (f"*Generated by `python -m recipes {recipe.name}` from its run ending {stamp} "
              f"(do not edit by hand; rerun it).*")
    page = root / recipe.page
    write_atomic(page, replace_section(page.read_text(encoding="utf-8"), recipe.name,
                                       header + "\n\n" + body + "\n\n" + timing_table(recipe, timings, machine)))


def run_recipe(recipe: Recipe, *, logs_root: Path = LOGS) -> None:
    logs = logs_root / recipe.name
    logs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    import platform

    import torch

    from scratchlm.hardware import describe

    machine = {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
               "threads": torch.get_num_threads(), "hardware": describe(), "load": []}
    for i, step in enumerate(recipe.steps):
        out, err = log_paths(logs, i, step)
        machine["load"].append(round(os.getloadavg()[0], 2))
        (logs / "machine.json").write_text(json.dumps(machine, indent=2))
        print(f"[{recipe.name}] {step.shell()}", flush=True)
        t0 = time.perf_counter()
        with open(out, "w", encoding="utf-8") as fo, open(err, "w", encoding="utf-8") as fe:
            try:
                proc = subprocess.run(step.command(), stdout=fo, stderr=fe, env=env, cwd=ROOT)
            except FileNotFoundError as e:
                raise RecipeError(f"{step.argv[0]} is not installed ({e})") from None
        timings[step.name] = time.perf_counter() - t0
        (logs / "timings.json").write_text(json.dumps(timings, indent=2))
        if proc.returncode != 0:
            lines = [x for x in (err.read_text() + out.read_text()).splitlines() if x.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise RecipeError(f"step {step.name!r} failed: {last.strip()} (logs: {err})")
        print(f"[{recipe.name}]   {fmt_time(timings[step.name])}", flush=True)
