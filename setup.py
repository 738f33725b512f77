"""Build hook (the metadata is in pyproject.toml): the wheel carries the shipped cards.

The repository keeps its cards where people edit them, in the top-level `attacks/`,
`datasets/` and `models/` folders; these never become importable packages. A regular build
copies them into the package as `benchmark/shipped/{attacks,datasets,models}/`, where
`benchmark.cards` finds them in an installed wheel:

    attacks/*.toml, datasets/*.toml                    every preset and dataset card
    models/<name>/card.toml + the checkpoint it names  every zoo model

An editable install copies nothing: the code then runs from the checkout and reads its
folders directly. The sdist carries the same files (MANIFEST.in), so a wheel built from it
(`python -m build`) is the same as one built from the checkout.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = Path("benchmark") / "shipped"


def shipped_files() -> list[tuple[Path, Path]]:
    """(file in the repository, its path under benchmark/shipped/) of every shipped file."""
    files = [
        (src, Path(kind) / src.name)
        for kind in ("attacks", "datasets")
        for src in sorted((ROOT / kind).glob("*.toml"))
    ]
    for card in sorted((ROOT / "models").glob("*/card.toml")):
        with open(card, "rb") as fh:
            checkpoint = tomllib.load(fh).get("checkpoint")
        if not isinstance(checkpoint, str):
            raise SystemExit(f"{card}: no checkpoint named; a zoo card needs one")
        weights = card.parent / checkpoint
        if not weights.is_file():
            raise SystemExit(f"{card}: its checkpoint {weights} is missing; cannot ship it")
        folder = Path("models") / card.parent.name
        files += [(card, folder / card.name), (weights, folder / checkpoint)]
    return files


class BuildWithCards(build_py):
    """`build_py` that also copies the shipped cards and checkpoints into the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for src, rel in shipped_files():
            dst = Path(self.build_lib) / SHIPPED / rel
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [str(Path(self.build_lib) / SHIPPED / rel) for _, rel in shipped_files()]
        return outputs


setup(cmdclass={"build_py": BuildWithCards})
