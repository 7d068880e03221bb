"""Image decoding (Pillow) and preprocessing (torch ops: resize, centre crop, normalise).

No torchvision: its wheels pull a multi-GB CUDA torch on CPU machines, and the few ops needed
here are a handful of lines of ``torch.nn.functional``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ml_debugger.errors import UsageError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input tensor ``[channels, size, size]``.

    The shorter side is resized to ``image_size`` (bilinear, antialiased), the centre square is
    cropped, values are scaled to [0, 1], then ``(x - mean) / std`` per channel.
    """

    image_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise UsageError(f"--image-size {self.image_size} must be a positive number of pixels, e.g. 224")
        if self.channels not in (1, 3):
            raise UsageError(f"--channels {self.channels} is not supported; choose 1 (grayscale) or 3 (RGB)")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise UsageError(
                    f"--{name} has {len(values)} values but the model takes {self.channels} channels; "
                    f"give 1 or {self.channels} comma-separated values"
                )
        if any(s <= 0 for s in self.std):
            raise UsageError(f"--std {','.join(map(str, self.std))} must be positive")

    def to_dict(self) -> dict[str, object]:
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """Parse ``"0.5"`` or ``"0.485,0.456,0.406"`` into a tuple of floats."""
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a comma-separated list of numbers, e.g. 0.5 or 0.485,0.456,0.406"
        ) from None
    if not values:
        raise UsageError(f"{option} is empty; give e.g. 0.5 or 0.485,0.456,0.406")
    return values


def decode(path: str, channels: int) -> torch.Tensor:
    """Decode an image file into a float tensor ``[channels, H, W]`` in [0, 1].

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are handled; EXIF
    orientation is applied. Raises OSError/ValueError for unreadable or truncated files.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        opened.load()  # decode fully now, so truncated files fail here
        im: Image.Image = ImageOps.exif_transpose(opened)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            if im.mode.startswith("I;16"):
                scale = 65535.0
            elif im.mode == "I":  # 32-bit integers: 16-bit data unless every value fits in 8 bits
                scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
            else:  # "F": already floats, taken as [0, 1]
                scale = 1.0
            gray = torch.from_numpy(np.clip(arr / scale, 0.0, 1.0))
            return gray.unsqueeze(0).expand(channels, -1, -1).contiguous()
        target = "L" if channels == 1 else "RGB"
        if im.mode != target:
            im = im.convert("RGBA").convert(target) if im.mode in ("P", "LA", "PA") else im.convert(target)
        arr8 = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr8.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(255.0)


def transform(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to ``pre.image_size``, centre-crop a square, normalise."""
    import torch
    import torch.nn.functional as F

    size = pre.image_size
    _, h, w = image.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[:, top : top + size, left : left + size]
    mean = torch.tensor(pre.mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean) / std


def load_image(path: str, pre: Preprocess) -> torch.Tensor:
    """Decode and preprocess one file: ``[channels, image_size, image_size]`` float32."""
    return transform(decode(path, pre.channels), pre)
