"""Text for table cells: numbers, intervals, parameter counts, threat labels, safe names."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _is_missing(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float | np.floating) and math.isnan(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    if _is_missing(x):
        return "-"
    if isinstance(x, float | np.floating):
        return f"{float(x):.{digits}f}" if np.isfinite(x) else str(float(x))
    return str(x)


def fmt_ci(value: Any, low: Any, high: Any, digits: int = 3) -> str:
    if _is_missing(value):
        return "-"
    if _is_missing(low) or _is_missing(high):
        return fmt_num(value, digits)
    return f"{fmt_num(value, digits)} [{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


def fmt_params(n: Any) -> str:
    if _is_missing(n):
        return "-"
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n)}"


def threat_label(norm: Any, eps_label: Any) -> str:
    norm_s = {"linf": "Linf", "l2": "L2"}.get(str(norm), str(norm))
    return f"{norm_s} {eps_label}"


def printable(s: Any, width: int | None = None) -> str:
    """Terminal-safe text: control characters (ANSI escapes, newlines) shown as \\xNN."""
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(s))
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def fmt_rank(rank: Any, tied_with: Any) -> str:
    """The rank, prefixed "~" where the gain interval overlaps the next better model's."""
    text = fmt_num(rank)
    return f"~{text}" if isinstance(tied_with, str) and tied_with else text


def fmt_images(n_images: Any, n_groups: Any, unit: Any) -> str:
    """Images, with the source photographs behind them where intervals resample those."""
    text = fmt_num(n_images)
    if unit == "photograph" and not _is_missing(n_groups):
        return f"{text} ({int(n_groups)} photos)"
    return text
