"""The `scratchlm` command: a dict of verbs, one thin file each (parse -> build -> call).

Errors a user can cause print one line (`error: ...`) and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import sys
from types import ModuleType

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import disk_full_message


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
        check_shared_flags(args)
        return int(verbs[args.verb].run(args, extra) or 0)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's, not the code's: a full disk, a read-only directory
        line = os_error_line(e, getattr(args, "out", None))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


# Flags several verbs share, checked once for all of them: name -> (lowest, highest).
SHARED_RANGES = {"num_beams": (1, None), "port": (0, 65535)}


def check_shared_flags(args: argparse.Namespace) -> None:
    """--device, --num-beams, --port: the same rule in every verb that has them."""
    if isinstance(getattr(args, "device", None), str):
        from scratchlm.config import check_device

        check_device(args.device, "--device")
    for name, (lo, hi) in SHARED_RANGES.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and (value < lo or (hi is not None and value > hi)):
            flag = "--" + name.replace("_", "-")
            bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise ScratchLMError(f"{flag} must be {bound}, got {value}")


# Errors of the file system a user can fix, printed in one line (others keep their traceback).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EMFILE}


def os_error_line(e: OSError, out: str | None = None) -> str | None:
    full = disk_full_message(e, out)
    if full is not None:
        return full
    if e.errno in _USER_ERRNOS:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or type(e).__name__}{where}"
    return None


if __name__ == "__main__":
    sys.exit(main())
