"""The detector adapter protocol, and the post-processing mldbg applies itself.

Any detector plugs in as a callable (the model itself, or a small adapter around it) that takes
a batch of images ``[B, 3, H, W]`` and returns, for each image, its **candidate boxes before the
final NMS**: either a list of B dicts, or one dict of tensors with a leading batch dimension::

    {
        "boxes":    Tensor[N, 4],  # x1, y1, x2, y2 in the input's pixels (3D: [N, 7], see postprocess)
        "logits":   Tensor[N, C],  # class logits (mldbg applies softmax) ...
        # or "scores": Tensor[N, C],  # ... class probabilities already
        "features": Tensor[N, D],  # one feature vector per box (e.g. the box head's input)
        "objectness": Tensor[N],   # optional: multiplied into the class probabilities (YOLO-style)
    }

mldbg then keeps boxes whose best class probability is at least ``score_thresh``, applies NMS
per class at ``iou_thresh`` and keeps the ``max_detections`` best, so that every kept box still
has *its* feature vector: that is why these parameters belong to mldbg and not to the model.
A model that breaks the protocol is refused with the key and the shape that are wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml_debugger.errors import ModelError

KEYS = ("boxes", "features")
# Fixed-point rounds of the vectorised NMS before it falls back to the sequential loop.
_ROUNDS = 16


@dataclass(frozen=True)
class Detections:
    """The kept boxes of one image: ``boxes [K, 4]``, ``probs [K, C]``, ``labels [K]``,
    ``scores [K]`` (the label's probability), ``features [K, D]``, ``index [K]`` (each box's row
    among the image's candidates), and MetaDetect-style overlap signals: ``n_candidates [K]``
    (candidates of its class above the score threshold it suppressed or overlaps above the NMS
    IoU), ``candidate_iou [K]`` (their mean IoU with it) and ``max_iou_other [K]`` (its largest
    IoU with another kept box, any class)."""

    boxes: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    features: torch.Tensor
    index: torch.Tensor
    n_candidates: torch.Tensor
    candidate_iou: torch.Tensor
    max_iou_other: torch.Tensor


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a [N, 4]`` and ``b [M, 4]`` (xyxy): ``[N, M]``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


IouFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rotated_bev_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise BEV IoU of 3D boxes ``[N, 7]`` and ``[M, 7]``: what 3D post-processing suppresses by."""
    from ml_debugger.core.detection.rotated import iou_matrix

    return iou_matrix(a, b, mode="bev").to(a.dtype)


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float,
    iou_fn: IouFn = box_iou,
    ious: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the boxes greedy per-class NMS keeps, best score first (ties: input order).

    Exact greedy NMS without a Python loop over boxes: with ``S[i, j]`` = "box i (ranked before
    j, same class) overlaps j above the threshold", iterate ``keep[j] = not any(keep[i] and
    S[i, j])`` to its fixed point; after t rounds the first t ranks are final, and in practice a
    few rounds suffice. ``ious``: the boxes' pairwise IoU, when already computed.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b, c = boxes[order], classes[order]
    n = len(order)
    pairwise = iou_fn(b, b) if ious is None else ious[order][:, order]
    suppress = (pairwise > iou_threshold) & (c[:, None] == c[None, :])
    suppress = torch.triu(suppress, diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(_ROUNDS):
        new = ~(suppress & keep[:, None]).any(0)
        if torch.equal(new, keep):
            return order[keep]
        keep = new
    # Long suppression chains (rare): finish with the plain greedy loop, one rank at a time.
    s = suppress.cpu().numpy()
    alive = np.ones(n, dtype=bool)
    for i in range(n):
        if alive[i]:
            alive[i + 1 :] &= ~s[i, i + 1 :]
    return order[torch.from_numpy(alive).to(boxes.device)]


def _per_image(output: Any, batch: int) -> list[dict[str, torch.Tensor]]:
    if isinstance(output, dict):
        missing = [k for k in KEYS if k not in output]
        if missing:
            raise ModelError(_protocol(f"the output dict has no {missing[0]!r}"))
        n = {k: v.shape[0] for k, v in output.items() if isinstance(v, torch.Tensor)}
        if any(v != batch for v in n.values()):
            raise ModelError(_protocol(f"batched output leading sizes {n} ≠ the batch size {batch}"))
        return [{k: v[i] for k, v in output.items() if isinstance(v, torch.Tensor)} for i in range(batch)]
    if isinstance(output, (list, tuple)) and len(output) == batch and all(isinstance(o, dict) for o in output):
        return list(output)
    raise ModelError(_protocol(f"the model returned {type(output).__name__}, not a dict or a list of {batch} dicts"))


def _protocol(problem: str) -> str:
    return (
        f"detector output does not follow the adapter protocol: {problem}; per image it needs "
        "boxes [N, 4], logits or scores [N, C], features [N, D] (see ml_debugger.core.detection.adapter)"
    )


def _check(o: dict[str, torch.Tensor], i: int, n_classes: int | None, box_dim: int = 4) -> tuple[torch.Tensor, ...]:
    for k in KEYS:
        if k not in o:
            raise ModelError(_protocol(f"image {i} has no {k!r}"))
    boxes, feats = o["boxes"], o["features"]
    cls_key = "logits" if "logits" in o else "scores" if "scores" in o else None
    if cls_key is None:
        raise ModelError(_protocol(f"image {i} has neither 'logits' nor 'scores'"))
    cls = o[cls_key]
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.ndim != 2 or boxes.shape[1] != box_dim:
        raise ModelError(_protocol(f"image {i}: boxes has shape {tuple(boxes.shape)}, not [N, {box_dim}]"))
    if cls.ndim != 2 or cls.shape[0] != n:
        raise ModelError(_protocol(f"image {i}: {cls_key} has shape {tuple(cls.shape)}, not [{n}, C]"))
    if n_classes is not None and cls.shape[1] != n_classes:
        raise ModelError(_protocol(f"image {i}: {cls_key} has {cls.shape[1]} classes, expected {n_classes}"))
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ModelError(_protocol(f"image {i}: features has shape {tuple(feats.shape)}, not [{n}, D]"))
    probs = torch.softmax(cls.float(), -1) if cls_key == "logits" else cls.float()
    if "objectness" in o:
        obj = o["objectness"].float().reshape(-1)
        if obj.shape[0] != n:
            raise ModelError(_protocol(f"image {i}: objectness has {obj.shape[0]} values for {n} boxes"))
        probs = probs * obj[:, None]
    return boxes.float(), probs, feats.float()


def output_dims(output: Any, box_dim: int = 4) -> tuple[int, int]:
    """(classes, feature width) of a detector's output on a batch of one; a ModelError names what
    breaks the protocol."""
    postprocess(output, 1, box_dim=box_dim)
    first = _per_image(output, 1)[0]
    cls = first["logits"] if "logits" in first else first["scores"]
    return int(cls.shape[-1]), int(first["features"].shape[-1])


def postprocess(
    output: Any,
    batch: int,
    *,
    score_thresh: float = 0.05,
    iou_thresh: float = 0.5,
    max_detections: int = 100,
    n_classes: int | None = None,
    box_dim: int = 4,
) -> list[Detections]:
    """Score threshold, per-class NMS and top-k on a detector's candidates, per image.

    2D boxes are ``[N, 4]`` xyxy; 3D boxes ``[N, 7]`` (``box_dim=7``: x, y, z, dx, dy, dz, yaw)
    are suppressed and compared by their rotated bird's-eye-view IoU."""
    checked = [_check(o, i, n_classes, box_dim) for i, o in enumerate(_per_image(output, batch))]
    chosen = []
    for _, probs, _ in checked:
        scores, labels = probs.max(-1)
        chosen.append((torch.nonzero(scores >= score_thresh).reshape(-1), scores, labels))
    candidates = [boxes[idx] for (boxes, _, _), (idx, _, _) in zip(checked, chosen, strict=True)]
    if box_dim == 7:
        from ml_debugger.core.detection.rotated import self_iou

        # Rotated IoU is costly: NMS and the candidate signals need same-class pairs only, so
        # those are computed for every frame at once, then all pairs among the kept boxes.
        same = [labels[idx].cpu() for idx, _, labels in chosen]
        matrices = self_iou([c.detach().cpu() for c in candidates], same_class=same)
    else:
        matrices = [box_iou(b, b) for b in candidates]
    locals_ = []
    for (boxes, _, _), (idx, scores, labels), ious in zip(checked, chosen, matrices, strict=True):
        locals_.append(
            nms(boxes[idx], scores[idx], labels[idx], iou_thresh, ious=ious.to(boxes.device))[:max_detections]
        )
    if box_dim == 7:
        kept_pairs = self_iou([c[loc].detach().cpu() for c, loc in zip(candidates, locals_, strict=True)])
    else:
        kept_pairs = [m[loc][:, loc] for m, loc in zip(matrices, locals_, strict=True)]
    kept = []
    for (boxes, probs, feats), (idx, scores, labels), ious, local, pairs in zip(
        checked, chosen, matrices, locals_, kept_pairs, strict=True
    ):
        keep = idx[local]
        ious = ious.to(boxes.device)[local].to(boxes.dtype)  # kept × candidates (same class where 3D)
        near = (ious > iou_thresh) & (labels[keep][:, None] == labels[idx][None, :]) & (keep[:, None] != idx[None, :])
        n_near = near.sum(1)
        mean_iou = (ious * near).sum(1) / n_near.clamp(min=1)
        others = pairs.to(device=boxes.device, dtype=boxes.dtype).clone().fill_diagonal_(0.0)
        max_other = others.max(1).values if len(keep) > 1 else torch.zeros(len(keep), device=boxes.device)
        kept.append(
            Detections(
                boxes[keep], probs[keep], labels[keep], scores[keep], feats[keep], keep, n_near, mean_iou, max_other
            )
        )
    return kept
