"""How long do `evaluate` on 50,000 labelled samples and `score` on 1,000,000 samples take?

Synthetic runs (the model's outputs and 512-wide features are drawn, not computed, so only the
evaluation and scoring are timed): a labelled `eval` run of 50,000 samples and a `pool` run of
1,000,000 whose true labels are kept aside. Features are noisy class centres; the "model"
predicts from a noisier view of them, so about a tenth of its predictions are wrong and the
kNN signals carry real information. Each command runs in its own process, so its peak memory
(VmHWM) is its own. Then 50,000 pool samples are scored again with exact kNN, to measure how
far the inverted-file search moves error_proba's AUROC.

    python benchmarks/scale.py                       # ~6 minutes on 2 cores, 2.3 GB of disk in .bench/
    python benchmarks/scale.py --pool 200000         # smaller

Targets (issue 3): score on 1M with a 50k bank ≤ 2 minutes on 2 cores; AUROC within 0.005 of exact.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE

from ml_debugger.core.metrics import auroc
from ml_debugger.core.signals import softmax_signals
from ml_debugger.core.store import RunInfo, Store
from ml_debugger.core.writer import RawBatch, batch_frames

D, C = 512, 10
# Class centres this far apart (relative to the feature noise) give ~90% accuracy.
SEPARATION = 0.14
BATCH = 50_000


def _make_run(store: Store, name: str, n: int, labelled: bool, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    info = RunInfo(
        name=name, task="classification", model_name="synthetic", model_version="v1", model_path="-",
        model_format="synthetic", model_sha256="-", dataset_path=f"synthetic/{name}", dataset_format="synthetic",
        labelled=labelled, classes=[str(c) for c in range(C)], feature_layer="synthetic", feature_dim=D,
        stability_k=0, settings={}, fingerprint=f"synthetic-{name}-{n}", status="running", n_expected=n,
    )  # fmt: skip
    store.create_run(info)
    for s in range(0, n, BATCH):
        yb = y[s : s + BATCH]
        feats = (centres[yb] + rng.normal(size=(len(yb), D))).astype(np.float32)
        view = feats + 0.3 * rng.normal(size=feats.shape).astype(np.float32)  # what the "model" sees
        logits = torch.from_numpy(view @ centres.T.astype(np.float32) * 0.5)
        ids = [f"{name}_{i:07d}.png" for i in range(s, s + len(yb))]
        raw = RawBatch(
            ids=ids, paths=ids, labels=[int(v) for v in yb] if labelled else [None] * len(yb),
            signals=softmax_signals(logits), features=torch.from_numpy(feats),
        )  # fmt: skip
        store.write_batch(name, **batch_frames(raw))
    store.update_run(name, status="complete")
    return y


def build(db: Path, n_eval: int, n_pool: int) -> Path:
    labels = db.with_suffix(".labels.parquet")
    if db.exists() and labels.exists():
        return labels
    db.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(C, D))  # the feature noise has unit variance per dimension
    centres *= np.sqrt(D) * SEPARATION / np.linalg.norm(centres, axis=1, keepdims=True)
    with Store(db) as store:
        _make_run(store, "eval", n_eval, True, 1, centres)
        y = _make_run(store, "pool", n_pool, False, 2, centres)
    pl.DataFrame({"sample_id": [f"pool_{i:07d}.png" for i in range(n_pool)], "true": y}).write_parquet(labels)
    return labels


def timed(code: str) -> tuple[float, float, str]:
    """Run ``code`` in a fresh Python; (seconds, peak RSS MiB, its stdout)."""
    wrapper = (
        "import time, torch; torch.set_num_threads(2); t = time.perf_counter()\n"
        f"{code}\n"
        "print('SECONDS', time.perf_counter() - t)\n"
        "print('HWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True, text=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("SECONDS", "HWM")))
    return float(lines["SECONDS"]), int(lines["HWM"]) / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=int, default=50_000, help="labelled samples (the kNN bank)")
    ap.add_argument("--pool", type=int, default=1_000_000, help="samples to score")
    ap.add_argument("--exact-check", type=int, default=50_000, help="pool samples re-scored with exact kNN")
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    db = CACHE / f"scale_{args.eval}_{args.pool}.duckdb"
    t0 = time.perf_counter()
    labels_path = build(db, args.eval, args.pool)
    print(f"synthetic runs: eval {args.eval:,}, pool {args.pool:,} (d={D}) in {time.perf_counter() - t0:.0f} s")
    with Store(db) as store:
        for name in store.result_names():
            store.drop_result(name)
    sec, mib, _ = timed(f"from ml_debugger.core.evaluate import evaluate; evaluate('eval', db={str(db)!r})")
    print(f"evaluate {args.eval:,} labelled samples: {sec:.1f} s, peak RSS {mib:,.0f} MiB")
    sec, mib, _ = timed(f"from ml_debugger.core.scoring import score; score('pool', db={str(db)!r})")
    print(f"score {args.pool:,} samples against a {args.eval:,}-sample bank: {sec:.1f} s, peak RSS {mib:,.0f} MiB "
          f"(target ≤ 120 s)")  # fmt: skip

    from ml_debugger.core.scoring import Scorer, load_scorer

    truth = pl.read_parquet(labels_path)
    with Store(db, read_only=True) as store:
        (name,) = store.result_names()
        info = store.require_result(name)
        ivf_scores = store.read_scores(name, "pool").join(truth, on="sample_id")
        exact: Scorer = load_scorer(store, info, expected_rows=0)  # never IVF
        sub = ivf_scores.sample(n=min(args.exact_check, ivf_scores.height), seed=0)
        frame = store.read_outputs("pool").join(sub.select("sample_id"), on="sample_id")
        ids, feats = store.read_features("pool")
    pos = pl.DataFrame({"sample_id": ids, "_i": np.arange(len(ids))})
    idx = frame.select("sample_id").join(pos, on="sample_id", maintain_order="left")["_i"].to_numpy()
    t = time.perf_counter()
    exact_scored = exact.score_frame(frame, feats[idx]).join(truth, on="sample_id")
    t_exact = time.perf_counter() - t
    sub = sub.join(
        exact_scored.select("sample_id", pl.col("error_proba").alias("exact"), pl.col("zone").alias("exact_zone")),
        on="sample_id",
    )
    y = (sub["pred"] != sub["true"]).to_numpy()
    a_ivf, a_exact = auroc(y, sub["error_proba"].to_numpy()), auroc(y, sub["exact"].to_numpy())
    print(f"on {sub.height:,} pool samples ({int(y.sum()):,} errors): AUROC of error_proba with IVF {a_ivf:.4f}, "
          f"exact {a_exact:.4f}, difference {a_ivf - a_exact:+.4f} (target within 0.005); "
          f"exact scoring of these took {t_exact:.1f} s")  # fmt: skip
    agree = float((sub["zone"] == sub["exact_zone"]).mean())
    print(f"zone agreement IVF vs exact: {agree:.1%}")


if __name__ == "__main__":
    main()
