"""Record each image's source photograph in results files written before cells stored it.

Why: intervals resample source photographs (images cut from one photograph are not
independent), and cells written before the runner stored `group` read as image-level. The
group of an image is a property of the dataset, not of the run: this script looks it up in
the dataset the cell names (which must be present here, built from the same recipe: an id
it does not know is an error, never a guess) and rewrites the cell with its arrays,
configuration hash and provenance unchanged, plus the `group` array and a fresh summary.

    python scripts/annotate_groups.py results/evidence/*.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.datasets.registry import create_dataset  # noqa: E402
from benchmark.report.tables import cell_summary  # noqa: E402
from benchmark.store.hdf5 import ResultStore  # noqa: E402


def annotate(path: Path) -> int:
    """Add `group` to every cell of one file that lacks it; returns how many were rewritten."""
    store = ResultStore(path)
    hashes = store.cell_index()
    datasets = {}
    changed = 0
    with store.writer():
        for cell in store.read_cells():
            if cell.group is not None:
                continue
            name = cell.key.dataset
            if name not in datasets:
                datasets[name] = create_dataset(name, split="all")
            ds = datasets[name]
            cell.group = np.array([ds.group(str(i)) for i in cell.image_id], dtype=object)
            cell.summary = None
            store.write_cell(cell, hashes[cell.key]["config_hash"], cell_summary(cell))
            changed += 1
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    for path in args.files:
        print(f"{path}: {annotate(path)} cell(s) annotated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
