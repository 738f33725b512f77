"""pyiqa's real metrics through the adapter, on stand-in weights made offline.

The fast tests check the adapter's policies (size, randomness, pkg_resources) and that
stand-ins never pass for real weights; the slow one builds >= 20 NR metrics of every
family through pyiqa's own loading code, scores, checks gradients and stores I-FGSM cells.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.errors import ModelUnavailable
from benchmark.models.base import IQAModel
from benchmark.models.offline import pkg_resources_shim, standin_caches
from benchmark.models.pyiqa_adapter import (
    EOT_SAMPLES,
    PyiqaNet,
    create_pyiqa_model,
    fit_input_policy,
    pyiqa_availability,
)

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "pyiqa_standins", ROOT / "scripts" / "pyiqa_standins.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pyiqa_standins"] = mod
    spec.loader.exec_module(mod)
    return mod


class RandomCropMetric(nn.Module):
    """Scores one random 16x16 crop per image (numpy's RNG, as pyiqa's random_crop)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = np.random.randint(0, h - 15), np.random.randint(0, w - 15)
        crop = x[..., top : top + 16, left : left + 16]
        return (crop * torch.linspace(0, 1, 16)).flatten(1).mean(dim=1)


class NeedsBigInput(nn.Module):
    """Refuses images with a side below 100 pixels, as ViT crops of 224 do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 100:
            raise RuntimeError(f"input {tuple(x.shape)} smaller than the crop")
        return x.mean(dim=(1, 2, 3))


def _wrap(metric: nn.Module) -> tuple[PyiqaNet, dict]:
    net = PyiqaNet(metric, "NR")
    return net, fit_input_policy(net, torch.device("cpu"))


def test_a_random_metric_scores_each_image_the_same_every_time_and_is_attacked_with_eot() -> None:
    net, policy = _wrap(RandomCropMetric())
    assert policy["stochastic"] and policy["eot_samples"] == EOT_SAMPLES == net.eot
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    state = np.random.get_state()[1].copy()
    a, b = net(x), net(x.flip(0))
    torch.testing.assert_close(a, b.flip(0))  # per image, whatever its place in the batch
    assert np.array_equal(state, np.random.get_state()[1])  # the caller's RNG is untouched
    assert len(set(net(x[:1].repeat(1, 1, 1, 1)).tolist())) == 1
    # with a gradient the score is the mean of EOT_SAMPLES seeded draws: differs from one draw
    xg = x.clone().requires_grad_(True)
    eot = net(xg)
    (g,) = torch.autograd.grad(eot.sum(), xg)
    assert not torch.allclose(eot.detach(), a) and (g != 0).sum(dim=(1, 2, 3)).gt(256).all()


def test_a_deterministic_metric_is_left_alone() -> None:
    net, policy = _wrap(NeedsBigInput())
    assert not policy["stochastic"] and policy["eot_samples"] == 1


def test_a_metric_that_refuses_small_images_gets_them_upscaled_and_says_so() -> None:
    net, policy = _wrap(NeedsBigInput())
    assert policy["min_side"] == 100 and "100" in policy["input_policy"]
    x = torch.rand(2, 3, 40, 60, requires_grad=True)
    out = net(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert out.shape == (2,) and (g != 0).all()
    big = torch.rand(1, 3, 100, 140)
    torch.testing.assert_close(net(big), big.mean(dim=(1, 2, 3)))  # large enough: untouched


def test_a_metric_that_scores_nothing_raises_its_own_error() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("broken on purpose")

    with pytest.raises(ValueError, match="broken on purpose"):
        _wrap(Broken())


def test_clip_imports_without_pkg_resources_and_the_shim_does_not_outlive_it() -> None:
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        pytest.skip("setuptools < 81 here: pkg_resources is real")
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        del sys.modules[name]
    with pytest.raises(ModuleNotFoundError, match="pkg_resources"):
        import clip.clip  # noqa: F401  (openai-clip: `from pkg_resources import packaging`)
    with pkg_resources_shim():
        import clip.clip

        assert clip.clip.packaging.version.parse("2.0") > clip.clip.packaging.version.parse("1.9")
    assert "pkg_resources" not in sys.modules


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.mark.usefixtures("one_thread")
def test_standins_build_a_metric_but_never_count_as_its_weights(tmp_path: Path, script) -> None:
    with script.standin_cache(tmp_path / "cache"):
        model = script.build_standin_model("cnniqa", tmp_path / "cache")
        assert isinstance(model, IQAModel) and model.info.extra["standin_weights"] is True
        avail = pyiqa_availability(tmp_path / "state")
        assert not avail["cnniqa"].usable and "stand-in" in avail["cnniqa"].reason
        assert avail["psnr"].usable  # no weights needed: unaffected
        assert not (tmp_path / "state" / "pyiqa-availability.json").exists()
    assert standin_caches() == []  # nothing of the stand-in cache outlives the block
    assert not any("pyiqa-standin" in str(p) for p in (tmp_path / "cache").parents)
    with pytest.raises(ModelUnavailable):  # the real cache has no cnniqa weights
        create_pyiqa_model("cnniqa")


# >= 20 NR metrics across the families, chosen to run in a few minutes on 2 loaded cores
# (the heavy ones, e.g. MANIQA, HyperIQA, TReS, LAION-Aes, are in docs/pyiqa-metrics.md only).
FAMILIES = {
    "cnn": ["cnniqa", "dbcnn", "paq2piq", "wadiqam_nr", "metaiqa", "unique"],
    "cnn (inception-resnet, vgg)": ["nima", "nima-koniq", "nima-vgg16-ava"],
    "cnn + attention (multi-scale features)": [
        "topiq_nr", "topiq_nr-spaq", "topiq_nr-flive", "topiq_iaa_res50",
    ],
    "transformer (multi-scale)": ["musiq", "musiq-ava", "musiq-spaq", "musiq-paq2piq", "uranker"],
    "clip": ["clipiqa", "clipiqa+_rn50_512"],
}  # fmt: skip
METRICS = [m for names in FAMILIES.values() for m in names]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_twenty_nr_metrics_run_end_to_end_on_standins(tmp_path: Path, script) -> None:
    """Each builds through pyiqa's own loader, is gradient-checked, and stores an I-FGSM cell."""
    from PIL import Image

    import benchmark
    from benchmark.store.hdf5 import ResultStore

    assert len(METRICS) >= 20
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cache = tmp_path / "cache"
    with script.standin_cache(cache):
        for name in METRICS:
            _, unmade, error = script.make_standins(name, cache)
            assert not unmade, f"{name}: {unmade} ({error})"
        result = benchmark.run(
            models=METRICS,
            attacks=["ifgsm"],
            dataset=f"folder:{images}",
            eps="4/255",
            params={"steps": 2},
            batch_size=2,
            out=tmp_path / "r.h5",
            progress=False,
        )
    cells = {c.key.model: c for c in ResultStore(tmp_path / "r.h5").read_cells()}
    assert set(cells) == set(METRICS), result.report
    for name, cell in cells.items():
        assert cell.model_info["extra"]["standin_weights"] is True
        assert np.isfinite(cell.clean).all() and len(cell.clean) == 2, name
        if cell.gradient == "none":  # reported, never scored as robust
            assert cell.status == "not_applicable" and np.isnan(cell.attacked).all(), name
            continue
        assert cell.status == "done", (name, cell.reason)
        sign = -1.0 if cell.model_info["lower_better"] else 1.0
        assert (sign * (cell.attacked - cell.clean)).mean() > 0, (name, cell.clean, cell.attacked)
        assert cell.linf.max() <= 4 / 255 + 1e-6
