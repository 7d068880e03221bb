"""How long does a report of 1,000,000 scored samples take, and how big is it?

Uses the synthetic 1M-sample pool of ``benchmarks/scale.py`` (scored against a 50,000-sample
labelled run; built and scored by ``benchmarks/query_scale.py`` when missing). Side by side in
one run: the floor (reading the columns a report needs into Polars), the whole HTML report of
the pool and of the 50,000-sample labelled run, and the terminal heatmap. The synthetic runs
have no stability and no image files, so the confidence × stability heatmap and the thumbnails
are left out (the gallery still looks each file up).

    python benchmarks/report_scale.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE
from query_scale import timed

from ml_debugger.core.report import build_report, heatmap
from ml_debugger.core.report.data import COLUMNS
from ml_debugger.core.store import Store


def main() -> None:
    torch.set_num_threads(2)
    db = CACHE / "scale_50000_1000000.duckdb"
    if not db.exists():
        sys.exit(f"{db} is missing: run `python benchmarks/query_scale.py` first (builds and scores it)")
    with Store(db, read_only=True) as store:
        (result,) = store.result_names()[:1]

    def read() -> None:
        with Store(db, read_only=True) as store:
            store.scan_scores(result, "pool").select(COLUMNS).collect()

    out = CACHE / "report_bench"
    out.mkdir(exist_ok=True)
    print(f"1,000,000 scored samples (result {result}), medians of 3 runs")
    floor = timed("read the report's columns of the pool (floor)", read, 3)
    pool = timed(
        "report --run pool (1,000,000 samples)",
        lambda: build_report(result, run="pool", db=db, out=out / "pool.html"),
        3,
    )
    ev = timed(
        "report of the result (its 50,000-sample labelled run)",
        lambda: build_report(result, db=db, out=out / "eval.html"),
        3,
    )
    term = timed(
        "show --heatmap --run pool --axes error_proba-ood",
        lambda: heatmap(result, run="pool", kind="error_proba-ood", db=db),
        3,
    )
    print(f"report / floor: pool {pool / floor:.2f}×, terminal heatmap {term / floor:.2f}×")
    for name in ("pool", "eval"):
        print(f"{name}.html: {(out / f'{name}.html').stat().st_size / 1e6:.2f} MB")
    del ev
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM")).split()[1]
    print(f"peak RSS of this process: {int(hwm) / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
