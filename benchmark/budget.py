"""Perturbation budgets: parsed from "8/255" or 0.03, validated to lie in (0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from benchmark.errors import ConfigError


def parse_budget(value: str | float | int, what: str = "eps") -> float:
    """Parse a budget in [0,1]-image units; "8/255" and 0.0314 are both accepted."""
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


def budget_label(eps: float) -> str:
    """Human label: 8/255 when eps is a whole number of 1/255 steps, else the decimal."""
    k = eps * 255.0
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"
