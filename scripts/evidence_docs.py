"""Regenerate every evidence table in docs/ from the committed results files.

    python scripts/evidence_docs.py            # rewrite the marked blocks in docs/**/*.md
    python scripts/evidence_docs.py --check    # exit 1 if a committed table differs

Each block names its results files (`results/evidence/*.h5`, written by scripts/evidence.sh)
and, for models without a card, the `evaluate --json` output beside them; see
`benchmark.report.evidence`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from benchmark.report.evidence import pages_with_blocks, update_page

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="folder of markdown pages")
    args = p.parse_args(argv)
    changed = 0
    for page in pages_with_blocks(Path(args.docs)):
        old = page.read_text(encoding="utf-8")
        new = update_page(old, ROOT)
        if new == old:
            print(f"up to date: {page.relative_to(ROOT)}")
            continue
        changed += 1
        if args.check:
            rel = str(page.relative_to(ROOT))
            sys.stdout.writelines(
                difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), rel, rel + " (regenerated)"
                )
            )
        else:
            page.write_text(new, encoding="utf-8")
            print(f"regenerated: {page.relative_to(ROOT)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
