"""Feature capture on a live ``nn.Module``, shared by the real-time filter and the tracer."""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from ml_debugger.core.models import pool_features
from ml_debugger.errors import ModelError, UsageError

RETURNED = "returned by the model"


class FeatureHook:
    """Runs ``model`` and captures its feature: ``target_layers``' output, else the input of the
    layer the runs were extracted from (``fitted_layer``, e.g. ``"head (input)"``), else the
    input of the last ``nn.Linear``; a model returning ``(logits, features)`` keeps its own."""

    def __init__(self, model: nn.Module, target_layers: str | list[str] | None, fitted_layer: str | None) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self._capture: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.layer = self._register(target_layers, fitted_layer)

    def _register(self, target_layers: str | list[str] | None, fitted_layer: str | None) -> str:
        names = dict(self.model.named_modules())
        if isinstance(target_layers, list):
            if len(target_layers) != 1:
                raise UsageError(f"target_layers takes one layer name, got {len(target_layers)}")
            target_layers = target_layers[0]
        if target_layers is not None:
            if target_layers not in names or not target_layers:
                raise ModelError(f"unknown layer {target_layers!r}; modules: {', '.join(n for n in names if n)}")
            names[target_layers].register_forward_hook(lambda _m, _i, out: self._capture.__setitem__("f", out))
            return target_layers
        if fitted_layer == RETURNED:
            return fitted_layer
        name = (fitted_layer or "").removesuffix(" (input)")
        if name not in names or not isinstance(names[name], nn.Linear):
            linears = [n for n, m in names.items() if isinstance(m, nn.Linear)]
            if not linears:
                raise ModelError("the model has no nn.Linear to take features from; pass target_layers=NAME")
            name = linears[-1]
        names[name].register_forward_pre_hook(lambda _m, inp: self._capture.__setitem__("f", inp[0]))
        return f"{name} (input)"

    def device(self) -> torch.device | None:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else None

    def __call__(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``(model output as returned, logits [B, C] float CPU, features [B, D] float CPU)``.

        Calls are serialised: the capture slot is shared by all calls of this hook.
        """
        n = int(x.shape[0])
        dev = self.device()
        if dev is not None and x.device != dev:
            x = x.to(dev)
        with self._lock:
            self._capture.clear()
            out = self.model(x)
            feats = self._capture.get("f")
            self._capture.clear()
        logits = out
        if isinstance(out, (tuple, list)) and len(out) == 2:
            logits, own = out
            feats = own if feats is None or self.layer == RETURNED else feats
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != n:
            raise ModelError(f"the model returned {type(logits).__name__} for a batch of {n}; need logits [B, C]")
        if feats is None:
            raise ModelError("no features were captured; pass target_layers=NAME or return (logits, features)")
        with torch.no_grad():
            return out, logits.detach().float().cpu(), pool_features(feats.detach()).float().cpu()
