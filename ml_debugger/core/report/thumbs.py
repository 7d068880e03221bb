"""Thumbnails embedded in the report as data URIs: downscaled, so a gallery stays small."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Longest side of a thumbnail in pixels; tiny images are enlarged to it without smoothing.
THUMB = 96


def locate(path: str, db_path: Path) -> Path | None:
    """The image file: ``path`` as stored, else relative to the database's folder (for stores
    moved together with their relative dataset paths). None when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (db_path.parent / p).is_file():
        return db_path.parent / p
    return None


def data_uri(
    path: str, db_path: Path, size: int = THUMB, boxes: list[tuple[tuple[float, ...], str]] | None = None
) -> str | None:
    """A ``data:image/...;base64,`` thumbnail of the image, or None when it cannot be read;
    ``boxes`` (xyxy in the image's pixels, colour) are drawn on it."""
    file = locate(path, db_path)
    if file is None:
        return None
    try:
        with Image.open(file) as im:
            im.load()
            img = im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    scale = size / max(img.size)
    tiny = max(img.size) < size // 2
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(new, Image.Resampling.NEAREST if tiny else Image.Resampling.LANCZOS)
    if boxes:
        from PIL import ImageDraw

        img = img.convert("RGB")
        draw = ImageDraw.Draw(img)
        for xyxy, colour in boxes:
            draw.rectangle([v * scale for v in xyxy], outline=colour, width=2)
    buf = io.BytesIO()
    if tiny or img.mode == "L" or boxes:
        img.save(buf, format="PNG", optimize=True)
        kind = "png"
    else:
        img.save(buf, format="JPEG", quality=80)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# Bird's-eye-view thumbnails of LiDAR frames: a square window of WINDOW metres around the box.
WINDOW = 24.0


def bev_uri(path: str, db_path: Path, box: tuple[float, ...], ground_truth: list[tuple[float, ...]],
            size: int = 160) -> str | None:  # fmt: skip
    """A bird's-eye-view PNG of the frame's points around ``box`` ``(x, y, z, dx, dy, dz, yaw)``:
    x (forward) up, y (left) left; points grey, the box red, ground-truth boxes green. None
    when the frame cannot be read."""
    import numpy as np
    from PIL import ImageDraw

    from ml_debugger.core.detection.lidar import load_points
    from ml_debugger.core.detection.rotated import corners_3d

    file = locate(path, db_path)
    if file is None:
        return None
    try:
        points, _ = load_points(str(file))
    except Exception:
        return None
    res = WINDOW / size
    cx, cy = box[0], box[1]

    def pixels(xy: np.ndarray) -> np.ndarray:  # [n, 2] metres -> [n, 2] (column, row)
        return np.stack([(cy + WINDOW / 2 - xy[:, 1]) / res, (cx + WINDOW / 2 - xy[:, 0]) / res], 1)

    px = pixels(points[:, :2]).astype(np.int64)
    inside = (px >= 0).all(1) & (px < size).all(1)
    canvas = np.full((size, size), 255, dtype=np.uint8)
    canvas[px[inside, 1], px[inside, 0]] = 90
    img = Image.fromarray(canvas).convert("RGB")
    draw = ImageDraw.Draw(img)
    for b, colour in [*((g, "#1a9850") for g in ground_truth), (box, "#d73027")]:
        corners = pixels(corners_3d(np.array([b]))[0, :4, :2])
        draw.polygon([tuple(c) for c in corners.tolist()], outline=colour, width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
