"""Input-gradient norms of models on the evidence images: the first-order view of their gains.

    python scripts/gradient_norms.py MODEL [MODEL ...] [--sample 16] [--eps 4/255]

Why: an L_inf attack of budget eps moves a score by about eps * ||grad||_1 to first order
(exactly that for FGSM on a locally linear model), and an L2 one by eps2 * ||grad||_2. So the
gradient norms on the attacked images say whether a model is attackable because it is steep
where natural images lie, independent of any attack's tuning. The certified Lipschitz bound
caps ||grad||_2 everywhere; this measures it where it matters. Scores are in units of the
model's score range, quality-up, as the benchmark's gains are. A zero gradient is reported as
such: it means an untested model, not a robust one.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmark.budget import parse_budget
from benchmark.datasets.registry import create_dataset
from benchmark.models.registry import create_model, resolve_model_names
from benchmark.report.scores import quality_map


def gradient_norms(name: str, images: torch.Tensor) -> dict[str, list[float]]:
    """Per image: ||grad q||_1, ||grad q||_2 and q, with q mapped as the stored gains are."""
    model = create_model(name)
    x = images.clone().requires_grad_(True)
    raw = model.score(x)
    info = model.info
    qmap = quality_map(info.lower_better, info.score_range, raw.detach().numpy())
    (g,) = torch.autograd.grad(raw.sum(), x)  # per-image scores are independent: one pass
    # the map is affine: d q / d raw = +-1 / (hi - lo), its sign only orients
    flat = g.flatten(1) / (qmap.hi - qmap.lo)
    return {
        "l1": flat.abs().sum(1).tolist(),
        "l2": flat.norm(dim=1).tolist(),
        "q": qmap(raw.detach().numpy()).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--sample", type=int, default=16, help="images evenly spaced over the split")
    p.add_argument("--split", default="test")
    p.add_argument("--eps", default="4/255", help="L_inf budget for the first-order gain")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    eps = parse_budget(args.eps)
    ds = create_dataset("builtin", args.split)
    images = torch.cat([b.images for b in ds.batches(args.sample, sample=args.sample)])
    names = [n for spec in args.models for n in resolve_model_names(spec)]
    print(f"{len(images)} images of builtin/{args.split}; medians over images")
    print(f"| model | median ‖∇q‖₂ | median ‖∇q‖₁ | first-order gain at {args.eps} | sd(q) |")
    print("|---|---|---|---|---|")
    for name in names:
        r = gradient_norms(name, images)
        l1 = statistics.median(r["l1"])
        print(
            f"| {name} | {statistics.median(r['l2']):.4g} | {l1:.4g} | {eps * l1:.3f} "
            f"| {statistics.pstdev(r['q']):.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
