"""How fast are queries and exports on 1,000,000 scored samples?

Uses the synthetic 1M-sample pool of ``benchmarks/scale.py`` (512-wide features, scored against
a 50,000-sample bank; built and scored here when missing, ~4 minutes). Each query runs through
``run_query`` exactly as `mldbg query --dry-run` does (open the store, read and filter the
scores, rank), 5 times; the median is printed. Exports write a saved 100,000-sample selection in
each format.

    python benchmarks/query_scale.py

Targets (issue 4, 2 cores): ≤ 300 ms for the filter + top-N queries, ≤ 10 s for a diverse
selection of 1,000 from 100,000 candidates, ≤ 2 s per 100,000-row export.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE
from scale import build

from ml_debugger.core.export import export
from ml_debugger.core.query import QuerySpec, run_query
from ml_debugger.core.scoring import score
from ml_debugger.core.store import Store

REPEATS = 5


def timed(label: str, fn, repeats: int = REPEATS) -> float:
    times, answer = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    rows = getattr(answer, "rows", None)
    got = f", {rows.height:,} rows from {answer.candidates:,} candidates" if hasattr(rows, "height") else ""
    print(f"{label:<58} median {med * 1000:8.1f} ms (runs: {', '.join(f'{x * 1000:.0f}' for x in times)}){got}")
    return med


def main() -> None:
    torch.set_num_threads(2)
    CACHE.mkdir(exist_ok=True)
    db = CACHE / "scale_50000_1000000.duckdb"
    build(db, 50_000, 1_000_000)
    with Store(db) as store:
        scored = store.scored_pairs().filter(store.scored_pairs()["run"] == "pool").height
        for sel in store.list_selections()["id"].to_list():
            store.drop_selection(sel)
    if not scored:
        print("scoring the 1M pool first (see benchmarks/scale.py) …")
        if not Store(db, read_only=True).result_names():
            from ml_debugger.core.evaluate import evaluate

            evaluate("eval", db=db)
        score("pool", db=db)
    with Store(db, read_only=True) as store:
        (result,) = store.result_names()[:1]
        p90 = store.con.execute(
            "SELECT quantile_cont(error_proba, 0.9) FROM scores WHERE run = 'pool' AND result = ?", [result]
        ).fetchall()[0][0]

    def q(spec: QuerySpec, dry: bool = True):
        return lambda: run_query(spec, db=db, run="pool", result=result, dry_run=dry)

    print(f"1,000,000 scored samples, result {result}")
    zones = QuerySpec(zones=["hotspot", "critical_hotspot"], n=100)
    timed("zone filter (hotspot, critical_hotspot) + top-100", q(zones))
    conds = ["error_proba>=0.3", "confidence>=0.5", "ood_score<=0.99"]
    timed("3 conditions + top-1,000", q(QuerySpec(conditions=conds, n=1000)))
    timed("class-balanced, 1,000 over all 1M (no filter)", q(QuerySpec(strategy="class_balanced", n=1000)), 3)
    diverse = QuerySpec(strategy="diverse", conditions=[f"error_proba>={p90}"], n=1000)
    timed("diverse 1,000 from the top-10% (100,000) by error_proba", q(diverse), 3)
    answer = run_query(QuerySpec(conditions=[f"error_proba>={p90}"], n=100_000), db=db, run="pool", result=result)
    print(f"saved {answer.selection} with {answer.rows.height:,} samples for the exports")
    out = CACHE / "export_bench"
    out.mkdir(exist_ok=True)
    for fmt in ("csv", "json", "jsonl", "labelstudio"):
        path = out / f"manifest.{fmt}"
        run_export = lambda f=fmt, p=path: export(answer.selection, db=db, fmt=f, out=str(p))  # noqa: E731
        timed(f"export 100,000 rows as {fmt}", run_export, 3)
        print(f"{'':<58} {path.stat().st_size / 1e6:.1f} MB")
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM")).split()[1]
    print(f"peak RSS of this process: {int(hwm) / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
