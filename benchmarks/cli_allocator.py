"""What do the command line's fixed malloc thresholds (``ml_debugger/cli/_allocator.py``) buy?

Each case runs the ``mldbg`` command in fresh processes, as users run it, with the thresholds
(the default) and without them (``MLDBG_TUNE_MALLOC=0``: glibc's own, dynamic ones),
alternating which goes first, and prints the median wall time of each, the median of the
per-round ratios, and each side's peak RSS (the process and its DataLoader workers).

    python benchmarks/cli_allocator.py            # ~15 minutes on 2 cores
    python benchmarks/cli_allocator.py --rounds 3 --cases small

Cases: `extract` of 20,000 (and 50,000) Fashion-MNIST PNGs by the small CNN of
extract_overhead.py (28 px, batch 256), the same with ``--stability 4`` on 5,000, the
MobileNetV2-sized model (224 px, batch 32) on 128 images, `extract --task detection3d` of the 3D
benchmark's 500 procedural LiDAR frames by the demo's BEV detector, `evaluate` of the
error-detection benchmark's 10,000-sample Fashion-MNIST eval run (a copy of its database), and
at scale (``scale.py``'s synthetic runs, 512-wide features): `evaluate` on 50,000 labelled
samples and `score --force` of 300,000 against them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import CACHE, MobileNetV2Like, SmallCNN, export, png_folder

MLDBG = str(Path(sys.executable).with_name("mldbg"))
SMALL = ["--image-size", "28", "--channels", "1", "--mean", "0.286", "--std", "0.353", "--batch-size", "256"]


def _run(args: list[str], tuned: bool) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process and its children) of one ``mldbg`` command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["MLDBG_TUNE_MALLOC"] = "1" if tuned else "0"
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: nothing to drain while waiting
        t0 = time.perf_counter()
        proc = subprocess.Popen([MLDBG, "-q", *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"mldbg {' '.join(args)} failed ({proc.returncode}): {err.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def case(label: str, make_args, rounds: int) -> None:  # type: ignore[no-untyped-def]
    _run(make_args(), True)  # warm-up: file cache
    times: dict[bool, list[float]] = {True: [], False: []}
    rss: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for tuned in (True, False) if i % 2 == 0 else (False, True):
            wall, peak = _run(make_args(), tuned)
            times[tuned].append(wall)
            rss[tuned].append(peak)
    ratio = statistics.median(t / d for t, d in zip(times[True], times[False], strict=True))
    print(
        f"{label:<44} glibc default {statistics.median(times[False]):7.2f} s  fixed thresholds "
        f"{statistics.median(times[True]):7.2f} s  ratio {ratio:.3f} (rounds "
        f"{', '.join(f'{t / d:.3f}' for t, d in zip(times[True], times[False], strict=True))}); peak RSS "
        f"{max(rss[False]):.0f} vs {max(rss[True]):.0f} MiB",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cases", default="small,large,stability,mobilenet,detection3d,evaluate,scale")
    args = ap.parse_args()
    which = args.cases.split(",")
    CACHE.mkdir(exist_ok=True)
    torch.manual_seed(0)
    small = export(SmallCNN(), torch.zeros(2, 1, 28, 28), CACHE / "small_cnn.pt2")
    db = CACHE / "cli_allocator.duckdb"

    def extract(folder: Path, model: Path | str, extra: list[str]):  # type: ignore[no-untyped-def]
        def make() -> list[str]:
            db.unlink(missing_ok=True)
            return ["extract", str(folder), "--model", str(model), "--name", "b", "--db", str(db), *extra]

        return make

    if "small" in which:
        case("extract, small CNN, 20,000 images", extract(png_folder(20_000), small, SMALL), args.rounds)
    if "large" in which:
        case("extract, small CNN, 50,000 images", extract(png_folder(50_000), small, SMALL), max(2, args.rounds // 2))
    if "stability" in which:
        folder = png_folder(5_000)
        make = extract(folder, small, [*SMALL, "--stability", "4"])
        case("extract --stability 4, small CNN, 5,000", make, args.rounds)
    if "mobilenet" in which:
        mobile = export(MobileNetV2Like(), torch.zeros(2, 3, 224, 224), CACHE / "mobilenet_like.pt2")
        folder = png_folder(128)
        extra = ["--image-size", "224", "--channels", "3", "--batch-size", "32"]
        case("extract, MobileNetV2-like 224 px, 128 images", extract(folder, mobile, extra), args.rounds)
    frames = CACHE / "detection3d" / "data" / "lidar_test"
    if "detection3d" in which and frames.exists():
        from ml_debugger.core.detection.demo3d import IOU_THRESH, MODEL, SCORE_THRESH

        weights = str(CACHE / "detection3d" / "bev.pt")
        extra = ["--task", "detection3d", "--weights", weights, "--score-thresh", str(SCORE_THRESH),
                 "--iou-thresh", str(IOU_THRESH)]  # fmt: skip
        case("extract --task detection3d, 500 LiDAR frames", extract(frames, MODEL, extra), args.rounds)
    elif "detection3d" in which:
        print(f"detection3d: skipped, run benchmarks/detection3d.py first (no {frames})")
    if "scale" in which:
        from scale import build

        scale_db = CACHE / "scale_50000_300000.duckdb"
        build(scale_db, 50_000, 300_000)  # cached after the first time (~20 s, 0.7 GB)

        def evaluate_scale() -> list[str]:
            return ["evaluate", "eval", "--db", str(scale_db)]

        def score_scale() -> list[str]:
            return ["score", "pool", "--force", "--db", str(scale_db)]

        case("evaluate, 50,000 synthetic (scale.py)", evaluate_scale, max(2, args.rounds // 2))
        case("score --force, 300,000 against 50,000", score_scale, max(2, args.rounds // 2))
    source = CACHE / "error_detection_fashion.duckdb"
    if "evaluate" in which and source.exists():

        def evaluate() -> list[str]:
            shutil.copyfile(source, db)
            return ["evaluate", "val", "--db", str(db)]

        case("evaluate, 10,000 labelled Fashion-MNIST", evaluate, args.rounds)
    elif "evaluate" in which:
        print(f"evaluate: skipped, run benchmarks/error_detection.py first (no {source})")


if __name__ == "__main__":
    main()
