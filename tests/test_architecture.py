"""The package's shape (issue 15, docs/ARCHITECTURE.md): no import cycle between scratchlm's
modules, lazy imports inside functions included, and no module outside models/ touching a
decoding state's fields (they go through the DecodeState contract)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    out = {}
    for f in (SRC / "scratchlm").rglob("*.py"):
        rel = f.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the scratchlm modules it imports anywhere (module level or in a function)."""
    mods = module_names()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scratchlm"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "scratchlm.registry" in graph["scratchlm.config"]  # the graph sees real edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


STATE_FIELDS = re.compile(
    r"\b(cache|state)\.(k|v|length|pad|h|c|self_kv|cross_k|cross_v|mask|memory|keys|feed|"
    r"attention|sources)\b\s*(?!\()")


def test_no_module_outside_models_touches_a_state_field():
    offenders = []
    for m, f in module_names().items():
        if m.startswith("scratchlm.models"):
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if STATE_FIELDS.search(line.split("#")[0]):
                offenders.append(f"{f.relative_to(SRC)}:{i}: {line.strip()}")
    assert offenders == []


def test_the_state_field_pattern_catches_what_it_should():
    assert STATE_FIELDS.search("batch.cache.length = pad")
    assert STATE_FIELDS.search("a.k = torch.cat([cache.k, b.k], 1)")
    assert not STATE_FIELDS.search("cache.reorder(index)") and not STATE_FIELDS.search("cache.grow(n)")
