"""The `scratchlm` command: a dict of verbs, one thin file each (parse -> build -> call).

Errors a user can cause print one line (`error: ...`) and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from types import ModuleType

from scratchlm.errors import ScratchLMError


def _verbs() -> dict[str, ModuleType]:
    from scratchlm.cli import (
        attention,
        chat,
        convert,
        datasets,
        download,
        evaluate,
        finetune,
        generate,
        merge_lora,
        plot,
        prepare,
        serve,
        tokenizer,
        train,
        translate,
    )

    return {
        "datasets": datasets,
        "tokenizer": tokenizer,
        "prepare": prepare,
        "train": train,
        "finetune": finetune,
        "merge-lora": merge_lora,
        "generate": generate,
        "translate": translate,
        "chat": chat,
        "serve": serve,
        "evaluate": evaluate,
        "plot": plot,
        "attention": attention,
        "convert": convert,
        "download": download,
    }


def build_parser(verbs: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Build language models from scratch: tokenize, prepare, train, generate, evaluate.",
    )
    from scratchlm import __version__

    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name, mod in verbs.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = _verbs()
    if argv and not argv[0].startswith("-") and argv[0] not in verbs:
        close = difflib.get_close_matches(argv[0], verbs, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"error: unknown command '{argv[0]}'{hint} (commands: {', '.join(verbs)})",
              file=sys.stderr)
        return 2
    parser = build_parser(verbs)
    if not argv:
        parser.print_help()
        return 2
    verb = verbs.get(argv[0])
    if verb is not None and getattr(verb, "ACCEPTS_OVERRIDES", False):
        args, extra = parser.parse_known_args(argv)
    else:
        args, extra = parser.parse_args(argv), []
    try:
        return int(verbs[args.verb].run(args, extra) or 0)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
