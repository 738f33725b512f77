"""Runner throughput vs the cost floor and vs the per-image loop of prior benchmarks.

    python scripts/throughput.py [--images 32] [--size 192] [--repeats 3] [--device cpu]
        [--batch-size auto|N] [--attacks fgsm,ifgsm,pgd,uap,facpa]

For each model and attack, in one process:
- floor: the least any implementation must compute at the same batch size. Gradient
  attacks: k forward+backward passes of the model on each batch (k = attack steps) plus the
  one forward that scores the attacked images. Trained attacks (UAP family, FACPA) at
  inference: the attack's own computation (tiling, or the generator) and that scoring
  forward, in inference mode, without any check or bookkeeping;
- runner: `benchmark.engine.runner.run_cell` on the same images at the batch size the runner
  chooses (`--batch-size auto`, measured per model as in a run), with every per-image
  measurement (PSNR/SSIM, L_inf/L2, attacked score, the budget check) and the per-cell
  loading of a trained attack's artifact; the model's group is set up once, as in a run
  (decoded images, clean scores, the opened train split);
- per-image: the same cell with batch size 1, the loop prior benchmarks use.
Prints medians over repeats (after one untimed warm-up call each) and the ratios
runner/floor (target <= 1.3) and per-image/runner (target >= 2.5 in geometric mean). Images
are synthetic and held in memory so that PNG decoding does not blur the comparison. Trained
attacks are fitted first on a few images (their inference cost does not depend on how well
they were trained). The process uses the runner's allocator settings (`benchmark.engine.allocator`,
as `run_group` does); `BENCHMARK_MALLOC=default` times glibc's default instead.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.attacks.artifacts import TrainedAttack  # noqa: E402
from benchmark.attacks.base import Attack  # noqa: E402
from benchmark.attacks.registry import create_attack  # noqa: E402
from benchmark.datasets.base import DatasetInfo, IQADataset, Sample  # noqa: E402
from benchmark.engine.allocator import keep_freed_memory  # noqa: E402
from benchmark.engine.batching import choose_batch_size, parse_batch_size  # noqa: E402
from benchmark.engine.cells import GroupContext, run_cell  # noqa: E402
from benchmark.engine.config import RunConfig  # noqa: E402
from benchmark.models.archs import build_arch  # noqa: E402
from benchmark.models.base import IQAModel, ModelInfo  # noqa: E402
from benchmark.models.registry import create_model, model_registry  # noqa: E402
from benchmark.store.cell import CellKey  # noqa: E402


class MemoryDataset(IQADataset):
    """Smooth random images in memory (no decoding cost)."""

    def __init__(self, n: int, size: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        raw = torch.rand(n, 3, size // 8, size // 8, generator=g)
        self.images = torch.nn.functional.interpolate(
            raw, size=(size, size), mode="bilinear"
        ).clamp(0, 1)
        self.info = DatasetInfo("memory", "memory", (0.0, 1.0), False, "all")

    def ids(self) -> list[str]:
        return [f"img{i}" for i in range(len(self.images))]

    def load(self, image_id: str) -> Sample:
        i = int(image_id[3:])
        return Sample(image_id, self.images[i], float(i) / len(self.images))


def models(device: str) -> dict[str, IQAModel]:
    """Zoo models when shipped, else random-init architectures of the same kinds."""
    out = {}
    for name in ("cnniqa-builtin", "wadiqam-nr-builtin", "resnet-small-builtin"):
        if name in model_registry():
            out[name] = create_model(name, device)
    if not out:
        for arch in ("cnniqa", "resnet_small"):
            net = build_arch(arch).eval()
            out[arch] = IQAModel(net, ModelInfo(arch, "NR", False, None, "zoo")).to(device)
    return out


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time of `repeats` calls after one untimed call: the first call of each
    kind grows the heap and warms caches, which a run pays once, not per cell."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gradient_floor(model: IQAModel, x: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        xi = x.detach().clone().requires_grad_(True)
        model.quality(xi).sum().backward()
    with torch.inference_mode():
        model.score(x)


def trained_floor(model: IQAModel, attack: TrainedAttack, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model.score(attack._perturb(model, x, None))


def fitted(attack_name: str, model: IQAModel, x: torch.Tensor, artifact_dir: Path) -> Attack:
    """The attack, fitted on a few images when it is trainable (for its inference cost)."""
    attack = create_attack(attack_name)
    if isinstance(attack, TrainedAttack):
        small = {"epochs": 1, "train_images": 4, "batch_size": 2}
        if "crop" in attack.params:
            small["crop"] = min(x.shape[-1], x.shape[-2]) // 64 * 64 or 64
        attack = create_attack(
            attack_name, **{k: v for k, v in small.items() if k in attack.params}
        )
        attack.fit(model, iter([(x[:4], None)]), artifact_dir, data_id=f"throughput:{x.shape}")
    return attack


def group(
    model: IQAModel, data: IQADataset, size: int, device: str, train: bool = True
) -> GroupContext:
    """The model's group context at one batch size, set up once as `run_group` does: its
    cells share the decoded images, the clean scores (computed once per run) and the opened
    train split, so none of these one-off costs is timed per cell. `train=False` (no trained
    attack timed) leaves the train split unopened: it is the built-in dataset's, which would
    otherwise be generated on a machine without it."""
    ctx = GroupContext(model, data, RunConfig((model.name,), (), batch_size=size, device=device))
    ctx.resolve_batch_size()
    ctx.gradient_ok = True
    ctx.clean = dict.fromkeys(data.ids(), 0.0)
    if train:
        ctx.train_split()
    return ctx


def measure(
    images: int = 32,
    size: int = 192,
    repeats: int = 3,
    device: str = "cpu",
    batch_size: str = "auto",
    attacks: str = "fgsm,ifgsm,pgd,uap,facpa",
    model_names: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """Print the throughput table (the lines `main` prints) and return its rows.

    `model_names` keeps only those of `models(device)` (None: all of them)."""
    torch.manual_seed(0)
    allocator = "runner's" if keep_freed_memory() else "glibc default"
    data = MemoryDataset(images, size)
    x_all = data.images.to(device)
    fixed = parse_batch_size(batch_size)
    print(f"device {device}, {torch.get_num_threads()} threads, {images} images "
          f"{size}x{size}, batch {batch_size}, median of {repeats}, "
          f"allocator {allocator}")  # fmt: skip
    print(f"{'model':<22}{'attack':<8}{'batch':>6}{'floor s':>9}{'runner s':>10}{'per-img s':>11}"
          f"{'run/floor':>11}{'img/run':>9}")  # fmt: skip
    speedups, ratios, rows = [], [], []
    artifact_dir = Path(tempfile.mkdtemp(prefix="throughput-artifacts-"))
    for name, model in models(device).items():
        if model_names is not None and name not in model_names:
            continue
        if fixed is None:
            choice = choose_batch_size(model, x_all[:4], max_size=images)
            batch = choice.size
            probe = ", ".join(f"{k}: {v:.1f}" for k, v in choice.per_image_ms.items())
            print(f"{name}: batch {batch} ({choice.why}; ms/image fwd+bwd by size: {probe})")
        else:
            batch = fixed
        names = attacks.split(",")
        train = any(create_attack(a).info.trainable for a in names)
        batched, single = (group(model, data, size, device, train) for size in (batch, 1))
        for attack_name in names:
            attack = fitted(attack_name, model, x_all, artifact_dir)

            def cell(ctx: GroupContext, attack=attack) -> None:
                key = CellKey(ctx.model.name, "memory", attack.info.name, attack.eps)
                run_cell(ctx, key, attack, progress=False)

            def floor(model=model, attack=attack, batch=batch) -> None:
                for i in range(0, images, batch):
                    x = x_all[i : i + batch]
                    if isinstance(attack, TrainedAttack):
                        trained_floor(model, attack, x)
                    else:
                        gradient_floor(model, x, getattr(attack, "steps", 1))

            t_floor = timed(floor, repeats, device)
            t_run = timed(lambda c=batched: cell(c), repeats, device)
            t_one = timed(lambda c=single: cell(c), max(1, repeats - 1), device)
            speedups.append(t_one / t_run)
            ratios.append(t_run / t_floor)
            rows.append({"model": name, "attack": attack_name, "batch": batch, "floor_s": t_floor,
                         "runner_s": t_run, "per_image_s": t_one})  # fmt: skip
            print(f"{name:<22}{attack_name:<8}{batch:>6}{t_floor:>9.2f}{t_run:>10.2f}{t_one:>11.2f}"
                  f"{t_run / t_floor:>11.2f}{t_one / t_run:>9.2f}")  # fmt: skip
    shutil.rmtree(artifact_dir, ignore_errors=True)
    gmean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
    print(
        f"runner/floor: max {max(ratios):.2f}, median {statistics.median(ratios):.2f} (target <= 1.3)"
    )
    print(f"geometric mean per-image/runner speed-up: {gmean:.2f}x (target >= 2.5)")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", default="auto", help="auto (as the runner) or a number")
    p.add_argument("--attacks", default="fgsm,ifgsm,pgd,uap,facpa")
    args = p.parse_args()
    measure(args.images, args.size, args.repeats, args.device, args.batch_size, args.attacks)


if __name__ == "__main__":
    main()
