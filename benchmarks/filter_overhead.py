"""What does real-time filtering cost over the bare model call?

For a small CNN (28 px, the error-detection benchmark's Fashion-MNIST model, so the result is
real) and a MobileNetV2-sized model (224 px, random weights; its result is fitted on random
inputs, which is enough to time it), ``data_filter(x)`` and ``model(x)`` run on the same inputs,
alternating, many rounds; the median of the per-round time ratios is printed, at batch 1 and 64,
without and with ``record=True`` (the scored inputs written to the store in the background).

    python benchmarks/filter_overhead.py            # ~2 minutes on 2 cores

Targets (issue 5, CPU): ≤ 1.10x at batch 64, ≤ 1.25x at batch 1.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, MobileNetV2Like, fashion_mnist
from error_detection import FASHION_MEAN, FASHION_STD, FashionCNN, fashion_setup

from ml_debugger.core.evaluate import evaluate
from ml_debugger.data_filter import ClassificationDataFilter, ClassificationTracer

ZONES = ["critical_hotspot", "hotspot", "recessive_hotspot", "aleatoric_hotspot"]


def _result(db: Path, model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    db.unlink(missing_ok=True)
    with ClassificationTracer(model, name, "v1", db=db) as tracer, torch.no_grad():
        for s in range(0, len(x), 64):
            tracer(x[s : s + 64], y[s : s + 64], dataset_type="val")
    evaluate(f"{name}_v1_val", db=db)


def _time(fn, x: torch.Tensor) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def compare(label: str, model: torch.nn.Module, f, x: torch.Tensor, rounds: int) -> None:
    with torch.no_grad():
        for _ in range(3):  # warm-up both
            model(x)
            f(x)
        ratios, bare, filt = [], [], []
        for _ in range(rounds):
            a = _time(model, x)
            b = _time(f, x)
            bare.append(a)
            filt.append(b)
            ratios.append(b / a)
    print(
        f"{label:<48} model {statistics.median(bare) * 1000:8.2f} ms  filter {statistics.median(filt) * 1000:8.2f} ms"
        f"  ratio {statistics.median(ratios):.3f} (median of {rounds} rounds)"
    )


def cases(model: torch.nn.Module, name: str, label: str, x: torch.Tensor, y: torch.Tensor, rounds: tuple) -> None:
    """Fit a result on (x, y) through the tracer, then time batch 64 and 1, without and with record."""
    db = CACHE / f"filter_{name}.duckdb"
    _result(db, model, name, x, y)
    for record in (False, True):
        with ClassificationDataFilter(model, name, "v1", filter_config={"target_zones": ZONES}, db=db,
                                      record=record, run_name="recorded") as f:  # fmt: skip
            tag = ", record=True" if record else ""
            compare(f"{label}, batch 64{tag}", model, f, x[:64], rounds[0])
            compare(f"{label}, batch 1{tag}", model, f, x[:1], rounds[1])


def main() -> None:
    torch.set_num_threads(2)
    CACHE.mkdir(exist_ok=True)
    setup = fashion_setup()
    program = torch.export.load(str(setup["model"]))
    small = FashionCNN()
    small.load_state_dict(program.state_dict)
    small.eval()
    images, labels = fashion_mnist("train")
    x = (torch.tensor(images[20_000:22_000], dtype=torch.float32).unsqueeze(1) / 255.0 - FASHION_MEAN[0]) / FASHION_STD[
        0
    ]
    y = torch.tensor(labels[20_000:22_000].astype(np.int64))
    cases(small, "small", "small CNN 28 px", x, y, rounds=(200, 500))
    torch.manual_seed(0)
    big = MobileNetV2Like().eval()
    cases(big, "mobile", "MobileNetV2-like 224 px", torch.randn(256, 3, 224, 224), torch.randint(0, 10, (256,)),
          rounds=(10, 50))  # fmt: skip
    stability_case()


def stability_case() -> None:
    """The cost of stability=True: the demo's digits CNN, runs extracted with --stability 4."""
    from ml_debugger.core.demo import PREPROCESS, DigitsNet, build_demo
    from ml_debugger.core.extract import ExtractRequest, extract
    from ml_debugger.core.images import load_image
    from ml_debugger.core.stability import StabilityConfig

    root = CACHE / "filter_demo"
    files = build_demo(root)
    db = root / "mldbg.duckdb"
    db.unlink(missing_ok=True)
    common = dict(model=str(files.model), model_name="digits", image_size=16, channels=1, mean=(0.5,), std=(0.5,),
                  stability=StabilityConfig(k=4))  # fmt: skip
    extract(ExtractRequest(dataset=str(files.val), name="val", **common), db=db)  # type: ignore[arg-type]
    evaluate("val", db=db)
    net = DigitsNet()
    net.load_state_dict(torch.export.load(str(files.model)).state_dict)
    net.eval()
    paths = sorted(files.pool.glob("*.png"))[:64]
    x = torch.stack([load_image(str(p), PREPROCESS) for p in paths])
    f = ClassificationDataFilter(net, "digits", "v1", db=db, stability=True, mc_dropout=False)
    ids = [p.name for p in paths]
    compare("digits CNN 16 px, batch 64, stability K=4", net, lambda v: f(v, input_ids=ids[: len(v)]), x, 200)
    compare("digits CNN 16 px, batch 1, stability K=4", net, lambda v: f(v, input_ids=ids[: len(v)]), x[:1], 500)


if __name__ == "__main__":
    main()
