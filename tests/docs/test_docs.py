"""Every ```python block of every docs/**/*.md page runs, and every `scratchlm` command in
its shell blocks parses, so the docs cannot rot.

One test per page: its python blocks run in order in one shared namespace (a page reads top
to bottom like a notebook), after torch.manual_seed(0), with a temporary directory as the
working directory. Other fences (```bash, ```console, ```text, ...) are shown, not run,
except that a ```text output block must be what the python block before it printed (numbers
with a decimal point within 2 units of their last digit or 5%: floats differ across CPUs).
A failure names the page and the line of the block's opening fence, and the traceback points
at lines of the .md file. Pages are collected recursively (docs/learn/, docs/recipes/, ...);
a test's id is the page's path below docs/.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*(.*)$")
PYTHON = ("python", "py", "python3")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str  # "python", "text", "bash", ... ("" for a bare fence)
    info: str  # the rest of the fence's info string, e.g. "output" in ```text output
    code: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown page, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang, info = m.groups()
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        blocks.append(Block(start, lang.lower(), info.strip(), "\n".join(body) + "\n"))
    return blocks


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(1-based line of the opening fence, code) of each ```python / ```py block."""
    return [(b.line, b.code) for b in fenced_blocks(text) if b.lang in PYTHON]


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _close(shown: str, printed: str) -> bool:
    """Numbers with a decimal point may differ by 2 units of their last digit or 5%: they
    come from float arithmetic whose last bits differ between CPUs and SIMD kernels.
    Integers (shapes, counts) must be equal."""
    if "." not in shown and "e" not in shown.lower():
        return shown == printed
    unit = 10.0 ** -(len(shown.split(".")[1].split("e")[0].split("E")[0]) if "." in shown else 0)
    a, b = float(shown), float(printed)
    return abs(a - b) <= max(2 * unit, 0.05 * abs(a))


def same_output(shown: list[str], printed: list[str]) -> bool:
    """The page's output block against what was printed: the same text line by line, numbers
    compared as `_close` says."""
    if len(shown) != len(printed):
        return False
    for a, b in zip(shown, printed, strict=True):
        if NUMBER.sub("#", a) != NUMBER.sub("#", b):
            return False
        if not all(_close(x, y) for x, y in zip(NUMBER.findall(a), NUMBER.findall(b), strict=True)):
            return False
    return True


def _lines(text: str) -> list[str]:
    """Lines without trailing spaces, and without blank lines at either end."""
    return [ln.rstrip() for ln in text.strip("\n").splitlines()]


class _Tee(io.StringIO):
    """Keeps what a block prints and still shows it (pytest -s)."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def write(self, s: str) -> int:
        self.out.write(s)
        return super().write(s)


def run_page(path: Path, label: str) -> None:
    """Run the page's python blocks in order in one namespace. A ```text output block
    must be exactly what the python block before it printed (trailing spaces and blank
    lines at the ends aside); plain ```text blocks are shown, not checked."""
    namespace: dict = {"__name__": "__docs__"}
    printed: tuple[int, str] | None = None  # (line, stdout) of the last python block
    for block in fenced_blocks(path.read_text(encoding="utf-8")):
        if block.lang == "text" and block.info == "output":
            if printed is None:
                pytest.fail(f"{label}: the output block at line {block.line} follows no python "
                            "block", pytrace=False)
            if not same_output(_lines(block.code), _lines(printed[1])):
                diff = "\n".join(difflib.unified_diff(
                    _lines(block.code), _lines(printed[1]), "the page", "printed", lineterm=""))
                pytest.fail(f"{label}: the output block at line {block.line} is not what the "
                            f"python block at line {printed[0]} printed:\n{diff}", pytrace=False)
            printed = None
            continue
        if block.lang not in PYTHON:
            continue
        # Pad with newlines so tracebacks give the line numbers of the .md file.
        compiled = compile("\n" * block.line + block.code, str(path), "exec")
        tee = _Tee(sys.stdout)
        try:
            with contextlib.redirect_stdout(tee):
                exec(compiled, namespace)
        except Exception:
            pytest.fail(f"{label}: the python block at line {block.line} failed:\n"
                        f"{traceback.format_exc()}", pytrace=False)
        printed = (block.line, tee.getvalue())


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    """cwd in a temp dir, seed 0, one thread (tiny models: threads only add overhead, and on
    a busy 2-core machine two spinning threads are many times slower), non-GUI plots."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


# Pages with no python block (generated benchmark tables) have nothing to run.
PAGES = [p for p in sorted(DOCS.rglob("*.md")) if python_blocks(p.read_text(encoding="utf-8"))]
IDS = [p.relative_to(DOCS).as_posix() for p in PAGES]


def test_there_are_pages_to_run():
    assert len(PAGES) >= 3, IDS


def test_pages_in_subfolders_are_collected():
    """The learning path (docs/learn/) runs like the top-level pages."""
    assert any(i.startswith("learn/") for i in IDS), IDS


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_page(page, docs_env):
    run_page(page, f"docs/{page.relative_to(DOCS).as_posix()}")


def test_blocks_are_found_with_their_lines():
    text = "# t\n```python\na = 1\n```\n\n```bash\nrm -rf /\n```\n  ```py\n  b = a + 1\n  ```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (9, "b = a + 1\n")]


def test_failure_names_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\ntext\n\n```python\nx = 1\nassert x == 2\n```\n")
    with pytest.raises(pytest.fail.Exception) as e:
        run_page(page, "docs/page.md")
    assert "docs/page.md: the python block at line 7 failed" in str(e.value)
    assert f'File "{page}", line 9' in str(e.value)  # the failing line of the .md file


def test_output_blocks_are_checked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint('a  ')\nprint(1 + 1)\n```\n\n```text output\na\n2\n```\n"
                    "\n```text\nnot checked\n```\n")
    run_page(page, "docs/page.md")  # passes: trailing spaces do not count
    page.write_text("```python\nprint(1 + 1)\n```\n\n```text output\n3\n```\n")
    with pytest.raises(pytest.fail.Exception) as e:
        run_page(page, "docs/page.md")
    assert "the output block at line 5 is not what the python block at line 1 printed" in str(e.value)
    assert "-3\n+2" in str(e.value)


def test_output_numbers_are_compared_with_a_tolerance():
    assert same_output(["loss 1.42, 56 of 64"], ["loss 1.43, 56 of 64"])
    assert not same_output(["loss 1.42, 56 of 64"], ["loss 1.52, 56 of 64"])
    assert not same_output(["loss 1.42, 56 of 64"], ["loss 1.42, 55 of 64"])
    assert not same_output(["shape (2, 5)"], ["shape (2, 6)"])
    assert not same_output(["a 1.0"], ["b 1.0"])


# ----------------------------------------------------------------------------- shell blocks
# ```bash / ```console blocks are commands for a terminal: training for minutes, downloads,
# servers. They are not run here (the recipes' blocks run with `make recipes`), but every
# `scratchlm` command in them is parsed as the CLI parses it: the verb exists, every flag
# exists and takes its value, each --section.key override names a real config key with a
# value of the right type, and a --config file it names exists in the repository.
ROOT = DOCS.parent
SHELL = ("bash", "sh", "shell", "console")


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line of the command, argv after `scratchlm`) of each scratchlm command in the shell
    blocks: `$ ` prompts dropped, backslash continuations joined, comments cut; the command
    may follow `torchrun ... -m` or `python -m`."""
    import shlex

    out = []
    for block in fenced_blocks(text):
        if block.lang not in SHELL:
            continue
        lines, start, buf = block.code.splitlines(), None, ""
        for i, raw in enumerate(lines):
            line = raw[2:] if raw.startswith("$ ") else raw
            if block.lang == "console" and not raw.startswith("$ ") and not buf:
                continue  # console output
            if start is None:
                start = block.line + 1 + i
            buf += line.rstrip("\\") + " "
            if line.rstrip().endswith("\\"):
                continue
            words = shlex.split(buf, comments=True)
            buf, at = "", start
            start = None
            for j, w in enumerate(words):
                if w == "scratchlm" or (w == "-m" and j + 1 < len(words) and words[j + 1] == "scratchlm"):
                    k = j + 1 if w == "scratchlm" else j + 2
                    out.append((at, words[k:]))
                    break
    return out


def check_command(argv: list[str]) -> str | None:
    """Why the CLI would reject argv (None: it parses), without running anything."""
    from scratchlm.cli import _verbs, build_parser
    from scratchlm.config import load_run_config
    from scratchlm.errors import ScratchLMError

    verbs = _verbs()
    if not argv or argv[0] not in verbs:
        return f"unknown command {argv[:1]}"
    parser = build_parser(verbs)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if getattr(verbs[argv[0]], "ACCEPTS_OVERRIDES", False):
                args, extra = parser.parse_known_args(argv)
            else:
                args, extra = parser.parse_args(argv), []
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if e.code else None  # --help, --version: 0
    config = getattr(args, "config", None)
    if config and not (ROOT / config).is_file():
        return f"--config {config} is not a file in the repository"
    extra = [x for x in extra if x != "--"]
    if "--train.init_from" in extra:  # a model the command reads, like --data: not checked here
        i = extra.index("--train.init_from")
        extra = extra[:i] + extra[i + 2:]
    if extra:
        try:
            load_run_config(ROOT / config if config else None, overrides=extra)
        except ScratchLMError as e:
            return str(e)
    return None


SHELL_PAGES = [p for p in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
               if shell_commands(p.read_text(encoding="utf-8"))]


def test_there_are_shell_commands_to_check():
    assert len(SHELL_PAGES) >= 5 and any(p.parent.name == "recipes" for p in SHELL_PAGES)
    assert SHELL_PAGES[0].name == "README.md"


@pytest.mark.parametrize("page", SHELL_PAGES, ids=[p.relative_to(ROOT).as_posix() for p in SHELL_PAGES])
def test_shell_commands_parse(page):
    bad = [f"{page.relative_to(ROOT).as_posix()}:{line}: scratchlm {' '.join(argv)}\n    -> {why}"
           for line, argv in shell_commands(page.read_text(encoding="utf-8"))
           if (why := check_command(argv)) is not None]
    assert not bad, "\n".join(bad)


def test_shell_checker_catches_rot():
    text = ("```bash\n$ scratchlm train --config configs/demo.yaml --out r \\\n    --train.max_step 5  # typo\n"
            "torchrun --nproc_per_node 2 -m scratchlm evaluate runs/x --data d --nope\n"
            "scratchlm generate m --prompt 'a b' --greedy\nscratchlm trian\n```\n")
    cmds = shell_commands(text)
    assert [(line, argv[0]) for line, argv in cmds] == [(2, "train"), (4, "evaluate"), (5, "generate"), (6, "trian")]
    why = [check_command(argv) for _, argv in cmds]
    assert "max_step" in why[0] and "--nope" in why[1] and why[2] is None and "unknown command" in why[3]
