"""IQA models behind one interface (`IQAModel`) and the registry that builds them."""

from benchmark.models.base import IQAModel, ModelInfo

__all__ = ["IQAModel", "ModelInfo"]
