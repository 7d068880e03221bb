"""The embedded demo: real handwritten digits (scikit-learn), a small CNN, and extraction.

``build_demo(dir)`` writes ``data/train`` and ``data/val`` (class folders of PNGs), a flat
``data/pool`` whose labels are set aside in ``pool_labels.csv``, ``classes.txt``, a CNN trained
for a few seconds with a fixed seed (deliberately short of perfect, so the pool holds real
errors) saved as ``model.pt2``, an ``mldbg.yaml`` with the preprocessing the model needs, and
an ``evaluate.yaml`` with a coverage target the demo's few labels can back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_debugger.core.images import Preprocess, load_image
from ml_debugger.errors import MldbgError

IMAGE_SIZE = 16
MODEL_NAME = "digits_cnn"
PREPROCESS = Preprocess(image_size=IMAGE_SIZE, channels=1, mean=(0.5,), std=(0.5,))
# train / val / pool shares of the 1,797 digits; few training images and epochs keep the model
# imperfect (about 90-95% accurate), so evaluation has real errors to find.
SPLIT = (0.25, 0.40, 0.35)
EPOCHS = 4
SEED = 0


class DigitsNet(nn.Module):
    """A small CNN for 16×16 grayscale digits: two convolutions, dropout, a linear head."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.drop(F.relu(self.fc1(x.flatten(1))))
        return self.head(x)


@dataclass(frozen=True)
class DemoFiles:
    root: Path
    train: Path
    val: Path
    pool: Path
    classes: Path
    model: Path
    train_accuracy: float
    val_accuracy: float


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MldbgError("mldbg demo needs scikit-learn for its digits: pip install 'mldbg[demo]'") from None
    d = load_digits()
    return d.images, d.target


def _write_images(images: np.ndarray, targets: np.ndarray, idx: np.ndarray, folder: Path, labelled: bool) -> None:
    from PIL import Image

    for i in idx:
        sub = folder / str(int(targets[i])) if labelled else folder
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(sub / f"digit_{i:04d}.png")


def _tensors(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted(folder.glob("*/*.png"))
    x = torch.stack([load_image(str(f), PREPROCESS) for f in files])
    y = torch.tensor([int(f.parent.name) for f in files])
    return x, y


def train_model(x: torch.Tensor, y: torch.Tensor, *, epochs: int = EPOCHS, seed: int = SEED) -> DigitsNet:
    """Train DigitsNet with Adam; deterministic for a given seed on one machine."""
    torch.manual_seed(seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    return net.eval()


def build_demo(root: str | os.PathLike[str]) -> DemoFiles:
    """Write the demo dataset and model under ``root`` (existing demo files are replaced)."""
    import shutil

    root = Path(root)
    images, targets = _load_digits()
    perm = np.random.default_rng(SEED).permutation(len(targets))
    n_train, n_val = int(SPLIT[0] * len(perm)), int(SPLIT[1] * len(perm))
    splits = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "pool": perm[n_train + n_val :],
    }
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)
    for split, idx in splits.items():
        _write_images(images, targets, idx, data / split, labelled=split != "pool")
    (root / "pool_labels.csv").write_text(
        "sample_id,label\n" + "".join(f"digit_{i:04d}.png,{targets[i]}\n" for i in sorted(splits["pool"]))
    )
    classes = root / "classes.txt"
    classes.write_text("".join(f"{c}\n" for c in range(10)))
    x, y = _tensors(data / "train")
    net = train_model(x, y)
    xv, yv = _tensors(data / "val")
    with torch.no_grad():
        train_acc = float((net(x).argmax(1) == y).float().mean())
        val_acc = float((net(xv).argmax(1) == yv).float().mean())
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(net, (x[:2],), dynamic_shapes={"x": {0: batch}})
    model = root / "model.pt2"
    torch.export.save(program, str(model))
    (root / "mldbg.yaml").write_text(
        "# Defaults for mldbg commands run in this folder (flags and MLDBG_* variables override them).\n"
        "extract:\n"
        f"  model_name: {MODEL_NAME}\n"
        f"  image_size: {IMAGE_SIZE}\n"
        "  channels: 1\n"
        "  mean: '0.5'\n"
        "  std: '0.5'\n"
        "evaluate:\n"
        "  config: evaluate.yaml\n"
    )
    (root / "evaluate.yaml").write_text(
        "# The demo's ~700 labelled digits can back a promise that stable_coverage is at most 5%\n"
        "# wrong (95% confidence), not the default 1%: that needs several hundred more labels.\n"
        "zones:\n"
        "  coverage_target: 0.05\n"
    )
    return DemoFiles(root, data / "train", data / "val", data / "pool", classes, model, train_acc, val_acc)
