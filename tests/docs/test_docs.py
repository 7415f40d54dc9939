"""Every ```python block of every docs/*.md page runs, so the docs cannot rot.

One test per page: its python blocks run in order in one shared namespace (a page reads top
to bottom like a notebook), after torch.manual_seed(0), with a temporary directory as the
working directory. Other fences (```bash, ```console, ```text, ...) are shown, not run. A
failure names the page and the line of the block's opening fence, and the traceback points
at lines of the .md file.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(1-based line of the opening fence, code) of each ```python / ```py block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang.lower() in ("python", "py", "python3"):
            blocks.append((start, "\n".join(body) + "\n"))
    return blocks


def run_page(path: Path, label: str) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        # Pad with newlines so tracebacks give the line numbers of the .md file.
        compiled = compile("\n" * line + code, str(path), "exec")
        try:
            exec(compiled, namespace)
        except Exception:
            pytest.fail(f"{label}: the python block at line {line} failed:\n"
                        f"{traceback.format_exc()}", pytrace=False)


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
PAGES = [p for p in sorted(DOCS.glob("*.md")) if python_blocks(p.read_text(encoding="utf-8"))]


def test_there_are_pages_to_run():
    assert len(PAGES) >= 3, [p.name for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page(page, docs_env):
    run_page(page, f"docs/{page.name}")


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
