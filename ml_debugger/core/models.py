"""Load a user's model and expose ``(logits, features)`` for every batch.

Accepted models
---------------
* TorchScript archives (``.pt``, ``.ts``, ``.pth``, ``.jit``): the forward graph is copied and
  extended to also return the feature tensor (TorchScript modules cannot take hooks).
* ``torch.export`` programs (``.pt2``): a capture node is inserted after the feature node of
  the program's FX graph.
* ``package.module:callable`` factories returning an ``nn.Module``, with ``--weights`` (a
  state dict, loaded with ``weights_only=True``): ordinary forward hooks.
* Any of these may instead return ``(logits, features)`` itself.

The feature is the input of the last ``nn.Linear`` executed (global-average-pooled when it is
spatial) unless ``layer`` names another module, whose output is then used.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_debugger.errors import ModelError, UsageError

log = logging.getLogger(__name__)

EXPORT_SUFFIXES = frozenset({".pt2"})
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# Tensors captured from inside exported (FX) graphs during the current forward, by model id.
_CAPTURED: dict[int, torch.Tensor] = {}


def _mldbg_capture(x: torch.Tensor, key: int) -> torch.Tensor:
    _CAPTURED[key] = x
    return x


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else CPU."""
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {device!r}; choose auto, cpu or cuda") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pool_features(feat: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → global average pool; ``[B, T, C]`` → mean over tokens; else flatten."""
    if feat.ndim == 4:
        return feat.mean(dim=(2, 3))
    if feat.ndim == 3:
        return feat.mean(dim=1)
    return feat.reshape(feat.shape[0], -1)


@dataclass
class FeatureModel:
    """A loaded model that returns ``(logits [B, C], features [B, D])`` per batch."""

    spec: str
    format: str
    sha256: str
    module: Any
    device: torch.device
    layer: str | None = None
    layer_requested: bool = False
    _forward: Callable[[torch.Tensor], tuple[Any, torch.Tensor | None]] | None = None
    _dropouts: list[Any] = field(default_factory=list)

    @property
    def has_dropout(self) -> bool:
        return bool(self._dropouts)

    def set_mc_dropout(self, on: bool) -> None:
        """Switch only the dropout modules to training mode (MC-dropout); the rest stays in eval."""
        for m in self._dropouts:
            m.train(on)

    def input_channels(self) -> int | None:
        """The in-channels of the first 4-D weight (the first convolution), if any."""
        for p in self.module.parameters():
            if p.ndim == 4:
                return int(p.shape[1])
        return None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._forward is not None
        out, feat = self._forward(x)
        if isinstance(out, (tuple, list)) and len(out) == 2:
            out, own = out
            if feat is None or not self.layer_requested:  # features the model returns itself win
                feat = own
                self.layer = "returned by the model"
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"model {self.spec} returned {shape} for a batch of {x.shape[0]}; classification needs "
                "logits [B, C] (or a (logits, features) pair)"
            )
        if feat is None:
            raise ModelError(
                f"could not find features in {self.spec}: it has no nn.Linear to hook; pass --layer NAME "
                "or make the model return (logits, features)"
            )
        return out.float(), pool_features(feat).float()


# -- loaders ----------------------------------------------------------------------------------


def _load_factory(spec: str, weights: str | None, device: torch.device) -> tuple[nn.Module, str]:
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # a factory in the user's working directory, as `python -m` finds it
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ModelError(
            f"cannot import {module_name!r} for --model {spec} ({type(err).__name__}: {err}); "
            "run from the directory that holds it or install it"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r} (from --model {spec})")
        obj = getattr(obj, part)
    try:
        model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    except Exception as err:
        raise ModelError(f"factory {spec} failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    digest = hashlib.sha256(spec.encode())
    if weights:
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelError(f"--weights {wpath} does not exist; pass the state_dict file saved with torch.save")
        try:
            state = torch.load(wpath, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelError(f"cannot load --weights {wpath} as a state dict ({type(err).__name__}: {err})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"--weights {wpath} holds a {type(state).__name__}, not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise ModelError(f"--weights {wpath} does not fit {spec}: {' '.join(first[:2])}") from None
        digest.update(file_sha256(wpath).encode())
    return model.to(device).eval(), digest.hexdigest()


def _hook_module(model: FeatureModel, module: nn.Module, layer: str | None) -> None:
    names = dict(module.named_modules())
    store: dict[str, torch.Tensor] = {}
    if layer is not None:
        if layer not in names or layer == "":
            raise ModelError(f"unknown --layer {layer!r}; available modules: {', '.join(n for n in names if n)}")
        names[layer].register_forward_hook(lambda _m, _i, out: store.__setitem__("f", out))
        model.layer = layer

    def first_forward(x: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        # The last nn.Linear *executed* (not the last defined): hook them all once, keep the last.
        order: list[str] = []

        def record(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
                order.append(name)
                store["f"] = inp[0]

            return hook

        linears = [(n, m) for n, m in names.items() if isinstance(m, nn.Linear)]
        handles = [m.register_forward_pre_hook(record(n)) for n, m in linears]
        try:
            out = module(x)
        finally:
            for h in handles:
                h.remove()
        if order:
            last = order[-1]
            names[last].register_forward_pre_hook(lambda _m, inp: store.__setitem__("f", inp[0]))
            model.layer = f"{last} (input)"
        model._forward = forward
        return out, store.get("f")

    def forward(x: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        store.clear()
        return module(x), store.get("f")

    model._forward = forward if layer is not None else first_forward
    model._dropouts = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def _script_attr_path(value: Any) -> str | None:
    """Dotted module path of a TorchScript value built from prim::GetAttr chains off self."""
    parts: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        node = node.inputsAt(0).node()
    if node.kind() != "prim::Param":
        return None
    return ".".join(reversed(parts))


def _hook_script(model: FeatureModel, module: Any) -> None:
    graph = module.forward.graph.copy()
    feature = None
    if model.layer is not None:
        calls = {}
        for node in graph.nodes():
            if node.kind() == "prim::CallMethod" and node.s("name") == "forward":
                path = _script_attr_path(node.inputsAt(0))
                if path:
                    calls[path] = node
        if model.layer not in calls:
            raise ModelError(
                f"unknown --layer {model.layer!r} for TorchScript model {model.spec}; layers called from its "
                f"forward: {', '.join(calls) or 'none'} (or export the model with torch.export for any layer)"
            )
        feature = calls[model.layer].output()
    else:
        torch._C._jit_pass_inline(graph)
        linears = [n for n in graph.nodes() if n.kind() == "aten::linear"]
        if linears:
            feature = linears[-1].inputsAt(0)
            model.layer = "last linear (input)"
    if feature is None:
        model._forward = lambda x: (module(x), None)
    else:
        ret = graph.return_node()
        old = ret.inputsAt(0)
        tup = graph.create("prim::TupleConstruct", [old, feature])
        tup.insertBefore(ret)
        tup.output().setType(torch._C.TupleType([old.type(), feature.type()]))
        ret.replaceInputWith(old, tup.output())
        try:
            fn = torch._C._create_function_from_graph("mldbg_forward_with_features", graph)
        except Exception as err:  # an unusual graph: fall back to the model's own outputs
            log.debug("TorchScript feature capture unavailable: %s", err)
            model._forward = lambda x: (module(x), None)
        else:
            model._forward = lambda x: fn(module._c, x)
    model._dropouts = [m for m in module.modules() if "Dropout" in getattr(m, "original_name", "")]


def _hook_export(model: FeatureModel, gm: Any) -> None:
    graph = gm.graph
    target = None
    if model.layer is not None:
        available: list[str] = []
        for node in graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            paths = [p for p, _ in stack.values() if p]
            available.extend(p for p in paths if p not in available)
            if model.layer in paths:
                target = node
        if target is None:
            raise ModelError(f"unknown --layer {model.layer!r}; available modules: {', '.join(available)}")
    else:
        linears = [n for n in graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]
        if linears:
            target = linears[-1].args[0]
            model.layer = "last linear (input)"
    key = id(model)
    if target is not None:
        with graph.inserting_after(target):
            graph.call_function(_mldbg_capture, (target, key))
        gm.recompile()

    def forward(x: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        _CAPTURED.pop(key, None)
        out = gm(x)
        return out, _CAPTURED.pop(key, None)

    model._forward = forward


def is_factory_spec(spec: str) -> bool:
    return bool(_FACTORY_RE.match(spec)) and not Path(spec).exists()


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    layer: str | None = None,
    device: str | None = "auto",
) -> FeatureModel:
    """Load ``spec`` (a file or ``package.module:callable``) and prepare feature capture.

    Raises
    ------
    ModelError
        The file is missing or not a model, the factory does not import, the layer is unknown.
    """
    dev = resolve_device(device)
    if is_factory_spec(spec):
        module, sha = _load_factory(spec, weights, dev)
        model = FeatureModel(
            spec=spec, format="factory", sha256=sha, module=module, device=dev, layer=layer, layer_requested=bool(layer)
        )
        _hook_module(model, module, layer)
        return model
    path = Path(spec)
    if not path.is_file():
        hint = " (for a factory write package.module:callable)" if ":" in spec else ""
        raise ModelError(f"model file {path} does not exist{hint}; pass a .pt2, TorchScript file or factory")
    if weights:
        raise UsageError("--weights is only for factory models (package.module:callable); a model file carries its own")
    sha = file_sha256(path)
    suffix = path.suffix.lower()
    if suffix in EXPORT_SUFFIXES:
        try:
            program = torch.export.load(str(path))
            gm = program.module()
        except Exception as err:
            raise ModelError(f"cannot load {path} as a torch.export program ({type(err).__name__}: {err})") from None
        gm = gm.to(dev)
        model = FeatureModel(
            spec=spec, format="export", sha256=sha, module=gm, device=dev, layer=layer, layer_requested=bool(layer)
        )
        _hook_export(model, gm)
        return model
    try:
        module = torch.jit.load(str(path), map_location=dev)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"cannot load {path} as a TorchScript model ({reason}); if it is a state dict, pass "
            "--model package.module:factory --weights FILE; for torch.export programs use a .pt2 file"
        ) from None
    module.eval()
    model = FeatureModel(
        spec=spec, format="torchscript", sha256=sha, module=module, device=dev, layer=layer, layer_requested=bool(layer)
    )
    _hook_script(model, module)
    return model
