"""`compare`: a defense against its baseline, end to end, with paired statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.models.registry import create_model
from benchmark.report.scores import paired_difference
from benchmark.store.cell import CellKey, CellResult


def _cell(model: str, gains: np.ndarray) -> CellResult:
    n = gains.size
    clean = np.linspace(0.2, 0.6, n)
    return CellResult(
        key=CellKey(model, "d", "ifgsm", 4 / 255, "up"), status="done",
        image_id=np.array([f"i{j}" for j in range(n)], dtype=object), mos=clean,
        clean=clean, attacked=clean + gains, linf=np.zeros(n), l2=np.zeros(n),
        psnr=np.zeros(n), ssim=np.zeros(n), seconds=np.zeros(n),
        model_info={"lower_better": False, "score_range": [0, 1]}, attack_config={}, meta={},
    )  # fmt: skip


def test_paired_difference_detects_a_real_drop_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.3, 200)
    diff, (lo, hi), p, n = paired_difference(_cell("def", base - 0.05), _cell("base", base))
    assert n == 200 and diff == pytest.approx(-0.05) and hi < 0 and p < 0.01
    diff, (lo, hi), p, _ = paired_difference(
        _cell("def", base + rng.normal(0, 0.01, 200)), _cell("base", base)
    )
    assert lo < 0 < hi and p > 0.05


def test_purified_defense_keeps_gradients_through_bpda():
    import torch

    model = create_model("jpeg50+gmsd")
    assert model.info.source == "defense" and model.info.base == "gmsd" and model.info.extra["bpda"]
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model.quality(x, torch.rand(2, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacked through the approximation


def test_compare_end_to_end(tmp_path: Path, capsys, make_kadid):
    data = make_kadid(tmp_path / "kadid", n_refs=4, size=(40, 40), levels=3)
    out = tmp_path / "cmp"
    argv = ["-q", "compare", "--defense", "blur1.5+gmsd", "--attacks", "ifgsm", "--eps", "4/255",
            "--dataset", "kadid10k", "--data-root", str(data), "--split", "all", "--param", "steps=3",
            "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "defense blur1.5+gmsd vs baseline gmsd" in text
    assert "only 12 images per cell" in text  # weak evidence is flagged
    html = (out / "report.html").read_text()
    assert "Difference" in html and "blur1.5+gmsd" in html
    row = next(line for line in text.splitlines() if line.strip().startswith("ifgsm"))
    defense_gain, baseline_gain = (float(v) for v in row.split()[3:5])
    assert baseline_gain > 0 and defense_gain != baseline_gain


def test_compare_the_shipped_example_defense(tmp_path: Path, capsys, make_kadid):
    example = Path(__file__).resolve().parent.parent / "examples" / "median_defense.py"
    data = make_kadid(tmp_path / "kadid", n_refs=2, size=(40, 40), levels=3)
    argv = ["-q", "compare", "--defense", f"{example}:MedianDefense", "--attacks", "fgsm,ifgsm",
            "--eps", "4/255", "--dataset", "kadid10k", "--data-root", str(data), "--split", "all",
            "-o", str(tmp_path / "cmp")]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "vs baseline cnniqa-builtin" in text
    rows = [
        line.split() for line in text.splitlines() if line.strip().startswith(("fgsm", "ifgsm"))
    ]
    assert len(rows) == 2
    for row in rows:  # the baseline is inflated; the median filter changes how much
        assert float(row[4]) > 0 and float(row[3]) != float(row[4])


def _attack_cell(attack: str, steps: int | None, gains: np.ndarray) -> CellResult:
    cell = _cell("def", gains)
    cell.key = CellKey("def", "d", attack, 4 / 255, "up")
    params = {} if steps is None else {"steps": steps}
    cell.attack_config = {
        "family": "gradient",
        "norm": "linf",
        "trainable": False,
        "params": params,
    }
    return cell


def test_iterations_that_find_less_than_one_step_are_flagged():
    """A 10-step attack can retrace FGSM's step, so finding less means its iterations fail
    (e.g. a stochastic defense with too noisy an EOT gradient): the checks and the leaderboard
    must say the gains are lower bounds, and stay quiet when the iterations work."""
    from benchmark.report.leaderboard import FAILING_ITERATIONS_NOTE, build_tables
    from benchmark.report.sanity import failing_iterations

    rng = np.random.default_rng(0)
    one = rng.uniform(0.03, 0.05, 40)
    fgsm = _attack_cell("fgsm", None, one)
    failing = _attack_cell("ifgsm", 10, one - 0.01 + rng.normal(0, 0.002, 40))
    working = _attack_cell("pgd", 20, one + 0.02 + rng.normal(0, 0.002, 40))
    ((group, (warning,)),) = failing_iterations([fgsm, failing, working]).items()
    assert group == ("def", "d", "linf", 4 / 255, "up")
    assert "ifgsm (10 steps" in warning and "pgd" not in warning and "lower bound" in warning
    note = build_tables([fgsm, failing, working], n_boot=50).rows["note"].iloc[0]
    assert FAILING_ITERATIONS_NOTE in note
    assert failing_iterations([fgsm, working]) == {}
    assert (
        FAILING_ITERATIONS_NOTE not in build_tables([fgsm, working], n_boot=50).rows["note"].iloc[0]
    )
    # a different budget is a different threat: never compared
    working.key = CellKey("def", "d", "pgd", 8 / 255, "up")
    working.attacked = working.clean + one - 0.02
    assert failing_iterations([fgsm, working]) == {}


def test_iterations_are_judged_in_the_attacks_direction():
    """Attacking down, iterations that push the score further down work; ones that push it
    less far down fail (the rule read in quality-up units would say the opposite)."""
    from benchmark.report.sanity import failing_iterations

    rng = np.random.default_rng(0)
    one = -rng.uniform(0.03, 0.05, 40)
    cells = {
        name: _attack_cell(name, steps, gains)
        for name, steps, gains in (
            ("fgsm", None, one),
            ("pgd", 20, one - 0.02 + rng.normal(0, 0.002, 40)),
            ("ifgsm", 10, one + 0.01 + rng.normal(0, 0.002, 40)),
        )
    }
    for c in cells.values():
        c.key = CellKey("def", "d", c.key.attack, 4 / 255, "down")
    assert failing_iterations([cells["fgsm"], cells["pgd"]]) == {}
    ((_, (warning,)),) = failing_iterations(list(cells.values())).items()
    assert "ifgsm (10 steps, -0.010)" in warning and "pgd" not in warning


def test_masking_warning_reads_the_shared_gradient_rule():
    """An old file's square cell records no `gradient_free`: compare must still see a
    gradient-free attack beating the gradient ones (the rule the leaderboard uses)."""
    from benchmark.report.compare import build_report

    cells = []
    for model, shift in (("def", 0.0), ("base", 0.05)):
        for attack, gain in (("fgsm", 0.02), ("pgd", 0.03), ("square", 0.09)):
            cell = _cell(model, np.full(40, gain + shift))
            cell.key = CellKey(model, "d", attack, 4 / 255, "up")
            cell.attack_config = {"name": attack}
            cells.append(cell)
    (warning,) = [w for w in build_report(cells, "def", "base").warnings if "masking" in w]
    assert "gradient-free attack gains 0.090" in warning
    for cell in cells:
        cell.attack_config = {"name": cell.key.attack, "gradient_free": False}
    assert not [w for w in build_report(cells, "def", "base").warnings if "masking" in w]
