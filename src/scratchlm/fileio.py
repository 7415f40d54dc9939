"""Safe outputs: nothing half-written at a path a user asked for, nothing replaced that
scratchlm did not write, and no crash leftovers that stay forever.

Files are written to a temporary sibling and renamed into place; directories are built in a
temporary sibling directory and swapped in only when complete. Temp names carry the writer's
PID (`.NAME.PID.XXXX.tmp`, `.NAME.old-PID`), so the next write to NAME removes those of a
writer that is dead (a kill -9, a power cut) and leaves a live writer's alone.

Every directory scratchlm writes holds a marker file (MARKER): `claim_out_dir` lets
`--overwrite` replace only such a directory, never a user's own, and never one that is, holds
or lies inside the command's inputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchLMError

MARKER = ".scratchlm"
_MARKER_TEXT = "written by scratchlm: `--overwrite` may replace this directory\n"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- leftovers
def _pid_alive(pid: int) -> bool:
    """True unless no process `pid` runs (a zombie counts as dead: it writes nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _leftover_re(name: str) -> re.Pattern[str]:
    # .NAME.PID.XXXX.tmp (atomic_file, atomic_dir, temp_path) or .NAME.old-PID (atomic_dir)
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.[A-Za-z0-9_]+\.tmp|old-(\d+))$")


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temp names a dead writer of `path` left beside it; return what went.

    Only names of our own pattern whose PID runs no process are touched. A `.NAME.old-PID`
    while NAME is missing (a kill between the two renames of a swap) is moved back to NAME
    rather than removed: it is the last complete version."""
    path = Path(path)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    pattern = _leftover_re(path.name)
    gone = []
    for e in sorted(entries, key=lambda e: e.name):
        m = pattern.match(e.name)
        if not m or _pid_alive(int(m.group(1) or m.group(2))):
            continue
        p = Path(e.path)
        if m.group(2) and not os.path.lexists(path):
            with contextlib.suppress(FileNotFoundError):  # another process restored it
                os.replace(p, path)
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        gone.append(p)
    return gone


def _mkparent(path: Path) -> None:
    """Create `path`'s parent, saying in one line when a file stands in the way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_parents(path)
        raise


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name beside `path` for writers that open files by name (GGUF): create,
    write, then `os.replace` it onto `path`. Leftovers of dead writers are removed first."""
    path = Path(path)
    _mkparent(path)
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


# ----------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: str = "w") -> Iterator[Any]:
    """Open a temp file next to `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it owner-only; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


class BadJSON(ScratchLMError, ValueError):
    """A JSON file that does not parse: one line for the CLI, a ValueError for callers that
    fall back on one."""


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadJSON(f"{path} is not valid JSON ({e})") from None


def inside_dir(directory: str | os.PathLike, name: Any, *, source: str) -> Path:
    """`directory / name` for a path read from `source` (a file of that directory), refused
    in one line unless it is a relative path that stays inside the directory (no absolute
    path, no `..` out of it, no link leading out)."""
    d = Path(directory)
    if not isinstance(name, str) or not name:
        raise ScratchLMError(f"{source} names {name!r} where a file name inside {d} belongs")
    p = d / name
    root = d.resolve()
    if Path(name).is_absolute() or not (p.resolve() == root or root in p.resolve().parents):
        raise ScratchLMError(f"{source} names {name!r}, which lies outside {d}; refusing to read it")
    return p


@contextlib.contextmanager
def damaged_if_wrong(path: str | os.PathLike, fix: str = "run `scratchlm prepare` again") -> Iterator[None]:
    """Inside: reading the fields of `path` (a meta.json); a missing or mistyped field is one
    line naming the file instead of a KeyError/TypeError traceback."""
    try:
        yield
    except ScratchLMError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ScratchLMError(f"{path} is damaged ({type(e).__name__}: {e}); {fix}") from None


def mark_dir(path: str | os.PathLike) -> None:
    """Write the marker saying scratchlm made this directory (so --overwrite may replace it)."""
    (Path(path) / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")


def _json_has(path: Path, key: str) -> bool:
    try:
        return path.is_file() and key in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def is_ours(path: str | os.PathLike) -> bool:
    """Written by scratchlm: the marker, or (directories from before the marker) the files
    only scratchlm writes: a data directory's meta.json with its splits, a model or checkpoint
    config.json with a "scratchlm" block, a tokenizer_config.json with "scratchlm_kind", or a
    run's config.yaml beside its metrics.jsonl or last/."""
    d = Path(path)
    return ((d / MARKER).is_file() or _json_has(d / "meta.json", "splits")
            or _json_has(d / "config.json", "scratchlm")
            or _json_has(d / "tokenizer_config.json", "scratchlm_kind")
            or ((d / "config.yaml").is_file()
                and ((d / "metrics.jsonl").is_file() or (d / "last").is_dir())))


@functools.cache
def _renameat2() -> Any:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True),
                       "renameat2", None)
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _usual_modes(directory: Path) -> None:
    """Give a directory, its folders and files the modes of plain mkdir/open (mkdtemp and
    some writers, safetensors' among them, make them owner-only)."""
    mask = current_umask()
    os.chmod(directory, 0o777 & ~mask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p) and not os.stat(p).st_mode & 0o111:
                os.chmod(p, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory; on success it (with the MARKER) replaces `path`.

    An old `path` is swapped out in one atomic exchange where the OS has one, so at every
    moment `path` holds either the old or the new complete directory."""
    path = Path(path)
    _mkparent(path)
    clean_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield tmp
        mark_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_modes(tmp)
    if path.is_dir() and not path.is_symlink() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        return
    old = None
    if os.path.lexists(path):
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None and old.is_symlink():  # a link stood at `path`: its target stays
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- --out
def _related(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "holds"
    return None


def check_parents(path: str | os.PathLike) -> None:
    """One line if a file stands where a folder above `path` must be (`--out file.txt/x`)."""
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ScratchLMError(f"cannot write {path}: {blocker} is a file, not a directory")


def claim_out_dir(
    out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = (),
    kind: str = "output directory", reuse: bool = False, flag: str = "--overwrite",
) -> Path:
    """Check that a command may write the directory `out`, before it reads or computes anything.

    Refused, with one line: `out` equal to, inside or above one of `inputs`; a file at `out`
    or above it; an existing non-empty `out` without `overwrite`; with `overwrite`, one
    scratchlm did not make (no MARKER). `reuse`: a marked directory may be written into without
    `overwrite` (a run killed before its first checkpoint). Nothing is deleted here: the
    command's atomic write replaces `out` only once the new one is complete. Removes dead
    writers' leftovers beside `out`."""
    out = Path(out)
    target = out.resolve()
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        how = _related(target, Path(inp).resolve())
        if how:
            raise ScratchLMError(f"--out {out} {how} the input {inp}; choose an --out apart from the inputs")
    if out.exists() and not out.is_dir():
        raise ScratchLMError(f"--out {out} is a file; the {kind} must be a directory")
    check_parents(out)
    clean_leftovers(out)
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if overwrite or reuse:
        if is_ours(out):
            return out
        if overwrite:
            raise ScratchLMError(
                f"{out} was not written by scratchlm (no {MARKER} marker), so {flag} will not "
                f"replace it; remove it yourself or choose another --out")
    raise ScratchLMError(f"{out} already exists and is not empty; pass {flag} to replace it "
                         f"or choose another --out")


def disk_full_message(e: OSError, out: str | os.PathLike | None = None) -> str | None:
    """The one line for a full disk or quota (ENOSPC, EDQUOT), else None. It names the file
    being written as the user knows it (not its temp name), else the command's `out`."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    name = re.sub(r"(^|/)\.([^/]+)\.\d+\.[A-Za-z0-9_]+\.tmp(?=/|$)", r"\1\2", str(e.filename or ""))
    if out is not None and not (name and Path(out).resolve().parent in Path(name).resolve().parents):
        name = str(out)  # a write() names no file, or copying names the source
    where = f" writing {name}" if name else ""
    return (f"no space left on the device{where} ({os.strerror(e.errno)}); nothing was "
            "replaced: free some space (or pick another --out) and run the command again")
