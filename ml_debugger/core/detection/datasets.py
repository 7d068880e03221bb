"""Dataset formats for 2D detection: COCO JSON, YOLO txt, and an unlabelled image folder.

Each turns a path into a :class:`DetectionDataset`: the images (``sample_id`` = path relative to
the image root, as for classification), the class list, and the ground-truth boxes as one Polars
frame in pixels, ``[x1, y1, x2, y2]``. Problems are reported, never guessed around silently:

- a file that does not parse: its name, line and column (JSON) or line (YOLO) and the field;
- a category id missing from ``categories``, a YOLO class index past the names: refused;
- boxes past the image border are **clipped** to it, and boxes with no area (before or after
  clipping) are **dropped**; both are counted and the first few named in ``notes``;
- YOLO: a label file without an image is refused; an image without a label file has no objects
  (Ultralytics' convention for background images), and how many there are goes in ``notes``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ml_debugger.core.datasets import _walk_images, read_classes_file
from ml_debugger.errors import DatasetError, UsageError

GT_SCHEMA = {
    "sample_id": pl.String,
    "box": pl.Int32,  # the box's index within its image
    "cls": pl.Int32,
    "x1": pl.Float32,
    "y1": pl.Float32,
    "x2": pl.Float32,
    "y2": pl.Float32,
    "crowd": pl.Boolean,
}
# How many offending boxes a note names before it only counts.
_NAMED = 3


@dataclass(frozen=True)
class DetectionDataset:
    root: Path
    format: str
    sample_ids: list[str]
    paths: list[str]
    classes: list[str]
    labelled: bool
    boxes: pl.DataFrame  # GT_SCHEMA; empty when unlabelled
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class _Boxes:
    """Collects ground-truth boxes, clipping and dropping as the module docstring says."""

    where: str
    rows: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in GT_SCHEMA})
    clipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    per_image: dict[str, int] = field(default_factory=dict)

    def add(self, sid: str, cls: int, xyxy: tuple[float, float, float, float], size: tuple[int, int] | None,
            crowd: bool, name: str) -> None:  # fmt: skip
        x1, y1, x2, y2 = xyxy
        if not (x2 > x1 and y2 > y1):
            self.dropped.append(name)
            return
        if size is not None:
            w, h = size
            c = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            if c != (x1, y1, x2, y2):
                self.clipped.append(name)
                x1, y1, x2, y2 = c
                if not (x2 > x1 and y2 > y1):
                    self.dropped.append(name)
                    return
        k = self.per_image.get(sid, 0)
        self.per_image[sid] = k + 1
        for key, value in zip(GT_SCHEMA, (sid, k, cls, x1, y1, x2, y2, crowd), strict=True):
            self.rows[key].append(value)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=GT_SCHEMA)

    def notes(self) -> list[str]:
        out = []
        for what, items in (("clipped to the image border", self.clipped), ("dropped (no area)", self.dropped)):
            if items:
                named = ", ".join(items[:_NAMED]) + (", …" if len(items) > _NAMED else "")
                out.append(f"{self.where}: {len(items):,} box(es) {what}: {named}")
        return out


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); fix the annotation file") from None
    except OSError as e:
        raise DatasetError(f"cannot read annotation file {path}: {e.strerror}") from None


def _need(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{where} has no {key!r}; every entry needs one (COCO format)")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DatasetError(f"{where}: {key!r} is {value!r}, not a {getattr(kind, '__name__', kind)}")
    return value


def coco(root: Path, annotations: Path | None, classes: list[str] | None) -> DetectionDataset:
    """COCO JSON: ``images`` (id, file_name, width, height), ``annotations`` (image_id,
    category_id, bbox [x, y, w, h], iscrowd), ``categories`` (id, name; classes in id order)."""
    if annotations is None:
        raise UsageError("--format coco needs --annotations FILE (the COCO JSON of the images)")
    doc = _load_json(annotations)
    if not isinstance(doc, dict):
        raise DatasetError(f"{annotations} is not a COCO object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"{annotations} has no {key!r} list; a COCO file needs images and categories")
    cats = sorted(doc["categories"], key=lambda c: _need(c, "id", f"{annotations}: a category", int))
    names = [str(_need(c, "name", f"{annotations}: category {c['id']}", (str, int))) for c in cats]
    if classes is not None and classes != names:
        raise UsageError(
            f"--classes lists {len(classes)} classes but {annotations} has categories {names[:10]}; "
            "leave --classes out (the categories give the classes) or make them agree"
        )
    index = {int(c["id"]): i for i, c in enumerate(cats)}
    images: dict[int, tuple[str, tuple[int, int]]] = {}
    for k, im in enumerate(doc["images"]):
        where = f"{annotations}: images[{k}]"
        iid = _need(im, "id", where, int)
        name = str(_need(im, "file_name", where, str)).replace("\\", "/")
        size = (_need(im, "width", where, (int, float)), _need(im, "height", where, (int, float)))
        images[iid] = (name, (int(size[0]), int(size[1])))
    missing = [n for n, _ in images.values() if not (root / n).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing):,} image(s) listed in {annotations} are not under {root}, e.g. {missing[0]}; "
            "point the dataset path at the folder the file_name entries are relative to"
        )
    boxes = _Boxes(str(annotations))
    for k, a in enumerate(doc.get("annotations") or []):
        where = f"{annotations}: annotations[{k}]"
        iid = _need(a, "image_id", where, int)
        if iid not in images:
            raise DatasetError(f"{where}: image_id {iid} is not in images; add the image or drop the annotation")
        cid = _need(a, "category_id", where, int)
        if cid not in index:
            raise DatasetError(
                f"{where}: category_id {cid} is not in categories (ids: {sorted(index)[:20]}); add the category"
            )
        bbox = _need(a, "bbox", where, list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DatasetError(f"{where}: bbox {bbox!r} is not [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        name, size = images[iid]
        boxes.add(name, index[cid], (x, y, x + w, y + h), size, bool(a.get("iscrowd", 0)), f"id {a.get('id', k)}")
    ids = sorted(n for n, _ in images.values())
    return DetectionDataset(
        root, "coco", ids, [os.path.join(str(root), s) for s in ids], names, True, boxes.frame(), boxes.notes()
    )


def _yolo_names(root: Path, classes: list[str] | None) -> list[str]:
    if classes is not None:
        return classes
    for candidate in (root / "classes.txt", root.parent / "classes.txt"):
        if candidate.is_file():
            return read_classes_file(candidate)
    for candidate in (root / "data.yaml", root.parent / "data.yaml"):
        if candidate.is_file():
            import yaml

            try:
                doc = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise DatasetError(f"{candidate} is not valid YAML: {e}") from None
            names = doc.get("names") if isinstance(doc, dict) else None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise DatasetError(f"{candidate} has no 'names' list or mapping; add the class names")
    raise UsageError(f"no class names for the YOLO dataset {root}: add classes.txt or data.yaml, or pass --classes")


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read the size of image {path}: {e}; remove or replace it") from None


def yolo(root: Path, annotations: Path | None, classes: list[str] | None) -> DetectionDataset:
    """YOLO txt: ``images/…`` beside ``labels/…`` (or label files next to the images), one
    ``class cx cy w h`` line per box, normalised to the image size; names from classes.txt or
    data.yaml (in the dataset folder or its parent) or --classes."""
    names = _yolo_names(root, classes)
    img_root = root / "images" if (root / "images").is_dir() else root
    lbl_root = annotations or (root / "labels" if (root / "labels").is_dir() else img_root)
    ids = _walk_images(img_root)
    stems = {os.path.splitext(s)[0]: s for s in ids}
    labels = [
        os.path.relpath(os.path.join(d, f), lbl_root).replace(os.sep, "/")
        for d, _, files in os.walk(lbl_root)
        for f in files
        if f.endswith(".txt") and f != "classes.txt"
    ]
    orphans = sorted(lbl for lbl in labels if lbl[:-4] not in stems)
    if orphans:
        raise DatasetError(
            f"{len(orphans):,} YOLO label file(s) in {lbl_root} have no image in {img_root}, e.g. {orphans[0]}; "
            "add the images or remove the label files"
        )
    boxes = _Boxes(str(lbl_root))
    for lbl in sorted(labels):
        sid = stems[lbl[:-4]]
        file = lbl_root / lbl
        size = _image_size(os.path.join(str(img_root), sid))
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5:
                raise DatasetError(f"{file}:{n}: {len(parts)} fields; a YOLO box line is `class cx cy w h`")
            try:
                cls, vals = int(parts[0]), [float(v) for v in parts[1:]]
            except ValueError:
                raise DatasetError(f"{file}:{n}: {line.strip()!r} is not `class cx cy w h` numbers") from None
            if not 0 <= cls < len(names):
                raise DatasetError(f"{file}:{n}: class {cls} is outside the {len(names)} class names; fix the label")
            cx, cy, w, h = vals[0] * size[0], vals[1] * size[1], vals[2] * size[0], vals[3] * size[1]
            boxes.add(sid, cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), size, False, f"{lbl}:{n}")
    notes = boxes.notes()
    unlabelled = len(ids) - len(labels)
    if unlabelled:
        notes.append(f"{unlabelled:,} image(s) without a label file: no objects (background images)")
    return DetectionDataset(
        root, "yolo", ids, [os.path.join(str(img_root), s) for s in ids], names, True, boxes.frame(), notes
    )


def folder(root: Path, annotations: Path | None, classes: list[str] | None) -> DetectionDataset:
    """Unlabelled images (any depth); --classes names the model's classes."""
    ids = _walk_images(root)
    return DetectionDataset(
        root, "folder", ids, [os.path.join(str(root), s) for s in ids], list(classes or []), False,
        pl.DataFrame(schema=GT_SCHEMA),
    )  # fmt: skip


FORMATS: dict[str, Callable[[Path, Path | None, list[str] | None], DetectionDataset]] = {
    "coco": coco,
    "yolo": yolo,
    "folder": folder,
}


def detect_format(root: Path, annotations: Path | None) -> str:
    if annotations is not None and annotations.suffix.lower() == ".json":
        return "coco"
    if (root / "labels").is_dir() or any(f.endswith(".txt") and f != "classes.txt" for f in os.listdir(root)):
        return "yolo"
    return "folder"


def open_detection_dataset(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    annotations: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
) -> DetectionDataset:
    """List a detection dataset (see the module docstring for the formats and the checks)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset {root} is not a folder of images; pass the image folder (and --annotations)")
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown detection format {format!r}; choose from: {', '.join(FORMATS)}")
    ann = Path(annotations) if annotations is not None else None
    if ann is not None and not ann.exists():
        raise UsageError(f"--annotations {ann} does not exist")
    dataset = FORMATS[format or detect_format(root, ann)](root.absolute(), ann, classes)
    if not len(dataset):
        raise DatasetError(f"dataset {root} holds no images; check the path")
    return dataset
