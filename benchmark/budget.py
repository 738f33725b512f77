"""Perturbation budgets: parsed from "8/255" or 0.03, validated to lie in (0, 1]; an L0 budget
(pixels changed) is a whole number of pixels written "10px" (or 10 on an L0 attack's card)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from benchmark.errors import ConfigError

PIXELS = "px"  # the suffix of an L0 budget: "10px" is 10 pixels changed


def parse_budget(value: str | float | int, what: str = "eps") -> float:
    """Parse a budget in [0,1]-image units; "8/255" and 0.0314 are both accepted, and "10px"
    (an L0 budget: 10 pixels changed) gives 10.0."""
    if isinstance(value, str) and value.strip().lower().endswith(PIXELS):
        return parse_pixels(value, what)
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number or a fraction like 8/255, got {value!r}")
    try:
        x = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"{what} must be a number or a fraction like 8/255, got {value!r}"
        ) from None
    if not (0.0 < x <= 1.0):
        raise ConfigError(f"{what} must lie in (0, 1] (images are in [0,1]), got {value!r}")
    return x


def parse_pixels(value: str | float | int, what: str = "eps") -> float:
    """An L0 budget: a whole number of pixels >= 1 ("10px", "10" or 10), as a float."""
    text = value.strip().lower().removesuffix(PIXELS) if isinstance(value, str) else value
    try:
        count = float(text) if not isinstance(text, bool) else math.nan
    except ValueError:
        count = math.nan
    if not (count >= 1 and count.is_integer() and count < 2**53):
        raise ConfigError(
            f"{what} is an L0 budget: a whole number of pixels >= 1 like 10px, got {value!r}"
        )
    return count


def parse_budget_for(value: str | float | int, norm: str, what: str = "eps") -> float:
    """A budget of the given threat model: pixels for "l0", [0,1]-image units otherwise."""
    return parse_pixels(value, what) if norm == "l0" else parse_budget(value, what)


def parse_budgets(value: str | float | Sequence[str | float] | None) -> tuple[float, ...]:
    """Several budgets: "4/255,8/255", one number, or a sequence of either form; None -> ()
    (each attack card's default)."""
    if value is None:
        return ()
    parts = [value] if isinstance(value, str | int | float) else list(value)
    items = [v for part in parts for v in (part.split(",") if isinstance(part, str) else [part])]
    budgets = tuple(parse_budget(v) for v in items if not (isinstance(v, str) and not v.strip()))
    if not budgets:
        raise ConfigError("eps is empty: give budgets like 4/255,8/255, or none for the defaults")
    return budgets


def budget_label(eps: float, norm: str | None = None) -> str:
    """Human label: 8/255 when eps is a whole number of 1/255 steps, else the decimal; an L0
    budget (norm "l0", or any eps above 1, which only an L0 budget can be) as "10px".

    Without the norm, a one-pixel L0 budget (1.0) reads as 255/255; callers that know the
    norm pass it."""
    if norm == "l0" or eps > 1:
        return f"{round(eps)}{PIXELS}"
    k = eps * 255.0
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"
