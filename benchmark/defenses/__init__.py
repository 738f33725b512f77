"""Defenses beside RobustBlocks: input purification (adversarial training lives in training)."""
