#!/usr/bin/env bash
# The runs behind the evidence tables in docs/evidence/ (RobustBlocks and defense baselines).
# Usage: bash scripts/evidence.sh [MODELS] [OUT]
# then: python scripts/evidence_docs.py (regenerates the marked tables in docs/evidence/)
# Images: 16 evenly spaced over the builtin test split (--sample), both budgets of the issue.
# APGD runs 50 iterations and Square 300 queries (the presets' 100 / 1000 cost hours on 2 CPU
# cores); each cell stores the parameters it ran with.
set -euo pipefail
MODELS=${1:-cnniqa-builtin,robust-cnniqa-builtin}
OUT=${2:-results/evidence/evidence.h5}
COMMON=(--models "$MODELS" --eps 4/255,8/255 --sample 16 --out "$OUT" --html "${OUT%.h5}.html")
python -m benchmark -q run "${COMMON[@]}" --attacks fgsm,ifgsm,mifgsm,pgd
python -m benchmark -q run "${COMMON[@]}" --attacks apgd --param steps=50
python -m benchmark -q run "${COMMON[@]}" --attacks square --param queries=300
python -m benchmark -q run "${COMMON[@]}" --attacks uap,facpa
# test-split SROCC/PLCC of every model, for the tables of models without a card (purifiers)
python -m benchmark -q evaluate --models "$MODELS" --json "${OUT%.h5}-eval.json" >/dev/null
