"""RobustBlocks: robust-by-architecture IQA models (docs/architecture.md).

API: `robustify(model) -> (model, report)`, `prune(model, tau=..|fraction=..) -> (model,
report)`, `lipschitz_upper_bound(model, input_shape) -> float | None`,
`empirical_lipschitz(model, input_shape, n=...) -> float`. `robustify(model, orth="explicit")`
uses `ExplicitOrthConv2d` (explicit orthogonal kernel) instead of the Fourier `OrthConv2d`.
"""

from benchmark.robust.convert import ORTH_CHOICES, RobustifyReport, robustify
from benchmark.robust.explicit import ExplicitOrthConv2d
from benchmark.robust.layers import GroupSort, MaxMin, OrthLinear, SpaceToDepth
from benchmark.robust.lipschitz import (
    LipschitzReport,
    empirical_lipschitz,
    lipschitz_analysis,
    lipschitz_upper_bound,
)
from benchmark.robust.orthconv import OrthConv2d, space_to_depth
from benchmark.robust.prune import PruneReport, prune

__all__ = [
    "ORTH_CHOICES",
    "ExplicitOrthConv2d",
    "GroupSort",
    "LipschitzReport",
    "MaxMin",
    "OrthConv2d",
    "OrthLinear",
    "PruneReport",
    "RobustifyReport",
    "SpaceToDepth",
    "empirical_lipschitz",
    "lipschitz_analysis",
    "lipschitz_upper_bound",
    "prune",
    "robustify",
    "space_to_depth",
]
