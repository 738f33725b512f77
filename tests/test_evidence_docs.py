"""Evidence tables in docs/ are data: regenerated from committed results files, and a
committed table that differs from its regeneration fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.errors import ConfigError
from benchmark.report.evidence import BlockSpec, pages_with_blocks, render_block, update_page
from benchmark.store.hdf5 import read_results

ROOT = Path(__file__).resolve().parent.parent
PREMOVE = "tests/data/premove/premove.h5"


def test_block_spec_reads_its_attributes_and_rejects_unknown_ones() -> None:
    spec = BlockSpec.parse('results="a.h5 b.h5" family="cnniqa-builtin" heading="##"')
    assert spec.results == ("a.h5", "b.h5")
    assert spec.family == "cnniqa-builtin" and spec.heading == "##"
    with pytest.raises(ConfigError, match="results"):
        BlockSpec.parse('family="x"')
    with pytest.raises(ConfigError, match="colour"):
        BlockSpec.parse('results="a.h5" colour="red"')


def test_update_page_replaces_only_marked_blocks() -> None:
    page = (
        'intro\n<!-- evidence results="x.h5" -->\nstale table\n<!-- /evidence -->\n'
        'between\n<!-- evidence results="y.h5" -->\n<!-- /evidence -->\nend\n'
    )
    seen = []

    def fake(spec: BlockSpec, root: Path) -> str:
        seen.append(spec.results)
        return f"| {spec.results[0]} |\n"

    out = update_page(page, ROOT, render=fake)
    assert seen == [("x.h5",), ("y.h5",)]
    assert out == (
        'intro\n<!-- evidence results="x.h5" -->\n| x.h5 |\n<!-- /evidence -->\n'
        'between\n<!-- evidence results="y.h5" -->\n| y.h5 |\n<!-- /evidence -->\nend\n'
    )
    assert update_page(out, ROOT, render=fake) == out  # regeneration is a fixed point


def test_rendered_block_matches_the_stored_gains() -> None:
    """The per-attack matrix shows each stored cell's mean gain (3 decimals)."""
    from benchmark.report.leaderboard import build_tables

    spec = BlockSpec(results=(PREMOVE,), family="cnniqa-builtin")
    text = render_block(spec, ROOT, n_boot=50)
    cells = build_tables(read_results([str(ROOT / PREMOVE)]), n_boot=50).cells
    row = cells[(cells["model"] == "robust-cnniqa-builtin") & (cells["attack"] == "fgsm")]
    gain = f"{float(row['abs_gain'].iloc[0]):.3f}"
    matrix = text[text.index("absolute gain per attack") :]
    line = next(ln for ln in matrix.splitlines() if ln.startswith("| robust-cnniqa-builtin |"))
    assert gain in line.split("|")[2]
    # the family filter keeps the base and what wraps it, not other models
    assert "| ssim |" not in text and "| at-cnniqa-builtin |" in text
    with pytest.raises(ConfigError, match="not found"):
        render_block(BlockSpec(results=("results/evidence/nope.h5",)), ROOT)


@pytest.mark.parametrize("page", pages_with_blocks(ROOT / "docs"), ids=lambda p: p.name)
def test_committed_evidence_tables_equal_their_regeneration(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert update_page(text, ROOT) == text, (
        f"{page.relative_to(ROOT)} differs from its results files: "
        "run python scripts/evidence_docs.py"
    )
