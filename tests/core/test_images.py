"""Decoding with Pillow (grayscale, RGBA, palette, 16-bit) and torch preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml_debugger.core.images import Preprocess, decode, load_image, parse_floats, transform
from ml_debugger.errors import UsageError


def test_modes_decode_to_unit_range(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((6, 8), 10, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((6, 8), 51, dtype=np.uint8)).save(tmp_path / "g.jpg", quality=100)
    for name in ("rgb.png", "rgba.png", "p.png"):
        t = decode(str(tmp_path / name), 3)
        assert t.shape == (3, 6, 8) and t.dtype == torch.float32
        assert t[0].min() > 0.99 and t[1].max() < 0.01, name  # red stays red; alpha is dropped
    g16 = decode(str(tmp_path / "g16.png"), 1)
    assert g16.shape == (1, 6, 8) and torch.allclose(g16, torch.ones_like(g16))  # 16-bit white is 1.0, not 257
    assert decode(str(tmp_path / "g16.png"), 3).shape == (3, 6, 8)
    Image.fromarray(np.full((6, 8), 200, dtype=np.uint16)).save(tmp_path / "dark16.png")
    assert abs(float(decode(str(tmp_path / "dark16.png"), 1).mean()) - 200 / 65535) < 1e-6  # dark, not 200/255
    assert abs(float(decode(str(tmp_path / "g.jpg"), 1).mean()) - 0.2) < 0.01


def test_transform_resizes_crops_and_normalises() -> None:
    img = torch.rand(3, 40, 60)
    pre = Preprocess(image_size=20, channels=3, mean=(0.5,), std=(0.25,))
    out = transform(img, pre)
    assert out.shape == (3, 20, 20)
    flat = transform(torch.full((3, 10, 10), 0.75), Preprocess(image_size=10, channels=3, mean=(0.5,), std=(0.25,)))
    assert torch.allclose(flat, torch.ones_like(flat))


def test_truncated_and_bogus_files_raise(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not a png")
    pre = Preprocess(image_size=8)
    for name in ("cut.png", "text.png"):
        with pytest.raises((OSError, ValueError)):
            load_image(str(tmp_path / name), pre)


def test_preprocess_validation() -> None:
    with pytest.raises(UsageError, match="--mean has 2 values but the model takes 3 channels"):
        Preprocess(channels=3, mean=(0.1, 0.2))
    with pytest.raises(UsageError, match="--channels 2"):
        Preprocess(channels=2)
    with pytest.raises(UsageError, match="not a comma-separated list"):
        parse_floats("a,b", "--std")
    assert parse_floats("0.1, 0.2,0.3", "--mean") == (0.1, 0.2, 0.3)
