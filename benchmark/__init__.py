"""Adversarial-robustness benchmark for image-quality-assessment (IQA) models."""

__version__ = "0.1.0"
