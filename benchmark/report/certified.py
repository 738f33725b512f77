"""Certified worst-case gains of a smoothed model's cell, beside its empirical gains.

A smoothed model's cell stores, per image, the certified interval of the smoothed score within
the L2 ball that contains the cell's threat (`CellResult.certified`,
benchmark.models.smoothing). In the attacked direction and in the leaderboard's units, an
image's certified gain is upper - clean ("up") or clean - lower ("down"): no perturbation in
the ball moves the smoothed score further, with probability >= 1 - alpha per image. The cell's
certified worst-case gain is the largest over the images that did not abstain.

An attacked image whose (estimated) smoothed score lies beyond its certified gain is an
`escape`: the certificate or the attack is wrong (or, with probability about alpha per image,
the sampling), and the leaderboard flags it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

ESCAPE_TOL = 1e-9  # float rounding, in normalised units

EMPTY: dict[str, Any] = {
    "certified_by": "",
    "certified_gain_l2eps": float("nan"),
    "certified_radius": float("nan"),
    "certified_abstain_rate": float("nan"),
    "certified_escapes": 0,
    "empirical_max_gain": float("nan"),
}


def _max(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else float("nan")


def certified_terms(
    cert: Mapping[str, np.ndarray],
    q: np.ndarray,
    qmap: Callable[[np.ndarray], np.ndarray],
    direction: str,
    suffix: str = "",
) -> np.ndarray:
    """Each image's certified gain in the attacked direction (quality-up, normalised units);
    NaN where the certificate abstained (its bounds at that radius are NaN)."""
    a, b = qmap(cert[f"lower{suffix}"]), qmap(cert[f"upper{suffix}"])
    abstain = ~(np.isfinite(a) & np.isfinite(b))
    if not suffix and "abstain" in cert:  # `abstain` is recorded for the ball's radius
        abstain |= np.asarray(cert["abstain"], dtype=np.float64) > 0
    with np.errstate(invalid="ignore"):
        q_low, q_high = np.fmin(a, b), np.fmax(a, b)  # a lower-better score flips the interval
        terms = q_high - q if direction != "down" else q - q_low
    return np.where(abstain, np.nan, terms)


def certified_scores(
    cert: Mapping[str, np.ndarray] | None,
    method: str,
    q: np.ndarray,
    q_adv: np.ndarray,
    qmap: Callable[[np.ndarray], np.ndarray],
    direction: str,
    applied: bool,
) -> dict[str, Any]:
    """The certificate's summary fields of one cell (`EMPTY` without a certificate).

    `certified_gain`: max over images of the certified gain (NaN where every image abstained);
    `certified_escapes`: images whose empirical gain exceeds their own certified gain."""
    if not cert:
        return dict(EMPTY)
    terms = certified_terms(cert, q, qmap, direction)
    sign = -1.0 if direction == "down" else 1.0
    effect = sign * (np.asarray(q_adv, dtype=np.float64) - q)
    certified = np.isfinite(terms)
    both = certified & np.isfinite(effect)
    escapes = int((effect[both] > terms[both] + ESCAPE_TOL).sum()) if applied else 0
    radius = np.asarray(cert.get("radius", [np.nan]), dtype=np.float64)
    return {
        "certified_by": method,
        "certified_gain": _max(terms),
        "certified_gain_l2eps": _max(certified_terms(cert, q, qmap, direction, "_l2eps")),
        "certified_radius": _max(radius),
        "certified_abstain_rate": float(1.0 - certified.mean()) if terms.size else float("nan"),
        "certified_escapes": escapes,
        "empirical_max_gain": _max(effect[both]) if applied else float("nan"),
    }


def certificate_note(rows: list[Mapping[str, Any]]) -> list[str]:
    """Leaderboard notes of one model's counted cells at one threat: a gain above the
    certified bound is flagged as a bug; abstentions are stated."""
    notes = []
    for r in rows:
        cap = r.get("certified_gain", float("nan"))
        over_cap = np.isfinite(cap) and r["effect"] > cap + ESCAPE_TOL
        escapes = int(r.get("certified_escapes") or 0)
        if escapes or over_cap:
            where = f"{escapes} image(s) beyond their certified interval" if escapes else ""
            where = where or f"gain {r['effect']:.4g} > certified {cap:.4g}"
            notes.append(
                f"BUG: {r['attack']} exceeds the certified bound ({where}): the certificate "
                "or the attack is wrong"
            )
    rates = [float(r.get("certified_abstain_rate") or 0.0) for r in rows]
    rates = [x for x in rates if np.isfinite(x) and x > 0]
    if rates and max(rates) >= 1:
        notes.append("certificate abstained on every image: no certified bound")
    elif rates:
        notes.append(
            f"certificate abstained on {max(rates):.0%} of images (certified over the rest)"
        )
    return notes
