"""FACPA (Shumitskaya et al., 2023): a pix2pix-style U-Net generator trained per target model
to map an image to an image-dependent perturbation `tanh * eps`; the attack is then one
generator forward pass per image.

The paper's generator has 8 down / 8 up blocks, 64 base filters (capped at 512), instance
norm and a tanh output, trained on 256x256 crops with Adam 1e-3, batch 4 and the loss
`1 - mean(q(clip(x + delta)))`. Depth and widths are card parameters here (`depth`, `width`,
`max_width`) because the paper's ~54M-parameter generator does not train in minutes on a
CPU; see attacks/facpa.toml for the defaults and their trade-off. Crops must fit the
training images (192 on the built-in set) and be a multiple of 2**depth. At inference an
image of any size is padded (replicate) to whole tiles of the training crop, each tile goes
through the generator, and the result is cropped back ("tiled at inference").

Two departures from pix2pix, both for a deterministic attack: no dropout (pix2pix uses it as
the GAN's noise source; there is no discriminator here) and instance norm without affine
parameters, as pix2pix's default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.attacks.artifacts import (
    TrainedAttack,
    TrainingData,
    _model_device,
    require_gradient,
    training_batches,
)
from benchmark.attacks.base import AttackInfo, Direction
from benchmark.attacks.iterative import finite_mean
from benchmark.attacks.utils import positive_float, positive_int, zero_nonfinite
from benchmark.errors import CheckpointError, ConfigError, DataError
from benchmark.models.base import IQAModel


class UNetGenerator(nn.Module):
    """pix2pix U-Net: `depth` stride-2 4x4 convolutions down (LeakyReLU 0.2, instance norm
    except on the outermost and innermost), mirrored transposed convolutions up (ReLU,
    instance norm) with skip connections, tanh output in [-1, 1]."""

    def __init__(
        self, in_ch: int = 3, out_ch: int = 3, depth: int = 8, width: int = 64, max_width: int = 512
    ) -> None:
        super().__init__()
        self.depth = depth
        chans = [min(width * 2**i, max_width) for i in range(depth)]
        self.down = nn.ModuleList()
        prev = in_ch
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(prev, c, 4, 2, 1, bias=i in (0, depth - 1)))
            if 0 < i < depth - 1:
                layers.append(nn.InstanceNorm2d(c))
            self.down.append(nn.Sequential(*layers))
            prev = c
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            cin = chans[i] if i == depth - 1 else 2 * chans[i]
            cout = out_ch if i == 0 else chans[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=i == 0)]
            layers.append(nn.Tanh() if i == 0 else nn.InstanceNorm2d(cout))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for j, block in enumerate(self.up):
            if j:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h)
        return h


def generator_params(params: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    """(depth, width, max_width) from card params, validated."""
    out = []
    for name in ("depth", "width", "max_width"):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        out.append(value)
    if out[0] > 10:
        raise ConfigError(f"{where}: depth {out[0]} is more than the 10 a U-Net needs")
    return out[0], out[1], out[2]


def sanitize_grads(module: nn.Module) -> None:
    """Zero non-finite parameter gradients (metrics with undefined gradients at some pixels)."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad = zero_nonfinite(p.grad)


def state_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().clone() for k, v in module.state_dict().items()}


def load_state(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"generator weights do not fit the card's architecture: {str(exc).splitlines()[0]}"
        ) from exc


class FACPA(TrainedAttack):
    """Image-dependent perturbations from a trained U-Net, one forward pass per image."""

    defaults: ClassVar[dict[str, Any]] = {
        "train_eps": "10/255",
        "depth": 6,
        "width": 16,
        "max_width": 128,
        "lr": 1e-3,
        "batch_size": 4,
        "crop": 192,
        "epochs": 1,
        "train_images": 512,
    }

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        where = f"attack {info.name!r}"
        self.depth, self.width, self.max_width = generator_params(self.params, where)
        self.lr = positive_float(self.params["lr"], f"{where}: lr")
        self.batch_size = positive_int(self.params["batch_size"], f"{where}: batch_size")
        self.crop = positive_int(self.params["crop"], f"{where}: crop")
        self.epochs = positive_int(self.params["epochs"], f"{where}: epochs")
        self.train_images = positive_int(self.params["train_images"], f"{where}: train_images")
        self.train_eps  # noqa: B018 -- validates the budget string now, not at fit time
        if self.crop % 2**self.depth:
            raise ConfigError(
                f"{where}: crop {self.crop} must be a multiple of 2**depth = {2**self.depth}"
            )
        self.generator: UNetGenerator | None = None
        self._generator_of: dict[str, torch.Tensor] | None = None

    def train_limit(self) -> int | None:
        return self.train_images

    def _new_generator(self) -> UNetGenerator:
        return UNetGenerator(3, 3, self.depth, self.width, self.max_width)

    def _train(self, model: IQAModel, data: TrainingData) -> dict[str, torch.Tensor]:
        device = _model_device(model)
        unit = 2**self.depth
        side = min(self.crop, *(min(im.shape[1:]) for im in data.images)) // unit * unit
        if side == 0:
            raise DataError(
                f"attack {self.info.name!r}: training images are smaller than one "
                f"{unit}x{unit} generator tile; lower depth"
            )
        generator = self._new_generator().to(device).train()
        optimizer = torch.optim.Adam(generator.parameters(), lr=self.lr)
        rng = torch.Generator().manual_seed(self.seed)
        eps = self.train_eps
        checked = False
        for _ in range(self.epochs):
            for x, ref in training_batches(data, self.batch_size, side, rng, device):
                delta = generator(x) * eps
                value = self.objective(model, (x + delta).clamp(0, 1), ref)
                if not checked:
                    require_gradient(self, model, value)
                    checked = True
                mean = finite_mean(value)
                if mean is None:  # the metric is NaN on the whole batch: no step
                    continue
                # -mean(q) is the paper's 1 - mean(q) up to a constant and the score's scale
                optimizer.zero_grad(set_to_none=True)
                (-mean).backward()
                sanitize_grads(generator)
                optimizer.step()
        tensors = state_tensors(generator.eval(), "generator.")
        tensors["tile"] = torch.tensor([side], dtype=torch.int64)
        return tensors

    def _check_artifact(self, tensors: Mapping[str, torch.Tensor]) -> None:
        tile = tensors.get("tile")
        if tile is None or tile.numel() != 1 or int(tile) % 2**self.depth or int(tile) < 1:
            raise CheckpointError("FACPA artifact has no valid 'tile' entry")
        load_state(self._new_generator(), tensors, "generator.")

    def _ready_generator(self, device: torch.device) -> tuple[UNetGenerator, int]:
        assert self.artifact is not None
        stale = self._generator_of is not self.artifact  # a later fit() replaced the artifact
        if stale or self.generator is None or next(self.generator.parameters()).device != device:
            generator = self._new_generator()
            load_state(generator, self.artifact, "generator.")
            self.generator = generator.to(device).eval().requires_grad_(False)
            self._generator_of = self.artifact
        return self.generator, int(self.artifact["tile"])

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        generator, tile = self._ready_generator(x.device)
        with torch.no_grad():
            delta = apply_tiled(generator, x, tile) * self.eps
        return (x + delta).clamp(0, 1)


def apply_tiled(generator: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """Run `generator` on `tile` x `tile` tiles covering `x` (padded by replication to whole
    tiles) and stitch the outputs back to x's size."""
    n, c, h, w = x.shape
    nh, nw = math.ceil(h / tile), math.ceil(w / tile)
    padded = F.pad(x, (0, nw * tile - w, 0, nh * tile - h), mode="replicate")
    tiles = padded.unfold(2, tile, tile).unfold(3, tile, tile)  # n,c,nh,nw,tile,tile
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(n * nh * nw, c, tile, tile)
    out = torch.cat([generator(chunk) for chunk in tiles.split(16)])
    out = out.reshape(n, nh, nw, -1, tile, tile).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n, -1, nh * tile, nw * tile)[:, :, :h, :w]
