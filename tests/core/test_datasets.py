"""Dataset formats: class folders, flat folders, CSV/JSONL manifests, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ml_debugger.core.datasets import open_dataset, read_classes_file
from ml_debugger.core.demo import DemoFiles
from ml_debugger.errors import DatasetError, UsageError


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), 128).save(path)


def test_image_folder_labels_from_sorted_folders(demo: DemoFiles) -> None:
    ds = open_dataset(demo.val)
    assert ds.format == "imagefolder" and ds.classes == [str(i) for i in range(10)]
    assert ds.sample_ids == sorted(ds.sample_ids)
    assert all(ds.classes[label] == sid.split("/")[0] for sid, label in zip(ds.sample_ids, ds.labels, strict=True))  # type: ignore[index]
    assert len(ds) == len(list(demo.val.glob("*/*.png")))


def test_flat_folder_is_unlabelled(demo: DemoFiles) -> None:
    ds = open_dataset(demo.pool)
    assert ds.format == "folder" and not ds.labelled and ds.classes == []
    assert ds.sample_ids[0].startswith("digit_") and "/" not in ds.sample_ids[0]


def test_classes_file_orders_labels(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        _png(tmp_path / "d" / c / "a.png")
    (tmp_path / "classes.txt").write_text("# model order\ndog\ncat\nbird\n")
    ds = open_dataset(tmp_path / "d", classes=read_classes_file(tmp_path / "classes.txt"))
    assert ds.classes == ["dog", "cat", "bird"]
    assert dict(zip(ds.sample_ids, ds.labels, strict=True)) == {"cat/a.png": 1, "dog/a.png": 0}
    (tmp_path / "c2.txt").write_text("dog\n")
    with pytest.raises(DatasetError, match=r"class folders \['cat'\] .* not in the --classes file"):
        open_dataset(tmp_path / "d", classes=read_classes_file(tmp_path / "c2.txt"))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest(tmp_path: Path, kind: str) -> None:
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    rows = [{"path": "imgs/a.png", "label": "cat"}, {"path": "imgs/b.png", "label": "dog", "id": "b-1"}]
    if kind == "csv":
        m = tmp_path / "m.csv"
        m.write_text("path,label,id\nimgs/a.png,cat,\nimgs/b.png,dog,b-1\n")
    else:
        m = tmp_path / "m.jsonl"
        m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = open_dataset(m)
    assert ds.format == "manifest" and ds.classes == ["cat", "dog"]
    assert ds.sample_ids == ["b-1", "imgs/a.png"] and ds.labels == [1, 0]
    assert ds.paths[1] == str(tmp_path / "imgs" / "a.png")


def test_manifest_errors(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        open_dataset(m)
    m.write_text("path\na.png\na.png\n")
    with pytest.raises(DatasetError, match="twice"):
        open_dataset(m)
    j = tmp_path / "m.jsonl"
    j.write_text('{"path": "a.png"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"m.jsonl:2 is not valid JSON"):
        open_dataset(j)
    m.write_text("path,label\na.png,zebra\n")
    (tmp_path / "c.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match="label 'zebra' is not a known class"):
        open_dataset(m, classes=read_classes_file(tmp_path / "c.txt"))


def test_bad_dataset_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        open_dataset(tmp_path / "empty")
    _png(tmp_path / "mixed" / "a.png")
    _png(tmp_path / "mixed" / "sub" / "b.png")
    with pytest.raises(DatasetError, match="both images and sub-folders; pass --format"):
        open_dataset(tmp_path / "mixed")
    assert len(open_dataset(tmp_path / "mixed", format="folder")) == 2  # recursive, unlabelled
    with pytest.raises(UsageError, match="unknown dataset format 'coco'; choose from"):
        open_dataset(tmp_path / "mixed", format="coco")


def test_classes_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_classes_file(tmp_path / "none.txt")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(UsageError, match=r"repeats class names \['a'\]"):
        read_classes_file(tmp_path / "dup.txt")
