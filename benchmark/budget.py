"""Perturbation budgets: parsed from "8/255" or 0.03, validated to lie in (0, 1]."""

from __future__ import annotations

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


def budget_label(eps: float) -> str:
    """Human label: 8/255 when eps is a whole number of 1/255 steps, else the decimal."""
    k = eps * 255.0
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"
