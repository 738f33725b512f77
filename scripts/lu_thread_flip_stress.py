"""Is torch's batched CPU LU right after `torch.set_num_threads`? (see benchmark/robust/linalg.py)

Each mode runs in a fresh process, because the failure is process-wide: factorise batches
of I + 0.1 (A - A^T) (never singular) of several sizes and count the (size, batch) cases
whose factors are wrong (max |P L U - M| > 1e-3) or whose pivots are invalid, with torch's
`lu_factor_ex` and with the project's `lu_factor_checked`.

    python scripts/lu_thread_flip_stress.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, sys, torch
from benchmark.robust.linalg import lu_factor_checked
threads = int(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
out = {}
for name, fn in [("torch", lambda m: torch.linalg.lu_factor_ex(m)[:2]), ("checked", lu_factor_checked)]:
    wrong, cases = [], 0
    for dtype in (torch.float32, torch.float64, torch.complex64):
        for n in (64, 96, 128, 160, 192, 256, 384):
            for batch in (1, 2, 8):
                cases += 1
                g = torch.Generator().manual_seed(n * 10 + batch)
                a = torch.randn(batch, n, n, dtype=dtype, generator=g)
                m = torch.eye(n, dtype=dtype) + 0.1 * (a - a.mH)
                try:
                    lu, piv = fn(m)
                except FloatingPointError:
                    wrong.append(f"{n}x{batch} raised")
                    continue
                if ((piv < 1) | (piv > n)).any():
                    wrong.append(f"{n}x{batch} pivots")
                    continue
                p, l, u = torch.lu_unpack(lu, piv)
                if float((p @ l @ u - m).abs().max()) > 1e-3:
                    wrong.append(f"{n}x{batch}")
    out[name] = [cases, len(wrong), sorted(set(wrong))]
print(json.dumps(out))
"""


def main() -> None:
    print("| before factorising | lu_factor_ex wrong / cases | lu_factor_checked wrong / cases |")
    print("|---|---|---|")
    for label, threads in [
        ("nothing", 0),
        ("torch.set_num_threads(1)", 1),
        ("torch.set_num_threads(2)", 2),
    ]:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True, check=True
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        cells = []
        for name in ("torch", "checked"):
            cases, n_wrong, where = res[name]
            cells.append(f"{n_wrong} / {cases}" + (f" ({', '.join(where)})" if where else ""))
        print(f"| {label} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
