"""Does error_proba find a model's real errors better than the baselines users get for free?

On real data, a model is trained on one split; `mldbg extract` + `evaluate` run on a labelled
eval split and `score` on a held-out pool whose labels are used only here, to measure. For
the pool it prints AUROC, AUPR-error and FPR@95%TPR of error_proba beside max softmax,
entropy, DOCTOR, energy and kNN Trust Score, the AUROC among confident samples, the precision
of critical_hotspot, stable_coverage's observed error rate against its promised bound, and
the share of all pool errors that fall outside the two coverage zones against the share of
the pool that lies outside them.

    python benchmarks/error_detection.py                  # Fashion-MNIST and digits (~3 minutes)
    python benchmarks/error_detection.py --datasets digits
    python benchmarks/error_detection.py --scale          # evaluate on 50k, score 1M (synthetic)

Targets (issue 3): error_proba's pool AUROC above the best baseline's on both datasets, and
the coverage bound kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, export, fashion_mnist

from ml_debugger.core.evaluate import evaluate
from ml_debugger.core.extract import ExtractRequest, extract
from ml_debugger.core.metrics import auroc_difference, detector_metrics, upper_bound
from ml_debugger.core.scoring import load_scorer, score
from ml_debugger.core.stability import StabilityConfig
from ml_debugger.core.store import Store
from ml_debugger.core.summary import BASELINES

FASHION_MEAN, FASHION_STD = (0.286,), (0.353,)
# Fashion-MNIST splits: the CNN trains on TRAIN images of the official train set, the
# labelled eval split is EVAL further images of it, the pool is the official test set.
TRAIN, EVAL = 20_000, 10_000


class FashionCNN(nn.Module):
    """The benchmarks' small CNN with dropout (so --stability also gets MC-dropout)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


def _write_pngs(images: np.ndarray, labels: np.ndarray | None, folder: Path) -> None:
    for i, img in enumerate(images):
        sub = folder / str(int(labels[i])) if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"f{i:05d}.png")


def fashion_setup() -> dict:
    """PNG folders, pool labels and a trained model, cached under .bench/."""
    root = CACHE / "error_detection_fashion"
    done = root / ".complete"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        x, y = fashion_mnist("train")
        xt, yt = fashion_mnist("t10k")
        _write_pngs(x[TRAIN : TRAIN + EVAL], y[TRAIN : TRAIN + EVAL], root / "eval")
        _write_pngs(xt, None, root / "pool")
        pl.DataFrame({"sample_id": [f"f{i:05d}.png" for i in range(len(yt))], "true": yt.astype(np.int64)}).write_csv(
            root / "pool_labels.csv"
        )
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in range(10)))
        torch.manual_seed(0)
        net = FashionCNN()
        xs = (torch.tensor(x[:TRAIN], dtype=torch.float32).unsqueeze(1) / 255.0 - FASHION_MEAN[0]) / FASHION_STD[0]
        ys = torch.tensor(y[:TRAIN].astype(np.int64))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(3):
            for b in torch.randperm(TRAIN, generator=gen).split(128):
                opt.zero_grad()
                F.cross_entropy(net(xs[b]), ys[b]).backward()
                opt.step()
        export(net, xs[:2], root / "model.pt2")
        done.touch()
    return {
        "val": root / "eval",
        "pool": root / "pool",
        "classes": root / "classes.txt",
        "model": root / "model.pt2",
        "labels": pl.read_csv(root / "pool_labels.csv"),
        "pre": dict(image_size=28, channels=1, mean=FASHION_MEAN, std=FASHION_STD),
    }


def digits_setup() -> dict:
    from ml_debugger.core.demo import PREPROCESS, build_demo

    root = CACHE / "error_detection_digits"
    files = build_demo(root)
    labels = pl.read_csv(root / "pool_labels.csv").rename({"label": "true"})
    return {
        "val": files.val,
        "pool": files.pool,
        "classes": files.classes,
        "model": files.model,
        "labels": labels,
        "pre": dict(image_size=PREPROCESS.image_size, channels=1, mean=PREPROCESS.mean, std=PREPROCESS.std),
    }


def run_dataset(name: str, setup: dict, k: int) -> dict:
    db = CACHE / f"error_detection_{name}.duckdb"
    db.unlink(missing_ok=True)
    common = dict(model=str(setup["model"]), model_name=name, stability=StabilityConfig(k=k), **setup["pre"])
    t0 = time.perf_counter()
    extract(ExtractRequest(dataset=str(setup["val"]), name="val", **common), db=db)  # type: ignore[arg-type]
    extract(
        ExtractRequest(dataset=str(setup["pool"]), name="pool", classes_file=str(setup["classes"]), **common), db=db
    )  # type: ignore[arg-type]
    t1 = time.perf_counter()
    result = evaluate("val", db=db).result
    t2 = time.perf_counter()
    score("pool", db=db, result=result.name)
    t3 = time.perf_counter()
    with Store(db, read_only=True) as store:
        scores = store.read_scores(result.name, "pool")
        # our class-mean distance ratio alone, for reference (recomputed: scores do not keep it)
        outputs = store.read_outputs("pool")
        _, feats = store.read_features("pool")
        ratio = load_scorer(store, result).score_frame(outputs, feats).select("sample_id", "class_ratio")
    scores = scores.join(ratio, on="sample_id")
    report = pool_report(name, result, scores, setup["labels"], seconds=(t1 - t0, t2 - t1, t3 - t2))
    # the same with fixed zone thresholds (configs/default.yaml's numbers as they are), to compare
    fixed_cfg = CACHE / "zones_fixed.yaml"
    fixed_cfg.write_text("zones:\n  mode: fixed\n")
    fixed = evaluate("val", db=db, config=fixed_cfg, name="fixed").result
    score("pool", db=db, result="fixed")
    with Store(db, read_only=True) as store:
        fixed_scores = store.read_scores("fixed", "pool").drop("label").join(setup["labels"], on="sample_id")
    stable = fixed_scores.filter(pl.col("zone") == "stable_coverage")
    wrong = int((stable["pred"].cast(pl.Int64) != stable["true"]).sum())
    report["fixed_stable_coverage"] = {
        "stable_error_proba": fixed.thresholds["global"]["stable_error_proba"],
        "count": stable.height,
        "errors": wrong,
        "observed": wrong / stable.height if stable.height else None,
    }
    return report


def pool_report(name: str, result, scores: pl.DataFrame, labels: pl.DataFrame, seconds: tuple) -> dict:
    from ml_debugger.core.errormodel import signal_frame

    frame = scores.drop("label").join(labels.with_columns(pl.col("true").cast(pl.Int64)), on="sample_id")
    frame = signal_frame(frame, {})
    y = (frame["pred"].cast(pl.Int64) != frame["true"]).to_numpy()
    confident = frame["confidence"].to_numpy() >= 0.9
    dets = {"error_proba": detector_metrics(y, frame["error_proba"].to_numpy().astype(np.float64), confident)}
    for base, (col, sign) in BASELINES.items():
        dets[base] = detector_metrics(y, sign * frame[col].to_numpy().astype(np.float64), confident)
    versus = max((d["auroc"], n) for n, d in dets.items() if n != "error_proba")[1]
    ratio = -frame["class_ratio"].to_numpy().astype(np.float64)
    dets["class_ratio (ours, alone)"] = detector_metrics(y, ratio, confident)
    col, sign = BASELINES[versus]
    diff = auroc_difference(y, frame["error_proba"].to_numpy(), sign * frame[col].to_numpy(), rounds=500)
    zone = frame["zone"].to_numpy()
    crit = zone == "critical_hotspot"
    stable = zone == "stable_coverage"
    outside = ~np.isin(zone, ["stable_coverage", "operational_coverage"])
    cov = result.metrics["coverage"] or {}
    return {
        "dataset": name,
        "eval_samples": result.metrics["samples"],
        "eval_accuracy": result.metrics["accuracy"],
        "pool_samples": len(y),
        "pool_errors": int(y.sum()),
        "pool_accuracy": 1 - float(y.mean()),
        "detectors": dets,
        "versus_best": {"baseline": versus, **diff},
        "critical": {"count": int(crit.sum()), "precision": float(y[crit].mean()) if crit.any() else None},
        "stable_coverage": {
            "count": int(stable.sum()),
            "errors": int(y[stable].sum()),
            "observed": float(y[stable].mean()) if stable.any() else None,
            "observed_upper95": upper_bound(int(y[stable].sum()), int(stable.sum())) if stable.any() else None,
            "target": cov.get("target"),
            "bound_on_eval": cov.get("upper_bound"),
        },
        "outside_coverage": {
            "share_of_errors": float(y[outside].sum() / max(1, y.sum())),
            "share_of_pool": float(outside.mean()),
        },
        "seconds": {"extract": seconds[0], "evaluate": seconds[1], "score": seconds[2]},
    }


def print_report(r: dict) -> None:
    print(
        f"\n## {r['dataset']}: eval {r['eval_samples']:,} samples (accuracy {r['eval_accuracy']:.1%}), "
        f"pool {r['pool_samples']:,} samples, {r['pool_errors']:,} errors (accuracy {r['pool_accuracy']:.1%})"
    )
    print(f"{'detector (pool)':<26}{'AUROC':>8}{'AUPR-err':>10}{'FPR@95':>8}{'AUROC conf≥0.9':>16}")
    for name, d in r["detectors"].items():
        ac = d.get("auroc_confident")
        conf = "–" if ac is None else f"{ac:.4f}"
        print(f"{name:<26}{d['auroc']:>8.4f}{d['aupr_error']:>10.4f}{d['fpr95']:>8.4f}{conf:>16}")
    best = max((d["auroc"], n) for n, d in r["detectors"].items() if n in BASELINES)
    ours = r["detectors"]["error_proba"]["auroc"]
    v = r["versus_best"]
    print(
        f"error_proba - best baseline ({best[1]}): {ours - best[0]:+.4f} AUROC "
        f"(paired bootstrap 95% interval {v['lo']:+.4f} to {v['hi']:+.4f}; "
        f"{'target met' if ours > best[0] else 'target MISSED'})"
    )
    c = r["critical"]
    precision = "–" if c["precision"] is None else f"{c['precision']:.1%}"
    print(f"critical_hotspot: {c['count']} samples, precision {precision} (share that are errors)")
    s = r["stable_coverage"]
    if s["count"]:
        kept = s["observed"] <= s["target"]
        print(
            f"stable_coverage: {s['count']:,} samples, {s['errors']} errors: observed {s['observed']:.2%} "
            f"vs promised ≤ {s['target']:.1%} ({'kept' if kept else 'NOT kept'}); "
            f"95% upper bound on the pool {s['observed_upper95']:.2%}"
        )
    else:
        print(f"stable_coverage: empty (no cut-off could promise ≤ {s['target']:.1%} on the eval split)")
    f = r["fixed_stable_coverage"]
    if f["count"]:
        print(
            f"  (fixed mode, stable_error_proba ≤ {f['stable_error_proba']}: {f['count']:,} samples, "
            f"{f['errors']} errors, observed {f['observed']:.2%}; no promise attached)"
        )
    else:
        print(f"  (fixed mode, stable_error_proba ≤ {f['stable_error_proba']}: empty)")
    o = r["outside_coverage"]
    print(
        f"outside the coverage zones: {o['share_of_errors']:.1%} of the pool's errors "
        f"in {o['share_of_pool']:.1%} of the pool"
    )
    t = r["seconds"]
    print(f"time: extract {t['extract']:.1f} s, evaluate {t['evaluate']:.1f} s, score {t['score']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="fashion,digits", help="comma-separated: fashion, digits")
    ap.add_argument("--stability", type=int, default=4, help="K perturbed copies at extraction")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    CACHE.mkdir(exist_ok=True)
    reports = []
    for name in args.datasets.split(","):
        setup = {"fashion": fashion_setup, "digits": digits_setup}[name]()
        reports.append(run_dataset(name, setup, args.stability))
        print_report(reports[-1])
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
