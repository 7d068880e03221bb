"""NMS against a plain greedy reference, and the adapter protocol's checks."""

from __future__ import annotations

import pytest
import torch

from ml_debugger.core.detection.adapter import box_iou, nms, postprocess
from ml_debugger.errors import ModelError


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(classes[i] != classes[j] or float(box_iou(boxes[i : i + 1], boxes[j : j + 1])) <= thr for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_greedy(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randint(0, 20, (n,), generator=g).float() / 20  # ties
    classes = torch.randint(0, 3, (n,), generator=g)
    thr = [0.3, 0.5, 0.7][seed % 3]
    assert nms(boxes, scores, classes, thr).tolist() == _greedy(boxes, scores, classes, thr)


def test_nms_with_a_long_suppression_chain_is_still_greedy() -> None:
    # Each box overlaps only its neighbours: whether box k survives depends on all before it.
    n = 60
    x = torch.arange(n).float() * 4
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)
    scores = torch.linspace(1, 0.1, n)
    classes = torch.zeros(n, dtype=torch.long)
    got = nms(boxes, scores, classes, 0.3)
    assert got.tolist() == _greedy(boxes, scores, classes, 0.3)


def _candidates(n: int = 5, c: int = 3, d: int = 8) -> dict[str, torch.Tensor]:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10], [80, 80, 90, 90.0]])
    logits = torch.tensor([[5.0, 0, 0], [4.0, 0, 0], [0, 3.0, 0], [0, 0, 5.0], [-1.0, -1.0, -1.0]])
    return {"boxes": boxes[:n], "logits": logits[:n, :c], "features": torch.arange(n * d).float().reshape(n, d)}


def test_postprocess_keeps_each_box_its_feature() -> None:
    cand = _candidates()
    (det,) = postprocess([cand], 1, score_thresh=0.5, iou_thresh=0.5)
    # Box 1 overlaps box 0 (same class, lower score): suppressed; box 3 overlaps box 0 but is
    # another class: kept; box 4 scores 1/3 < 0.5: dropped.
    assert sorted(det.index.tolist()) == [0, 2, 3]
    assert torch.equal(det.features, cand["features"][det.index])
    assert det.labels.tolist() == [int(cand["logits"][i].argmax()) for i in det.index]
    # Overlap signals: box 0 suppressed box 1 (IoU 81/119); box 3 (another class) sits exactly on box 0.
    i0 = det.index.tolist().index(0)
    assert int(det.n_candidates[i0]) == 1 and float(det.candidate_iou[i0]) == pytest.approx(81 / 119)
    assert float(det.max_iou_other[i0]) == pytest.approx(1.0)
    i2 = det.index.tolist().index(2)
    assert int(det.n_candidates[i2]) == 0 and float(det.max_iou_other[i2]) == 0.0
    (top,) = postprocess([cand], 1, score_thresh=0.0, iou_thresh=0.5, max_detections=2)
    assert len(top.index) == 2 and top.scores[0] >= top.scores[1]
    batched = {k: v[None] for k, v in cand.items()}
    assert postprocess(batched, 1, score_thresh=0.5)[0].index.tolist() == det.index.tolist()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([{"boxes": torch.zeros(2, 4), "logits": torch.zeros(2, 3)}], "image 0 has no 'features'"),
        ([{"boxes": torch.zeros(2, 5), "logits": torch.zeros(2, 3), "features": torch.zeros(2, 4)}],
         "boxes has shape (2, 5), not [N, 4]"),
        ([{"boxes": torch.zeros(2, 4), "logits": torch.zeros(3, 3), "features": torch.zeros(2, 4)}],
         "logits has shape (3, 3), not [2, C]"),
        ([{"boxes": torch.zeros(2, 4), "features": torch.zeros(2, 4)}], "neither 'logits' nor 'scores'"),
        (torch.zeros(1, 4), "returned Tensor, not a dict or a list of 1 dicts"),
        ({"boxes": torch.zeros(2, 3, 4), "logits": torch.zeros(2, 3, 3), "features": torch.zeros(2, 3, 4)},
         "≠ the batch size 1"),
    ],
)  # fmt: skip
def test_protocol_errors_name_the_key_and_shape(output: object, message: str) -> None:
    with pytest.raises(ModelError) as e:
        postprocess(output, 1)
    assert message in str(e.value)
    with pytest.raises(ModelError, match="has 3 classes, expected 4"):
        postprocess([_candidates()], 1, n_classes=4)


@pytest.mark.parametrize("box_dim", [4, 7])
def test_a_batch_is_post_processed_as_its_images_one_by_one(box_dim: int) -> None:
    # The batch goes through one IoU call and one NMS graph: images must not mix, as dicts or a list.
    g = torch.Generator().manual_seed(box_dim)
    b, n = 5, 80
    xy = torch.rand(b, n, 2, generator=g) * 30
    if box_dim == 4:
        boxes = torch.cat([xy, xy + torch.rand(b, n, 2, generator=g) * 10 + 1], -1)
    else:
        boxes = torch.cat([xy, torch.zeros(b, n, 1), torch.rand(b, n, 3, generator=g) * 4 + 0.5,
                           torch.rand(b, n, 1, generator=g) * 6.28], -1)  # fmt: skip
    out = {
        "boxes": boxes,
        "logits": torch.randn(b, n, 3, generator=g) * 2,
        "features": torch.randn(b, n, 6, generator=g),
    }
    kw = {"score_thresh": 0.4, "iou_thresh": 0.3, "max_detections": 7, "box_dim": box_dim}
    batched = postprocess(out, b, **kw)  # type: ignore[arg-type]
    listed = postprocess([{k: v[i] for k, v in out.items()} for i in range(b)], b, **kw)  # type: ignore[arg-type]
    for i in range(b):
        (alone,) = postprocess({k: v[i : i + 1] for k, v in out.items()}, 1, **kw)  # type: ignore[arg-type]
        for got in (batched[i], listed[i]):
            for field in alone.__dataclass_fields__:
                assert torch.equal(getattr(got, field), getattr(alone, field)), field
        assert 0 < len(alone.index) <= 7
    assert (
        sum(int(d.n_candidates.sum()) for d in batched) > 0 and sum(float(d.max_iou_other.sum()) for d in batched) > 0
    )
