"""Defenses beside RobustBlocks: input purification (`purifiers`) and fine-tuning defenses,
adversarial training and gradient-norm regularisation (`finetune`)."""
