"""Shared benchmark helpers: Fashion-MNIST PNGs from the Debian package, and the timed models."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CACHE = Path(os.environ.get("MLDBG_BENCH_CACHE", ".bench"))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N]) of the real Fashion-MNIST split ('train' or 't10k')."""
    images = FASHION_DIR / f"{split}-images-idx3-ubyte.gz"
    if not images.exists():
        raise SystemExit(
            f"{images} not found: install the Debian package (apt-get install -y dataset-fashion-mnist) "
            "or set FASHION_MNIST_DIR"
        )
    return _idx(images), _idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz")


def png_folder(n: int) -> Path:
    """A flat folder of the first ``n`` Fashion-MNIST training images as PNGs (cached)."""
    folder = CACHE / f"fashion_png_{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = fashion_mnist("train")
    if n > len(images):
        test, _ = fashion_mnist("t10k")
        images = np.concatenate([images, test])
    for i in range(n):
        Image.fromarray(images[i]).save(folder / f"f{i:05d}.png")
    done.touch()
    return folder


class SmallCNN(nn.Module):
    """A small CNN for 28 px grayscale images (~9k images/s on 2 cores)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2Like(nn.Module):
    """The MobileNetV2 layout (3.5M parameters, 224 px, 3 channels), random weights: a speed stand-in."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


def export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Save ``model`` as a torch.export program with a dynamic batch dimension."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return path
