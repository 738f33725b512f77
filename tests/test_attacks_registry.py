"""Attack cards, the attack registry and plugin attacks."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

import benchmark.attacks.registry as reg
from benchmark.attacks.base import Attack
from benchmark.attacks.gradient import IFGSM, PGD
from benchmark.attacks.registry import (
    build_registry,
    create_attack,
    list_attacks,
    load_card,
    parse_overrides,
)
from benchmark.cards import CARD_DIRS
from benchmark.errors import ConfigError, UnknownNameError
from benchmark.models.base import IQAModel, ModelInfo

GOOD_CARD = """\
name = "{name}"
target = "benchmark.attacks.gradient:IFGSM"
family = "gradient"
norm = "linf"
eps = "4/255"
gradient_free = false
trainable = false
description = "test preset"

[params]
steps = 2
"""

PLUGIN = '''\
import torch
from benchmark.attacks.base import Attack, AttackInfo


class SignNoise(Attack):
    """Random signs: a gradient-free baseline."""

    info = AttackInfo("sign-noise", "query", gradient_free=True)
    default_eps = "4/255"

    def _perturb(self, model, x, ref):
        return (x + self.eps * torch.randn_like(x).sign()).clamp(0, 1)
'''


@pytest.fixture
def fresh_registry():
    """Rebuild the cached registry around a test (entry points are read once per build)."""
    reg.attack_registry.cache_clear()
    yield
    reg.attack_registry.cache_clear()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_cards_list_and_build():
    cards = {c.name: c for c in list_attacks()}
    assert {"fgsm", "ifgsm", "mifgsm", "pgd"} <= set(cards)
    assert {n: cards[n].eps_label for n in ("fgsm", "ifgsm", "mifgsm", "pgd")} == {
        "fgsm": "10/255",
        "ifgsm": "10/255",
        "mifgsm": "10/255",
        "pgd": "8/255",
    }
    for card in cards.values():
        assert card.source == "card" and card.path is not None and card.path.is_file()
        assert card.info.name == card.name and card.info.reference
        assert card.problem() is None
        for direction in ("up", "down"):
            attack = create_attack(card.name, direction=direction, seed=1)
            assert isinstance(attack, Attack) and attack.info == card.info
            config = json.loads(json.dumps(attack.config()))
            assert config["direction"] == direction and config["seed"] == 1
    assert cards["pgd"].params == {"steps": 20, "alpha": "eps/4", "random_start": True}
    assert not (CARD_DIRS["attack"] / "__init__.py").exists()  # never an importable package


def test_unknown_names_get_suggestions():
    with pytest.raises(UnknownNameError, match="did you mean 'pgd'"):
        create_attack("pdg")
    with pytest.raises(UnknownNameError, match="unknown attack 'zzz'"):
        create_attack("zzz")


def test_eps_and_param_overrides():
    attack = create_attack("ifgsm", eps="4/255", steps=3)
    assert isinstance(attack, IFGSM)
    assert attack.eps == pytest.approx(4 / 255) and attack.steps == 3
    assert attack.alpha == pytest.approx(1 / 255)  # untouched card params stay
    assert create_attack("ifgsm", eps=0.02).eps == 0.02
    with pytest.raises(ConfigError, match="ifgsm.toml with stepz=3.*unknown param"):
        create_attack("ifgsm", stepz=3)
    for eps in ("0", "2", "x/255", True):
        with pytest.raises(ConfigError):
            create_attack("ifgsm", eps=eps)
    with pytest.raises(ConfigError, match="direction"):
        create_attack("ifgsm", direction="sideways")
    with pytest.raises(ConfigError, match="seed"):
        create_attack("ifgsm", seed="1")


BAD_CARDS = [
    (lambda t: 'colour = "red"\n' + t, "unknown key"),
    (lambda t: t.replace('eps = "4/255"', "eps = true"), "'eps' must be"),
    (lambda t: t.replace('eps = "4/255"', 'eps = "0/255"'), "eps must lie in"),
    (lambda t: t.replace("gradient_free = false", 'gradient_free = "no"'), "gradient_free"),
    (lambda t: t.replace('family = "gradient"', 'family = "magic"'), "family must be one of"),
    (lambda t: t.replace('norm = "linf"', 'norm = "l1"'), "norm must be one of"),
    (lambda t: t.replace('name = "good"', 'name = "other"'), "must match the file name"),
    (lambda t: t.replace(':IFGSM"', '.IFGSM"'), "must look like 'module:Class'"),
    (lambda t: t.replace('description = "test preset"\n', ""), "missing required key"),
    (lambda t: t + "[params.nested]\nx = 1\n", "params.nested"),
    (lambda t: t + "oops = \n", "not valid TOML"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_CARDS, ids=[m for _, m in BAD_CARDS])
def test_cards_are_strict(tmp_path, edit, message):
    path = write(tmp_path / "good.toml", edit(GOOD_CARD.format(name="good")))
    with pytest.raises(ConfigError, match=message) as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_card_errors_at_build_time_name_the_file(tmp_path, monkeypatch):
    first = write(tmp_path / "good.toml", GOOD_CARD.format(name="good"))
    (tmp_path / "sub").mkdir()
    second = write(tmp_path / "sub" / "card.toml", GOOD_CARD.format(name="sub"))
    bad = write(tmp_path / "badparam.toml", GOOD_CARD.format(name="badparam") + "momentum = 2.0\n")
    registry = build_registry([first, second, bad])
    assert registry.names() == ["badparam", "good", "sub"]
    monkeypatch.setattr(reg, "attack_registry", lambda: registry)
    assert create_attack("sub").steps == 2
    with pytest.raises(ConfigError, match=r"badparam\.toml.*unknown param\(s\) momentum"):
        create_attack("badparam")
    (tmp_path / "dup").mkdir()
    copy = write(tmp_path / "dup" / "good.toml", GOOD_CARD.format(name="good"))
    with pytest.raises(ConfigError, match="defined twice"):
        build_registry([first, copy])


def test_trainable_card_needs_fit(tmp_path, monkeypatch):
    card = GOOD_CARD.format(name="uap").replace("trainable = false", "trainable = true")
    registry = build_registry([write(tmp_path / "uap.toml", card)])
    monkeypatch.setattr(reg, "attack_registry", lambda: registry)
    with pytest.raises(ConfigError, match="trainable = true but IFGSM has no fit"):
        create_attack("uap")


def test_plugin_from_file_and_module_targets(tmp_path, fresh_registry):
    plugin = write(tmp_path / "my_attacks.py", PLUGIN)
    attack = create_attack(f"{plugin}:SignNoise", seed=5)
    assert attack.info.name == "sign-noise" and attack.info.gradient_free
    assert attack.eps == pytest.approx(4 / 255)
    x = torch.rand(2, 3, 16, 16)
    model = IQAModel(
        lambda t: t.mean(dim=(1, 2, 3)),
        ModelInfo(name="mean", kind="NR", lower_better=False, score_range=None, source="plugin"),
    )
    assert torch.equal(
        attack.perturb(model, x), create_attack(f"{plugin}:SignNoise", seed=5).perturb(model, x)
    )

    pgd = create_attack("benchmark.attacks.gradient:PGD", eps="2/255", steps=2)
    assert isinstance(pgd, PGD) and pgd.info.family == "plugin" and pgd.steps == 2
    with pytest.raises(ConfigError, match="no default eps; give one with --eps"):
        create_attack("benchmark.attacks.gradient:PGD")
    with pytest.raises(ConfigError, match="not an Attack subclass"):
        create_attack("benchmark.budget:Fraction", eps=0.1)
    with pytest.raises(ConfigError, match="cannot import"):
        create_attack("benchmark.no_such_module:X", eps=0.1)


def test_entry_point_plugins_are_listed_and_built(tmp_path, monkeypatch, fresh_registry):
    plugin = write(tmp_path / "ep_attacks.py", PLUGIN)
    points = [
        importlib.metadata.EntryPoint("noise", f"{plugin}:SignNoise", reg.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint(
            "broken", "benchmark.no_such_module:X", reg.ENTRY_POINT_GROUP
        ),
        importlib.metadata.EntryPoint("pgd", f"{plugin}:SignNoise", reg.ENTRY_POINT_GROUP),
    ]
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return points if kw.get("group") == reg.ENTRY_POINT_GROUP else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    cards = {c.name: c for c in list_attacks()}
    assert cards["noise"].source == "plugin" and cards["noise"].info.name == "noise"
    assert cards["noise"].info.family == "query" and cards["noise"].eps_label == "4/255"
    assert (
        cards["broken"].problem() is not None and "cannot load" in cards["broken"].info.description
    )
    assert cards["pgd"].source == "card"  # a card wins over an entry point of the same name
    assert create_attack("noise").info.name == "noise"
    with pytest.raises(ConfigError):
        create_attack("broken", eps=0.1)


def test_parse_overrides():
    items = ["steps=5", "alpha=1/255", "alpha_2 = eps/4", "random_start=false", "momentum=0.9"]
    assert parse_overrides(items) == {
        "steps": 5,
        "alpha": "1/255",
        "alpha_2": "eps/4",
        "random_start": False,
        "momentum": 0.9,
    }
    for bad in ("steps", "=3", "bad key=1"):
        with pytest.raises(ConfigError):
            parse_overrides([bad])
