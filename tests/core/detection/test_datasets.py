"""COCO, YOLO and folder detection datasets on real image files, and every bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ml_debugger.core.detection.datasets import open_detection_dataset
from ml_debugger.errors import DatasetError, UsageError


def _images(folder: Path, names: list[str], size: tuple[int, int] = (40, 30)) -> None:
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 60, 30)).save(folder / n)


def _coco(tmp_path: Path, **overrides: object) -> Path:
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "sub/b.png", "width": 40, "height": 30}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [30, 20, 20, 20]},  # past the border: clipped
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 4]},  # no area: dropped
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        ],
    }  # fmt: skip
    doc.update(overrides)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["a.png", "sub/b.png"])
    ds = open_detection_dataset(tmp_path / "img", annotations=_coco(tmp_path))
    assert ds.format == "coco" and ds.sample_ids == ["a.png", "sub/b.png"] and ds.labelled
    assert ds.classes == ["cat", "dog"]  # categories in id order: 3, 7
    rows = ds.boxes.sort("sample_id", "box").to_dicts()
    assert [(r["sample_id"], r["cls"], r["x1"], r["y1"], r["x2"], r["y2"], r["crowd"]) for r in rows] == [
        ("a.png", 0, 1, 2, 11, 7, False),
        ("a.png", 1, 30, 20, 40, 30, False),
        ("sub/b.png", 0, 0, 0, 40, 30, True),
    ]
    assert any("1 box(es) clipped to the image border: id 11" in n for n in ds.notes)
    assert any("1 box(es) dropped (no area): id 12" in n for n in ds.notes)
    assert all(Path(p).is_file() for p in ds.paths)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"annotations": [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}]},
         "annotations[0]: category_id 99 is not in categories"),
        ({"annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1]}]},
         "annotations[0]: image_id 5 is not in images"),
        ({"annotations": [{"id": 1, "image_id": 1, "category_id": 3}]}, "annotations[0] has no 'bbox'"),
        ({"annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1]}]}, "is not [x, y, width"),
        ({"images": [{"id": 1, "file_name": "gone.png", "width": 4, "height": 4}]}, "e.g. gone.png"),
        ({"categories": "cat"}, "has no 'categories' list"),
    ],
)  # fmt: skip
def test_coco_bad_input(tmp_path: Path, overrides: dict, message: str) -> None:
    _images(tmp_path / "img", ["a.png", "sub/b.png"])
    with pytest.raises(DatasetError) as e:
        open_detection_dataset(tmp_path / "img", annotations=_coco(tmp_path, **overrides))
    assert message in str(e.value)


def test_coco_that_does_not_parse_names_line_and_column(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["a.png"])
    bad = tmp_path / "ann.json"
    bad.write_text('{"images": [\n  {"id": 1,, "file_name": "a.png"}]}')
    with pytest.raises(DatasetError, match=r"ann.json:2:12: not valid JSON"):
        open_detection_dataset(tmp_path / "img", annotations=bad)
    with pytest.raises(UsageError, match="--format coco needs --annotations"):
        open_detection_dataset(tmp_path / "img", format="coco")


def _yolo(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    _images(root / "images", ["a.png", "b.png", "c.png"], size=(100, 50))
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.95 0.5 0.2 0.2\n\n")
    (root / "labels" / "b.txt").write_text("")
    (root / "data.yaml").write_text("names: {0: person, 1: car}\n")
    return root


def test_yolo(tmp_path: Path) -> None:
    ds = open_detection_dataset(_yolo(tmp_path))
    assert ds.format == "yolo" and ds.classes == ["person", "car"] and ds.sample_ids == ["a.png", "b.png", "c.png"]
    rows = ds.boxes.sort("box").to_dicts()
    assert [(r["cls"], r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows] == [
        (0, 40, 15, 60, 35),
        (1, 85, 20, 100, 30),  # 0.95 ± 0.1 of 100 px: clipped at the right border
    ]
    assert any("c.png" not in n and "1 image(s) without a label file" in n for n in ds.notes)
    assert any("clipped to the image border: a.txt:2" in n for n in ds.notes)


@pytest.mark.parametrize(
    ("content", "message"),
    [("0 0.5 0.5 0.2\n", "a.txt:1: 4 fields"),
     ("0 0.5 0.5 0.2 0.2\n5 0.1 0.1 0.1 0.1\n", "a.txt:2: class 5 is outside"),
     ("x 0.5 0.5 0.2 0.2\n", "a.txt:1: 'x 0.5 0.5 0.2 0.2' is not")],
)  # fmt: skip
def test_yolo_bad_lines(tmp_path: Path, content: str, message: str) -> None:
    root = _yolo(tmp_path)
    (root / "labels" / "a.txt").write_text(content)
    with pytest.raises(DatasetError) as e:
        open_detection_dataset(root)
    assert message in str(e.value)


def test_yolo_label_without_image_and_names(tmp_path: Path) -> None:
    root = _yolo(tmp_path)
    (root / "labels" / "zzz.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match="1 YOLO label file.* have no image .* e.g. zzz.txt"):
        open_detection_dataset(root)
    (root / "labels" / "zzz.txt").unlink()
    (root / "data.yaml").unlink()
    with pytest.raises(UsageError, match="add classes.txt or data.yaml, or pass --classes"):
        open_detection_dataset(root)
    (root / "classes.txt").write_text("person\ncar\n")
    assert open_detection_dataset(root).classes == ["person", "car"]


def test_unlabelled_folder(tmp_path: Path) -> None:
    _images(tmp_path / "pool", ["x.png", "d/y.jpg"])
    ds = open_detection_dataset(tmp_path / "pool", classes=["a", "b"])
    assert ds.format == "folder" and not ds.labelled and ds.boxes.height == 0
    assert ds.sample_ids == ["d/y.jpg", "x.png"] and ds.classes == ["a", "b"]
