"""The project's own trained models: one card (TOML) + one safetensors checkpoint each.

Layout: models/<name>/card.toml and models/<name>/<checkpoint>. Checkpoints are read
with safetensors only, so a model file can never execute code when loaded.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from benchmark.cards import card_paths, check_fields, read_toml
from benchmark.errors import CheckpointError, ConfigError
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.params import count_parameters
from benchmark.registry import Entry

ZOO_SOURCES = ("zoo", "robustblock", "defense")

CARD_FIELDS = {
    "name": ((str,), True),
    "source": ((str,), True),
    "arch": ((str,), True),
    "kind": ((str,), True),
    "lower_better": ((bool,), True),
    "score_range": ((list,), False),
    "checkpoint": ((str,), True),
    "description": ((str,), False),
    "base": ((str,), False),
    "arch_params": ((dict,), False),
    "training": ((dict,), False),
    "evaluation": ((dict,), False),
    "steps": ((list, dict), False),
    "certified": ((dict,), False),
    "robust": ((dict,), False),
    "defense": ((dict,), False),
}


def read_model_card(path: Path) -> dict[str, Any]:
    card = check_fields(read_toml(path), CARD_FIELDS, str(path))
    if card["source"] not in ZOO_SOURCES:
        raise ConfigError(
            f"{path}: source must be one of {', '.join(ZOO_SOURCES)}, got {card['source']!r}"
        )
    if card["kind"] not in ("NR", "FR"):
        raise ConfigError(f"{path}: kind must be 'NR' or 'FR', got {card['kind']!r}")
    sr = card.get("score_range")
    if sr is not None and (len(sr) != 2 or not all(isinstance(v, int | float) for v in sr)):
        raise ConfigError(f"{path}: score_range must be [low, high]")
    card["_path"] = path
    return card


def zoo_entries() -> list[tuple[str, Any, dict[str, Any]]]:
    out = []
    for path in card_paths("model"):
        card = read_model_card(path)
        meta = {
            "source": card["source"],
            "kind": card["kind"],
            "lower_better": card["lower_better"],
            "card": str(path),
            "base": card.get("base"),
        }
        out.append((card["name"], functools.partial(load_zoo_model, path), meta))
    return out


def zoo_status(entry: Entry) -> tuple[bool, str]:
    card = read_model_card(Path(entry.meta["card"]))
    ckpt = card["_path"].parent / card["checkpoint"]
    if not ckpt.is_file():
        return False, f"checkpoint missing: {ckpt}"
    ev = card.get("evaluation", {})
    srocc = ev.get("srocc")
    return True, f"trained on {card.get('training', {}).get('dataset', '?')}" + (
        f", test SROCC {srocc:.3f}" if isinstance(srocc, float) else ""
    )


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint: {exc}") from exc


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with a readable message on missing/unexpected keys or shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]
                )
            )
        raise CheckpointError(f"{path} does not match its architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def build_network(card: dict[str, Any]) -> torch.nn.Module:
    """The card's network with its checkpoint loaded (eval mode, gradients on for training).

    A `[robust]` table means the base architecture converted to RobustBlocks
    (`benchmark.models.robust_net.convert_network`); its layer widths, which pruning may have
    reduced, are read from the checkpoint's tensor shapes, so the file alone defines them.
    """
    from benchmark.models.archs import build_arch

    net = build_arch(card["arch"], **card.get("arch_params", {}))
    ckpt = card["_path"].parent / card["checkpoint"]
    state = load_state(ckpt)
    if "robust" in card:
        from benchmark.models.robust_net import convert_network, resize_to_state

        orth = card["robust"].get("orth", "fourier")
        net, _ = convert_network(net, init_from_base=False, orth=orth)
        resize_to_state(net, state, ckpt)
    load_into(net, state, ckpt)
    return net.eval()


def load_zoo_model(card_path: Path, device: str | torch.device = "cpu") -> IQAModel:
    card = read_model_card(card_path)
    net = build_network(card)
    for p in net.parameters():
        p.requires_grad_(False)
    sr = card.get("score_range")
    info = ModelInfo(
        name=card["name"],
        kind=card["kind"],
        lower_better=card["lower_better"],
        score_range=(float(sr[0]), float(sr[1])) if sr else None,
        source=card["source"],
        params=count_parameters(net),
        base=card.get("base"),
        description=card.get("description", ""),
        extra={"card": str(card_path), "certified": card.get("certified", {})},
    )
    return IQAModel(net, info).to(device).eval()
