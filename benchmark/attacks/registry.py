"""The attack registry: presets from the TOML cards in `attacks/`, plugin attack classes from
the "benchmark.attacks" entry-point group, or a `module:attr` / `file.py:Class` target.

A card (strict: unknown keys or wrong types are errors naming the file)::

    name = "pgd"                                # = file name; used in results and on the CLI
    target = "benchmark.attacks.gradient:PGD"   # Attack subclass, imported only when used
    family = "gradient"                         # gradient | query | universal | generative
    norm = "linf"                               # linf | l2 | l0 (pixels changed)
    eps = "8/255"                               # default budget: "k/255" or a float; "10px" for l0
    gradient_free = false                       # true: runs on models without gradients
    trainable = false                           # true: needs fit() before perturb()
    description = "..."
    reference = "Madry et al., ICLR 2018"       # optional
    [params]                                    # optional; checked by the attack class
    steps = 20
    alpha = "eps/4"
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from benchmark.attacks.base import Attack, AttackInfo, Direction
from benchmark.budget import budget_label, parse_budget_for
from benchmark.cards import FieldSpec, card_paths, check_fields, read_toml
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.registry import Registry, load_target

ENTRY_POINT_GROUP = "benchmark.attacks"
FAMILIES = ("gradient", "query", "universal", "generative")
NORMS = ("linf", "l2", "l0")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PARAM_TYPES = (str, int, float, bool)

# Named sets `--attacks` accepts beside preset names, so a user reproduces a published
# protocol with one word. "msu": the nine attacks of the MSU metrics-robustness benchmark
# (Antsiferova et al., AAAI 2024): six per-image, three universal.
ATTACK_SETS: dict[str, tuple[str, ...]] = {
    "msu": ("fgsm", "ifgsm", "mifgsm", "amifgsm", "korhonen", "madc",
            "uap", "cumulative-uap", "generative-uap"),
}  # fmt: skip

CARD_FIELDS: FieldSpec = {
    "name": ((str,), True),
    "target": ((str,), True),
    "family": ((str,), True),
    "norm": ((str,), True),
    "eps": ((str, int, float), True),
    "gradient_free": ((bool,), False),
    "trainable": ((bool,), False),
    "description": ((str,), True),
    "reference": ((str,), False),
    "params": ((dict,), False),
}


@dataclass(frozen=True, eq=False)
class AttackCard:
    """What listing shows about an attack, without importing or building it."""

    name: str
    target: str
    info: AttackInfo
    eps: float | None  # default budget; None for a plugin that declares none
    params: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the card file; None for plugins
    source: Literal["card", "plugin"] = "card"

    @property
    def eps_label(self) -> str:
        return "-" if self.eps is None else budget_label(self.eps, self.info.norm)

    def load(self) -> Callable[..., Attack]:
        """Import the attack class (or factory); ConfigError if that fails."""
        try:
            obj = load_target(self.target)
        except BenchmarkError:
            raise
        except Exception as exc:  # a plugin module may raise anything at import
            raise ConfigError(
                f"attack {self.name!r}: importing {self.target!r} failed: {exc}"
            ) from exc
        if isinstance(obj, type) and not issubclass(obj, Attack):
            raise ConfigError(f"attack {self.name!r}: {self.target!r} is not an Attack subclass")
        if not callable(obj):
            raise ConfigError(f"attack {self.name!r}: {self.target!r} is not callable")
        return obj

    def problem(self) -> str | None:
        """Why this attack cannot be used here, or None (for `list attacks`)."""
        try:
            self.load()
        except BenchmarkError as exc:
            return str(exc)
        return None


def load_card(path: Path) -> AttackCard:
    """Read and validate one attack card; every error names the file."""
    data = check_fields(read_toml(path), CARD_FIELDS, str(path))
    name = data["name"]
    expected = path.parent.name if path.name == "card.toml" else path.stem
    if not _NAME.match(name):
        raise ConfigError(f"{path}: name {name!r} may use only letters, digits and _ . + -")
    if name != expected:
        raise ConfigError(f"{path}: name {name!r} must match the file name {expected!r}")
    if ":" not in data["target"]:
        raise ConfigError(f"{path}: target {data['target']!r} must look like 'module:Class'")
    for key, allowed in (("family", FAMILIES), ("norm", NORMS)):
        if data[key] not in allowed:
            raise ConfigError(
                f"{path}: {key} must be one of {', '.join(allowed)}, got {data[key]!r}"
            )
    eps = parse_budget_for(data["eps"], data["norm"], f"{path}: eps")
    params = data.get("params", {})
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _PARAM_TYPES) for v in values):
            raise ConfigError(
                f"{path}: params.{key} must be a string, number, boolean or a list of them, "
                f"got {type(value).__name__}"
            )
    info = AttackInfo(
        name=name,
        family=data["family"],
        norm=data["norm"],
        gradient_free=data.get("gradient_free", False),
        trainable=data.get("trainable", False),
        description=data["description"],
        reference=data.get("reference", ""),
    )
    return AttackCard(name, data["target"], info, eps, dict(params), path, "card")


def build_registry(paths: Iterable[Path]) -> Registry:
    """A registry of the given cards plus entry-point plugins (discovered on first lookup)."""
    registry = Registry("attack", ENTRY_POINT_GROUP)
    seen: dict[str, Path] = {}
    for path in paths:
        card = load_card(path)
        if card.name in seen:
            raise ConfigError(
                f"attack {card.name!r} is defined twice: {seen[card.name]} and {path}"
            )
        seen[card.name] = path
        registry.register(card.name, card.target, card=card)
    return registry


@functools.cache
def attack_registry() -> Registry:
    """The registry of the repository's `attacks/` cards, built on first use."""
    return build_registry(card_paths("attack"))


def list_attacks() -> list[AttackCard]:
    """Every registered attack, sorted by name; plugins are imported but not instantiated."""
    return [_card_of(entry.name, entry.target, entry.meta) for entry in attack_registry()]


def create_attack(
    name: str,
    eps: float | str | None = None,
    direction: Direction = "up",
    seed: int = 0,
    **overrides: Any,
) -> Attack:
    """Build an attack by card name, entry-point name, or `module:attr` / `file.py:Class`.

    `eps` None takes the card's default; `overrides` replace entries of the card's [params].
    """
    if direction not in ("up", "down"):
        raise ConfigError(f"direction must be 'up' or 'down', got {direction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    registry = attack_registry()
    if ":" in name and name not in registry:
        card = _card_of(None, name, {})
    else:
        entry = registry.get(name)  # UnknownNameError with suggestions
        card = _card_of(entry.name, entry.target, entry.meta)
    factory = card.load()
    if eps is None:
        if card.eps is None:
            raise ConfigError(
                f"attack {card.name!r} declares no default eps; give one with --eps, e.g. --eps 4/255"
            )
        budget = card.eps
    else:
        budget = parse_budget_for(eps, card.info.norm)
    where = str(card.path) if card.path else card.target
    if overrides:
        where += " with " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    try:
        attack = factory(
            card.info, budget, direction=direction, seed=seed, **{**card.params, **overrides}
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not isinstance(attack, Attack):
        raise ConfigError(
            f"{where}: {card.target!r} returned {type(attack).__name__}, not an Attack"
        )
    if card.info.trainable and type(attack).fit is Attack.fit:
        raise ConfigError(
            f"{where}: the card says trainable = true but {type(attack).__name__} has no fit()"
        )
    return attack


def expand_attack_sets(names: Iterable[str]) -> tuple[str, ...]:
    """Attack names with every set name (`ATTACK_SETS`) replaced by its members, in order,
    each name once."""
    out: dict[str, None] = {}
    for name in names:
        for member in ATTACK_SETS.get(name, (name,)):
            out.setdefault(member, None)
    return tuple(out)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """CLI `key=value` pairs to params: values read as TOML (10, 0.5, true), else as strings
    ("1/255", "eps/4")."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"attack parameter {item!r} must look like key=value")
        try:
            out[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip()
    return out


def _card_of(name: str | None, target: Any, meta: Mapping[str, Any]) -> AttackCard:
    """The card of a registry entry; for a plugin, one made from the class's attributes.

    A plugin class may define `info: AttackInfo` and `default_eps`; without them it gets
    family "plugin" and needs an explicit eps. A direct target is named by `info.name`, else
    by its attribute name.
    """
    if "card" in meta:
        return meta["card"]
    target = str(target)
    attr = target.rsplit(":", 1)[-1]
    fallback = AttackCard(
        name or attr, target, AttackInfo(name or attr, "plugin"), None, source="plugin"
    )
    try:
        obj = fallback.load()
    except BenchmarkError as exc:
        if name is None:
            raise
        info = replace(fallback.info, description=f"cannot load: {exc}")
        return replace(fallback, info=info)
    declared = getattr(obj, "info", None)
    info = declared if isinstance(declared, AttackInfo) else None
    label = name or (info.name if info else attr)
    if info is None:
        doc = (obj.__doc__ or "").strip().splitlines()
        info = AttackInfo(label, "plugin", description=doc[0] if doc else "")
    default_eps = getattr(obj, "default_eps", None)
    eps = (
        None
        if default_eps is None
        else parse_budget_for(default_eps, info.norm, f"{target}: default_eps")
    )
    return AttackCard(label, target, replace(info, name=label), eps, source="plugin")
