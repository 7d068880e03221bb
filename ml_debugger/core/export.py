"""Export a selection as a manifest for labelers: one writer per format, in the ``WRITERS`` registry.

Every row: rank, sample_id, path (absolute), zone, error_proba, confidence, predicted (class
name), error_code (labelled runs), run, result, selection. Files are written to a temporary
file next to the target and renamed into place, so a failed export never leaves half a
manifest; ``--copy-to`` copies (or links) the images themselves, keeping relative paths.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import polars as pl

from ml_debugger import __version__
from ml_debugger.core.detection import DETECTION_TASKS
from ml_debugger.core.query import candidates
from ml_debugger.core.store import Store
from ml_debugger.errors import UsageError

COLUMNS = (
    "rank",
    "sample_id",
    "path",
    "zone",
    "error_proba",
    "confidence",
    "predicted",
    "error_code",
    "run",
    "result",
    "selection",
)


@dataclass(frozen=True)
class Manifest:
    """A selection's rows (``COLUMNS``) and its header; for a detection run also the selected
    images' kept boxes with their scores, their ground truth (labelled runs), sizes and classes."""

    header: dict[str, Any]
    rows: pl.DataFrame
    boxes: pl.DataFrame | None = None
    gt: pl.DataFrame | None = None
    classes: list[str] | None = None
    task: str = "classification"
    dataset: str | None = None  # the run's dataset folder (KITTI export reads its calib/)

    @property
    def box_columns(self) -> tuple[str, ...]:
        return BOX_COLUMNS_3D if self.task == "detection3d" else BOX_COLUMNS


# What each box carries into json/jsonl/coco/labelstudio exports of a detection selection.
BOX_COLUMNS = ("box", "x1", "y1", "x2", "y2", "predicted", "score", "error_proba", "det_error_proba",
               "cls_error_proba", "zone", "error_code")  # fmt: skip
# 3D boxes: centre, size, yaw (LiDAR frame, metres, radians) and the points inside instead of pixels.
BOX_COLUMNS_3D = ("box", "x", "y", "z", "dx", "dy", "dz", "yaw", "n_points", "predicted", "score", "error_proba",
                  "det_error_proba", "cls_error_proba", "zone", "error_code")  # fmt: skip


def _detection_manifest(store: Store, sel: dict[str, Any], run: Any) -> Manifest:
    from ml_debugger.core.detection.strategy import box_frame
    from ml_debugger.core.query import QuerySpec, image_candidates

    info = store.require_result(sel["result"])
    spec = QuerySpec(bbox=(sel["strategy"] or {}).get("bbox"))
    images = image_candidates(store, info, run, spec, [], [], [])
    items = store.selection_items(sel["id"])
    rows = items.join(images, on="sample_id", how="left", maintain_order="left").with_columns(
        pl.lit(sel["run"]).alias("run"), pl.lit(sel["result"]).alias("result"), pl.lit(sel["id"]).alias("selection")
    )
    rows = rows.select(*COLUMNS[:-3], "n_boxes", *COLUMNS[-3:])
    chosen = pl.DataFrame({"sample_id": items["sample_id"]})
    boxes = box_frame(store.read_box_scores(sel["result"], sel["run"]), info.classes).join(chosen, on="sample_id")
    gt = store.read_gt_boxes(sel["run"]).join(chosen, on="sample_id") if run.labelled else None
    return Manifest(_header(sel, rows), rows, boxes, gt, info.classes, run.task, run.dataset_path)


def _header(sel: dict[str, Any], rows: pl.DataFrame) -> dict[str, Any]:
    return {
        "tool": f"mldbg {__version__}",
        "created": datetime.now().isoformat(timespec="seconds"),
        "selection": sel["id"],
        "selected": sel["created"].isoformat(timespec="seconds"),
        "run": sel["run"],
        "result": sel["result"],
        "strategy": sel["strategy"],
        "count": rows.height,
        "zones": dict(rows.group_by("zone").len().sort("zone", nulls_last=True).iter_rows()),
    }


def load_manifest(store: Store, selection: str | None) -> Manifest:
    """The rows of ``selection`` (the newest when None), in rank order."""
    sel = store.require_selection(selection)
    run = store.require_run(sel["run"])
    if run.task in DETECTION_TASKS:
        return _detection_manifest(store, sel, run)
    classes = run.classes
    items = store.selection_items(sel["id"])
    scores = candidates(store, sel["result"], sel["run"], classes, selection=sel["id"]).collect().drop("rank")
    rows = items.join(scores, on="sample_id", how="left", maintain_order="left").with_columns(
        pl.lit(sel["run"]).alias("run"), pl.lit(sel["result"]).alias("result"), pl.lit(sel["id"]).alias("selection")
    )
    missing = [c for c in COLUMNS if c not in rows.columns]
    rows = rows.with_columns(pl.lit(None).alias(c) for c in missing).select(COLUMNS)
    header = _header(sel, rows)
    return Manifest(header, rows)


def write_csv(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """One row per sample; a detection selection adds ``boxes``: each image's (frame's) boxes as
    a JSON array, so the per-box detail survives in a flat file."""
    rows = _with_boxes(m)
    if m.boxes is not None:
        rows = rows.with_columns(pl.col("boxes").list.eval(pl.element().struct.json_encode()).list.join(","))
        rows = rows.with_columns(pl.format("[{}]", pl.col("boxes").fill_null("")).alias("boxes"))
    fh.write(rows.write_csv())


def _with_boxes(m: Manifest) -> pl.DataFrame:
    """The rows, and for a detection selection each image's boxes as a list of objects."""
    if m.boxes is None:
        return m.rows
    per_image = m.boxes.sort("sample_id", "box").group_by("sample_id").agg(pl.struct(m.box_columns).alias("boxes"))
    return m.rows.join(per_image, on="sample_id", how="left", maintain_order="left")


def write_json(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """The header's keys, then ``items``: one object per row (Polars writes the rows)."""
    head = json.dumps(m.header, default=str)
    fh.write(head[:-1] + ', "items": ' + _with_boxes(m).write_json() + "}\n")


def write_jsonl(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    fh.write(_with_boxes(m).write_ndjson())


def write_labelstudio(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """Label Studio tasks: ``data.image``, a ``choices`` prediction of the predicted class scored
    by error_proba (sort by it in the Data Manager), and mldbg's view in ``meta``.

    The labeling config these fit: ``<Image name="image" value="$image"/>`` and
    ``<Choices name="choice" toName="image">`` with the class names. A detection selection
    gives ``rectanglelabels`` instead (see ``_labelstudio_boxes``).
    """
    if m.boxes is not None:
        return _labelstudio_boxes(m, fh, url_prefix)
    image = pl.lit(url_prefix) + pl.col("sample_id") if url_prefix is not None else pl.col("path")
    choice = pl.struct(
        from_name=pl.lit("choice"),
        to_name=pl.lit("image"),
        type=pl.lit("choices"),
        value=pl.struct(choices=pl.concat_list(pl.col("predicted"))),
    )
    prediction = pl.struct(model_version=pl.col("result"), score=pl.col("error_proba"), result=pl.concat_list(choice))
    tasks = m.rows.select(
        pl.struct(image=image, sample_id=pl.col("sample_id")).alias("data"),
        pl.concat_list(prediction).alias("predictions"),
        pl.struct(pl.col("rank", "zone", "error_proba", "confidence", "error_code", "run", "result")).alias("meta"),
    )
    fh.write(tasks.write_json() + "\n")


def _labelstudio_boxes(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """Detection tasks: one ``rectanglelabels`` region per kept box, in percent of the image
    (top-left corner, width, height), its error_proba as the region's score; the task's
    prediction score is the image's aggregated score. Labeling config:
    ``<Image name="image" value="$image"/>`` with ``<RectangleLabels name="label" toName="image">``."""
    assert m.boxes is not None
    regions: dict[str, list[dict[str, Any]]] = {}
    for b in m.boxes.sort("sample_id", "box").to_dicts():
        W, H = float(b["width"]), float(b["height"])
        regions.setdefault(b["sample_id"], []).append(
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": b["width"],
                "original_height": b["height"],
                "image_rotation": 0,
                "score": b["error_proba"],
                "value": {
                    "x": b["x1"] / W * 100,
                    "y": b["y1"] / H * 100,
                    "width": (b["x2"] - b["x1"]) / W * 100,
                    "height": (b["y2"] - b["y1"]) / H * 100,
                    "rotation": 0,
                    "rectanglelabels": [b["predicted"]],
                },
            }
        )
    tasks = []
    for r in m.rows.to_dicts():
        image = url_prefix + r["sample_id"] if url_prefix is not None else r["path"]
        prediction = {
            "model_version": r["result"],
            "score": r["error_proba"],
            "result": regions.get(r["sample_id"], []),
        }
        meta = {k: r[k] for k in ("rank", "zone", "error_proba", "n_boxes", "run", "result")}
        tasks.append({"data": {"image": image, "sample_id": r["sample_id"]}, "predictions": [prediction], "meta": meta})
    fh.write(json.dumps(tasks) + "\n")


def write_coco(m: Manifest, fh: IO[str], url_prefix: str | None) -> None:
    """COCO JSON of the selected images: ``images`` (file_name = sample_id), ``categories``,
    ``annotations`` (the ground truth of a labelled run, else empty) and ``predictions``: the
    model's kept boxes in COCO's results form (image_id, category_id, bbox [x, y, w, h], score)
    plus mldbg's error_proba, det/cls error probabilities, zone and error code; ``info`` holds
    the selection's header."""
    if m.boxes is None or m.classes is None:
        raise UsageError("--format coco exports detection selections; use csv, json, jsonl or labelstudio here")
    sizes = m.boxes.select("sample_id", "width", "height").unique("sample_id")
    image_rows = m.rows.select("rank", "sample_id").join(sizes, on="sample_id", how="left", maintain_order="left")
    ids = {s: i + 1 for i, s in enumerate(image_rows["sample_id"])}
    images = [
        {"id": ids[r["sample_id"]], "file_name": r["sample_id"], "width": r["width"], "height": r["height"]}
        for r in image_rows.to_dicts()
    ]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(m.classes)]
    name_to_id = {n: i + 1 for i, n in enumerate(m.classes)}
    preds = [
        {"image_id": ids[b["sample_id"]], "category_id": name_to_id[b["predicted"]],
         "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]], "score": b["score"],
         **{k: b[k] for k in ("error_proba", "det_error_proba", "cls_error_proba", "zone", "error_code")}}
        for b in m.boxes.sort("sample_id", "box").to_dicts()
    ]  # fmt: skip
    anns = []
    if m.gt is not None:
        for k, g in enumerate(m.gt.sort("sample_id", "box").to_dicts(), start=1):
            w, h = g["x2"] - g["x1"], g["y2"] - g["y1"]
            anns.append({"id": k, "image_id": ids[g["sample_id"]], "category_id": g["cls"] + 1,
                         "bbox": [g["x1"], g["y1"], w, h], "area": w * h, "iscrowd": int(g["crowd"])})  # fmt: skip
    doc = {"info": m.header, "images": images, "categories": cats, "annotations": anns, "predictions": preds}
    fh.write(json.dumps(doc, default=str) + "\n")


WRITERS: dict[str, Callable[[Manifest, IO[str], str | None], None]] = {
    "csv": write_csv,
    "json": write_json,
    "jsonl": write_jsonl,
    "labelstudio": write_labelstudio,
    "coco": write_coco,
}


def write_kitti(m: Manifest, dest: Path, *, force: bool = False) -> None:
    """One KITTI prediction file per selected frame (``<frame>.txt``, see
    ``lidar.prediction_lines``: camera frame when the dataset has ``calib/<frame>.txt``), written
    into a temporary folder beside ``dest`` and renamed into place."""
    from ml_debugger.core.detection.lidar import prediction_lines

    assert m.boxes is not None
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not force)):
        raise UsageError(f"--out {dest} exists and is not an empty folder; choose a new folder or pass --force")
    if not dest.parent.is_dir():
        raise UsageError(f"output directory {dest.parent} does not exist; create it or choose another --out")
    per_frame = {sid: list(g.iter_rows(named=True)) for (sid,), g in m.boxes.sort("box").group_by("sample_id")}
    root = Path(m.dataset) if m.dataset else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for sid in m.rows["sample_id"]:
            stem = Path(sid).stem
            calib = root / "calib" / f"{stem}.txt" if root is not None else None
            text = prediction_lines(per_frame.get(sid, []), calib if calib is not None and calib.is_file() else None)
            (tmp / f"{stem}.txt").write_text(text, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write through a temporary file in the same directory, then rename it into place."""
    if not path.parent.is_dir():
        raise UsageError(f"output directory {path.parent} does not exist; create it or choose another --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_images(rows: pl.DataFrame, dest: Path, *, link: bool = False, force: bool = False) -> int:
    """Copy (or symlink) each row's image to ``dest/<sample_id>``; refuses paths leaving ``dest``."""
    if dest.exists() and any(dest.iterdir()) and not force:
        raise UsageError(f"--copy-to {dest} is not empty; choose an empty folder or pass --force")
    root = dest.resolve()
    plan = []
    for sid, src in rows.select("sample_id", "path").iter_rows():
        target = (root / sid).resolve()
        if not target.is_relative_to(root):
            raise UsageError(f"sample {sid!r} would be written outside {dest}; refusing the copy")
        if not Path(src).is_file():
            raise UsageError(f"image {src} of sample {sid!r} no longer exists; nothing was copied")
        plan.append((Path(src), target))
    for src, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            target.symlink_to(src.resolve())
        else:
            shutil.copy2(src, target)
    return len(plan)


@dataclass(frozen=True)
class ExportSummary:
    selection: str
    format: str
    out: str
    rows: int
    copied: int


def export(
    selection: str | None = None,
    *,
    db: str | Path | None = None,
    fmt: str = "csv",
    out: str | None = None,
    stream: IO[str] | None = None,
    url_prefix: str | None = None,
    copy_to: str | Path | None = None,
    link: bool = False,
    force: bool = False,
) -> ExportSummary:
    """Write ``selection`` (the newest when None) as ``fmt`` to ``out`` (``-``: ``stream``)."""
    if fmt not in WRITERS and fmt != "kitti":
        raise UsageError(f"unknown export format {fmt!r}; choose from: {', '.join(WRITERS)}, kitti")
    if out is None and copy_to is None:
        raise UsageError("say where to write: --out FILE (or - for stdout) and/or --copy-to DIR")
    with Store(db, read_only=True) as store:
        manifest = load_manifest(store, selection)
    if manifest.task == "detection3d" and fmt in ("coco", "labelstudio"):
        raise UsageError(f"--format {fmt} is for images; export 3D frames as kitti, jsonl, json or csv")
    if fmt == "kitti":
        if manifest.task != "detection3d" or manifest.boxes is None:
            raise UsageError("--format kitti exports 3D detection selections; use csv, json or jsonl here")
        if out is None or out == "-":
            raise UsageError("--format kitti writes one .txt per frame: give --out DIR (a new or empty folder)")
        write_kitti(manifest, Path(out), force=force)
        copied = copy_images(manifest.rows, Path(copy_to), link=link, force=force) if copy_to else 0
        return ExportSummary(manifest.header["selection"], fmt, out, manifest.rows.height, copied)
    write = WRITERS[fmt]
    if out == "-":
        if stream is None:
            raise UsageError("--out - needs an output stream")
        write(manifest, stream, url_prefix)
    elif out is not None:
        write_atomic(Path(out), lambda fh: write(manifest, fh, url_prefix))
    copied = copy_images(manifest.rows, Path(copy_to), link=link, force=force) if copy_to else 0
    return ExportSummary(manifest.header["selection"], fmt, out or "", manifest.rows.height, copied)
