"""Model loading: the three formats agree, --layer works, and bad models fail clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ml_debugger.core.models import load_model
from ml_debugger.errors import ModelError, UsageError
from tests.conftest import Models


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def test_formats_agree_on_logits_and_features(models: Models, batch: torch.Tensor) -> None:
    results = {}
    for spec, weights in (
        (str(models.pt2), None),
        (str(models.ts), None),
        (models.factory, str(models.weights)),
    ):
        m = load_model(spec, weights=weights, device="cpu")
        logits, feats = m(batch)
        logits2, feats2 = m(batch)  # the second call takes the steady-state path
        assert torch.equal(logits, logits2) and torch.equal(feats, feats2)
        results[m.format] = (logits, feats)
        assert m.input_channels() == 1
    ref_logits, ref_feats = results["factory"]
    assert ref_feats.shape == (5, 64)  # the input of the last nn.Linear (head), not of fc1
    for fmt in ("export", "torchscript"):
        assert torch.allclose(results[fmt][0], ref_logits, atol=1e-5), fmt
        assert torch.allclose(results[fmt][1], ref_feats, atol=1e-5), fmt


def test_layer_option(models: Models, batch: torch.Tensor) -> None:
    for spec, weights in (
        (str(models.pt2), None),
        (models.factory, str(models.weights)),
        (str(models.ts), None),
    ):
        m = load_model(spec, weights=weights, layer="conv2", device="cpu")
        _, feats = m(batch)
        assert feats.shape == (5, 32), spec  # [B, 32, 8, 8] global-average-pooled
        with pytest.raises(ModelError, match=r"unknown --layer 'conv9'.*conv1"):
            load_model(spec, weights=weights, layer="conv9", device="cpu")(batch)


def test_factory_errors(models: Models, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot import 'no_such_pkg.mod'"):
        load_model("no_such_pkg.mod:build")
    with pytest.raises(ModelError, match="has no attribute 'Nope'"):
        load_model("ml_debugger.core.demo:Nope")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(models.factory, weights=str(tmp_path / "w.pt"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not fit"):
        load_model(models.factory, weights=str(tmp_path / "other.pt"))


def test_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file .*missing.pt2 does not exist"):
        load_model(str(tmp_path / "missing.pt2"))
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="cannot load .* as a TorchScript model"):
        load_model(str(tmp_path / "junk.pt"))
    (tmp_path / "junk.pt2").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="torch.export program"):
        load_model(str(tmp_path / "junk.pt2"))
    with (
        pytest.raises(UsageError, match="--device cuda: CUDA is not available")
        if not torch.cuda.is_available()
        else pytest.raises(ModelError)
    ):
        load_model(str(tmp_path / "junk.pt2"), device="cuda")


def test_wrong_output_shape(tmp_path: Path) -> None:
    class Seg(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # [B, C, H, W]: not classification logits

    path = tmp_path / "seg.ts"
    torch.jit.save(torch.jit.script(Seg()), str(path))
    with pytest.raises(ModelError, match=r"returned \(2, 1, 16, 16\) .* needs logits \[B, C\]"):
        load_model(str(path))(torch.zeros(2, 1, 16, 16))


def test_model_returning_logits_and_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "twohead.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        f = x.flatten(1)[:, :8]\n"
        "        return f[:, :3] * 2, f\n"
        "def build():\n    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_model("twohead:build", device="cpu")
    logits, feats = m(torch.ones(2, 1, 4, 4))
    assert logits.shape == (2, 3) and feats.shape == (2, 8)
    sys.modules.pop("twohead", None)


def test_torchscript_returning_logits_and_features(tmp_path: Path) -> None:
    class TwoHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(16, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.relu(self.body(x.flatten(1)))
            return self.head(f), f * 10

    path = tmp_path / "twohead.ts"
    torch.jit.save(torch.jit.script(TwoHead()), str(path))
    m = load_model(str(path), device="cpu")
    logits, feats = m(torch.ones(2, 1, 4, 4))
    assert logits.shape == (2, 3) and feats.shape == (2, 6)
    own = torch.relu(m.module.body(torch.ones(2, 16))) * 10
    assert torch.allclose(feats, own)  # the model's own features, not the hooked head input
    assert m.layer == "returned by the model"
