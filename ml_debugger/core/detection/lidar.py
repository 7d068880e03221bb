"""Point-cloud frames for 3D detection: two dataset formats and the point loader.

Boxes are ``[x, y, z, dx, dy, dz, yaw]`` in the LiDAR frame: centre, size along the box's own
axes (length along x at yaw 0), rotation about +z counter-clockwise from +x (radians).

**kitti** — a folder with ``velodyne/NNNNNN.bin`` (float32 x, y, z, intensity per point) and,
when labelled, ``label_2/NNNNNN.txt`` in KITTI's camera frame with ``calib/NNNNNN.txt``. Each
label line is ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y`` (a 16th
score field is allowed); ``DontCare`` lines are skipped. The class order (the model's output
order) comes from ``--classes FILE`` or a ``classes.txt`` in the folder; without either it is
the label names sorted, with a note. The camera-to-LiDAR conversion is KITTI's (and
OpenPCDet's): the location (bottom centre, camera frame) goes through the inverse
of ``R0_rect · Tr_velo_to_cam``, the centre is raised by h/2, (dx, dy, dz) = (l, w, h) and
yaw = −(rotation_y + π/2). Labels already in the LiDAR frame go in ``label_lidar/NNNNNN.txt``
as ``class x y z dx dy dz yaw`` lines (no calib needed; a 9th field, a score, is ignored).

**npy** — a folder of ``*.npy`` arrays ``[N, 3+]`` (x, y, z, then any features) and, when
labelled, ``boxes.json`` mapping each file name to ``[[x, y, z, dx, dy, dz, yaw, label], ...]``
(label a class name, or an index into ``classes.txt``).

Refused with the file (and line): a ``.bin`` whose size is not a multiple of 16 bytes, a label
line with the wrong number of fields or a box with a non-positive size, a missing calib file.
At load time points that are NaN or outside ``pc_range`` are dropped; a frame left with no
point is skipped with that reason.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_debugger.core.datasets import read_classes_file
from ml_debugger.errors import DatasetError, UsageError

BOX3D_SCHEMA = {
    "sample_id": pl.String,
    "box": pl.Int32,
    "cls": pl.Int32,
    **{k: pl.Float32 for k in ("x", "y", "z", "dx", "dy", "dz", "yaw")},
}


@dataclass(frozen=True)
class FrameDataset:
    root: Path
    format: str
    sample_ids: list[str]
    paths: list[str]
    classes: list[str]
    labelled: bool
    boxes: pl.DataFrame  # BOX3D_SCHEMA
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)


def load_points(path: str, pc_range: tuple[float, ...] | None = None) -> tuple[np.ndarray, int]:
    """Points ``[N, 4+]`` float32 of one frame and how many were dropped (NaN, or outside
    ``pc_range`` = ``(x_min, y_min, z_min, x_max, y_max, z_max)``)."""
    if path.endswith(".bin"):
        size = os.path.getsize(path)
        if size % 16:
            raise DatasetError(f"{path}: {size} bytes is not a multiple of 16 (float32 x, y, z, intensity per point)")
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    else:
        pts = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise DatasetError(f"{path}: an array of shape {pts.shape}, not [N, 3+] points (x, y, z, ...)")
    keep = keep_points(pts[:, :3], pc_range)
    return pts[keep], int((~keep).sum())


def keep_points(xyz: np.ndarray, pc_range: tuple[float, ...] | None) -> np.ndarray:
    """Which points ``[N, 3]`` are finite and inside ``pc_range`` (min inclusive, max exclusive)."""
    keep = np.isfinite(xyz).all(1)
    if pc_range is not None:
        lo, hi = np.asarray(pc_range[:3]), np.asarray(pc_range[3:])
        keep &= ((xyz >= lo) & (xyz < hi)).all(1)
    return keep


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """A KITTI calib file: ``R0_rect`` and ``Tr_velo_to_cam`` as 4×4 matrices (``velo_to_rect`` =
    their product) and ``P2`` (3×4) when present."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; KITTI camera-frame labels need it (or give label_lidar/ labels)")
    rows = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, values = line.split(":", 1)
            try:
                rows[key.strip()] = np.array([float(v) for v in values.split()])
            except ValueError:
                raise DatasetError(f"{path}: {key.strip()} holds values that are not numbers") from None
    try:
        r0 = np.eye(4)
        r0[:3, :3] = rows["R0_rect"].reshape(3, 3)
        tr = np.eye(4)
        tr[:3, :4] = rows["Tr_velo_to_cam"].reshape(3, 4)
    except (KeyError, ValueError):
        raise DatasetError(f"{path} lacks R0_rect or Tr_velo_to_cam (3×3 and 3×4 numbers)") from None
    out = {"velo_to_rect": r0 @ tr}
    if "P2" in rows and rows["P2"].size == 12:
        out["P2"] = rows["P2"].reshape(3, 4)
    return out


def _calib(path: Path) -> np.ndarray:
    """``(R0_rect · Tr_velo_to_cam)⁻¹`` as a 4×4 matrix, from a KITTI calib file."""
    return np.linalg.inv(read_calib(path)["velo_to_rect"])


def prediction_lines(boxes: list[dict[str, Any]], calib: Path | None) -> str:
    """KITTI-format prediction lines for one frame's boxes (dicts with predicted, score and
    x, y, z, dx, dy, dz, yaw in the LiDAR frame).

    With a calib file: KITTI's result format in the camera frame, ``type -1 -1 alpha x1 y1 x2 y2
    h w l x y z rotation_y score`` (the 2D box is the 3D box's corners projected by P2; 0 0 0 0
    without P2), the inverse of how the labels are read. Without one: ``label_lidar`` lines plus
    the score, ``class x y z dx dy dz yaw score``, which mldbg reads back as labels."""
    if calib is None:
        return "".join(
            f"{b['predicted']} " + " ".join(f"{b[k]:.4f}" for k in ("x", "y", "z", "dx", "dy", "dz", "yaw", "score"))
            + "\n"
            for b in boxes
        )  # fmt: skip
    cal = read_calib(calib)
    lines = []
    for b in boxes:
        bottom = cal["velo_to_rect"] @ np.array([b["x"], b["y"], b["z"] - b["dz"] / 2, 1.0])
        ry = math.remainder(-b["yaw"] - math.pi / 2, 2 * math.pi)
        alpha = math.remainder(-math.atan2(-b["y"], b["x"]) + ry, 2 * math.pi)
        x1 = y1 = x2 = y2 = 0.0
        if "P2" in cal:
            from ml_debugger.core.detection.rotated import corners_3d

            c = corners_3d(np.array([[b[k] for k in ("x", "y", "z", "dx", "dy", "dz", "yaw")]]))[0]
            cam = cal["P2"] @ (cal["velo_to_rect"] @ np.c_[c, np.ones(8)].T)
            front = cam[2] > 1e-6
            if front.any():
                uv = cam[:2, front] / cam[2, front]
                x1, y1 = uv.min(1)
                x2, y2 = uv.max(1)
        values = (alpha, x1, y1, x2, y2, b["dz"], b["dy"], b["dx"], *bottom[:3], ry, b["score"])
        lines.append(f"{b['predicted']} -1 -1 " + " ".join(f"{v:.4f}" for v in values) + "\n")
    return "".join(lines)


def _check_box(box: list[float], where: str) -> None:
    if not all(math.isfinite(v) for v in box):
        raise DatasetError(f"{where}: a box value is not a finite number: {box}")
    if min(box[3:6]) <= 0:
        raise DatasetError(f"{where}: box size {box[3:6]} is not positive; fix or remove the box")


def _kitti_labels(root: Path, frame: str) -> list[tuple[str, list[float]]]:
    lidar = root / "label_lidar" / f"{frame}.txt"
    out: list[tuple[str, list[float]]] = []
    if lidar.is_file():
        for n, line in enumerate(lidar.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (8, 9):
                raise DatasetError(
                    f"{lidar}:{n}: {len(parts)} fields; a LiDAR label line is `class x y z dx dy dz yaw` "
                    "(a 9th, the score, is allowed)"
                )
            box = _floats(parts[1:8], lidar, n)
            _check_box(box, f"{lidar}:{n}")
            out.append((parts[0], box))
        return out
    cam = root / "label_2" / f"{frame}.txt"
    if not cam.is_file():
        return out
    to_lidar = _calib(root / "calib" / f"{frame}.txt")
    for n, line in enumerate(cam.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "DontCare":
            continue
        if len(parts) not in (15, 16):
            raise DatasetError(f"{cam}:{n}: {len(parts)} fields; a KITTI label line has 15 (16 with a score)")
        h, w, length, x, y, z, ry = _floats(parts[8:15], cam, n)
        centre = to_lidar @ np.array([x, y, z, 1.0])
        box = [float(centre[0]), float(centre[1]), float(centre[2]) + h / 2, length, w, h, -(ry + math.pi / 2)]
        _check_box(box, f"{cam}:{n}")
        out.append((parts[0], box))
    return out


def _floats(parts: list[str], path: Path, n: int) -> list[float]:
    try:
        return [float(v) for v in parts]
    except ValueError:
        raise DatasetError(f"{path}:{n}: {' '.join(parts)!r} are not all numbers") from None


def _frame_boxes(labels: dict[str, list[tuple[str, list[float]]]], classes: list[str] | None,
                 where: str) -> tuple[pl.DataFrame, list[str]]:  # fmt: skip
    names = classes if classes is not None else sorted({c for boxes in labels.values() for c, _ in boxes})
    index = {n: i for i, n in enumerate(names)}
    rows: dict[str, list[Any]] = {k: [] for k in BOX3D_SCHEMA}
    for sid, boxes in labels.items():
        for k, (cls, box) in enumerate(boxes):
            if cls not in index:
                raise DatasetError(f"{where}: class {cls!r} of {sid} is not among the classes {names}; add it")
            for key, value in zip(BOX3D_SCHEMA, (sid, k, index[cls], *box), strict=True):
                rows[key].append(value)
    return pl.DataFrame(rows, schema=BOX3D_SCHEMA), names


def kitti(root: Path, classes: list[str] | None) -> FrameDataset:
    velo = root / "velodyne"
    if not velo.is_dir():
        raise DatasetError(f"{root} has no velodyne/ folder of .bin frames (KITTI layout)")
    ids = sorted(f for f in os.listdir(velo) if f.endswith(".bin"))
    labels = {sid: _kitti_labels(root, sid[:-4]) for sid in ids}
    labelled = (root / "label_2").is_dir() or (root / "label_lidar").is_dir()
    classes = _classes(root, classes)
    notes = []
    if labelled:
        boxes, names = _frame_boxes(labels, classes, str(root))
        if classes is None:
            notes.append(f"class order {names} is the label names sorted; put classes.txt in {root} or pass "
                         "--classes FILE if the model's output order differs")  # fmt: skip
    else:
        boxes, names = pl.DataFrame(schema=BOX3D_SCHEMA), classes or []
    return FrameDataset(root, "kitti", ids, [str(velo / s) for s in ids], names, labelled, boxes, notes)


def _classes(root: Path, classes: list[str] | None) -> list[str] | None:
    """``classes`` if given, else the dataset's own ``classes.txt`` (the model's output order), else None."""
    if classes is None and (root / "classes.txt").is_file():
        return read_classes_file(root / "classes.txt")
    return classes


def npy(root: Path, classes: list[str] | None) -> FrameDataset:
    ids = sorted(f for f in os.listdir(root) if f.endswith(".npy"))
    names = _classes(root, classes)
    doc_path = root / "boxes.json"
    labels: dict[str, list[tuple[str, list[float]]]] = {}
    if doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{doc_path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
        unknown = sorted(set(doc) - set(ids))
        if unknown:
            raise DatasetError(f"{doc_path} lists {len(unknown)} frame(s) not in {root}, e.g. {unknown[0]}")
        for sid, boxes in doc.items():
            out = []
            for k, b in enumerate(boxes):
                where = f"{doc_path}: {sid}[{k}]"
                if not isinstance(b, list) or len(b) != 8:
                    raise DatasetError(f"{where}: {b!r} is not [x, y, z, dx, dy, dz, yaw, label]")
                label = b[7]
                if isinstance(label, int):
                    if names is None or not 0 <= label < len(names):
                        raise DatasetError(f"{where}: label {label} needs classes.txt (or --classes) with that index")
                    label = names[label]
                box = [float(v) for v in b[:7]]
                _check_box(box, where)
                out.append((str(label), box))
            labels[sid] = out
    labelled = doc_path.is_file()
    boxes, names = _frame_boxes({s: labels.get(s, []) for s in ids}, names, str(doc_path)) if labelled else (
        pl.DataFrame(schema=BOX3D_SCHEMA), names or [])  # fmt: skip
    return FrameDataset(root, "npy", ids, [str(root / s) for s in ids], names, labelled, boxes)


FORMATS = {"kitti": kitti, "npy": npy}


def open_frames(
    path: str | os.PathLike[str], *, format: str | None = None, classes: list[str] | None = None
) -> FrameDataset:
    """List a point-cloud dataset (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset {root} is not a folder of frames")
    fmt = format or ("kitti" if (root / "velodyne").is_dir() else "npy")
    if fmt not in FORMATS:
        raise UsageError(f"unknown 3D format {fmt!r}; choose from: {', '.join(FORMATS)}")
    ds = FORMATS[fmt](root.absolute(), classes)
    if not len(ds):
        raise DatasetError(f"dataset {root} holds no frames (.bin under velodyne/, or .npy)")
    return ds
