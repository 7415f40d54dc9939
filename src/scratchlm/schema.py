"""Dataclass sections from plain values (YAML, JSON, command-line strings): each value is
checked against its field's type and range, and unknown keys are refused naming the closest
valid one. config.py builds the run sections with it, registry.py the model's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from scratchlm.errors import ScratchLMError


def _type_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and for CLI strings, convert) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ScratchLMError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:  # a YAML list, or comma-separated on the command line
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ScratchLMError(f"{key} must be a list of names (a,b), got {value!r}")
        return items
    want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        try:
            if tp is bool:
                low = text.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            if tp is int:
                return int(text)
            return _coerce(float(text), float, key)
        except ValueError:
            raise ScratchLMError(f"{key} must be {want}, got {value!r}") from None
    if tp is float and isinstance(value, float | int) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ScratchLMError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ScratchLMError(f"{key} must be {want}, got {value!r}")
    return value


def _check_keys(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {section}.{close[0]}?" if close else ""
            raise ScratchLMError(
                f"unknown config key {section}.{k}{hint} (valid: {', '.join(names)})"
            )
        out[k] = _coerce(v, _type_of(cls, k), f"{section}.{k}")
    return out


# Ranges by key name, for every section and model family (a rule applies where the key
# exists; None values mean "the default" and are not checked): (low, low_inclusive, high,
# high_inclusive). The dataclasses' own checks run first; these catch what they leave open.
POSITIVE = (0.0, False, math.inf, False)
NON_NEGATIVE = (0.0, True, math.inf, False)
AT_LEAST_ONE = (1, True, math.inf, False)
RANGES: dict[str, tuple[float, bool, float, bool]] = {
    **dict.fromkeys(("norm_eps", "init_std", "rope_theta", "rope_factor", "rope_low_freq_factor",
                     "rope_high_freq_factor"), POSITIVE),
    **dict.fromkeys(("rope_original_max_len", "weight_decay", "grad_clip"), NON_NEGATIVE),
    **dict.fromkeys(("n_kv_head", "n_enc_layer", "d_ff", "d_embed", "attn_head_dim", "val_beam"),
                    AT_LEAST_ONE),
    "min_lr_ratio": (0.0, True, 1.0, True),
    "beta1": (0.0, True, 1.0, False),
    "beta2": (0.0, True, 1.0, False),
    "seed": (0, True, 2**63, False),
    "val_fraction": (0.0, True, 1.0, False),
}


def _range_text(lo: float, lo_in: bool, hi: float, hi_in: bool) -> str:
    if hi == math.inf:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_ranges(obj: Any, section: str) -> None:
    """Refuse a value outside its key's range (RANGES), naming the key."""
    for f in dataclasses.fields(obj):
        rule = RANGES.get(f.name)
        value = getattr(obj, f.name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        lo, lo_in, hi, hi_in = rule
        if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
            raise ScratchLMError(f"{section}.{f.name} must be {_range_text(*rule)}, got {value}")


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    obj = cls(**_check_keys(cls, values, section))
    check_ranges(obj, section)
    return obj
