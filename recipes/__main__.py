"""Run the recipes of docs/recipes/ end to end and rewrite their result sections.

    python -m recipes all                     # every recipe, in order (what `make recipes` does)
    python -m recipes textgen-en qa           # some of them
    python -m recipes textgen-en --render-only   # rewrite the page from the last run's logs
    python -m recipes --list

Each recipe runs on its own: a recipe that fails (a step exits non-zero, its output cannot be
parsed, or the driver itself raises) is reported in one line and the others still run; the
exit status is non-zero if any failed. See recipes/driver.py for steps, logs and pages.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from recipes.driver import (
    LOGS,
    ROOT,
    Recipe,
    RecipeError,
    read_logs,
    read_machine,
    render_page,
    run_recipe,
)


def run_one(recipe: Recipe, *, render_only: bool, logs_root: Path, root: Path) -> None:
    """Run (unless `render_only`) one recipe and rewrite its page from the logs."""
    logs = logs_root / recipe.name
    if not render_only:
        run_recipe(recipe, logs_root=logs_root)
    outputs, timings = read_logs(recipe, logs)
    ran = time.gmtime((logs / "timings.json").stat().st_mtime)  # when the run ended
    render_page(recipe, outputs, timings, root=root, machine=read_machine(logs),
                stamp=time.strftime("%Y-%m-%d %H:%M UTC", ran))


def main(argv: list[str] | None = None, *, recipes: dict[str, Recipe] | None = None,
         logs_root: Path = LOGS, root: Path = ROOT) -> int:
    if recipes is None:
        from recipes.book import RECIPES as recipes

    p = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"recipes to run: all, or some of {', '.join(recipes)}")
    p.add_argument("--render-only", action="store_true", help="rewrite pages from the last run's logs")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list or not args.names:
        for r in recipes.values():
            print(f"{r.name:16s} {r.page}  {r.title}")
        return 0
    names = list(recipes) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in recipes]
    if unknown:
        print(f"error: unknown recipe {unknown[0]!r} (known: all, {', '.join(recipes)})", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        recipe = recipes[name]
        try:
            run_one(recipe, render_only=args.render_only, logs_root=logs_root, root=root)
            print(f"[{name}] rewrote {recipe.page}")
        except RecipeError as e:
            print(f"error: recipe {name}: {e}", file=sys.stderr)
            failed.append(name)
        except Exception as e:  # a driver bug: keep the traceback in the logs, run the next recipe
            where = logs_root / name / "driver-error.txt"
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(traceback.format_exc(), encoding="utf-8")
            print(f"error: recipe {name}: {type(e).__name__}: {e} (traceback in {where})", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"error: {len(failed)} recipe(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
