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
