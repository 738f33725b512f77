"""Attacks behind one interface (`Attack.perturb`) and their registry."""

from benchmark.attacks.base import Attack, AttackInfo
from benchmark.attacks.registry import AttackCard, create_attack, list_attacks

__all__ = ["Attack", "AttackCard", "AttackInfo", "create_attack", "list_attacks"]
