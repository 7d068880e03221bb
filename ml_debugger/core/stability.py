"""Input perturbations for feature stability: K noisy, slightly shifted copies of each sample.

Every sample's perturbations come from its own seed (CRC32 of its sample_id mixed with the
run seed), so the stored stability does not depend on batch size, order, or on whether the
extraction was interrupted and resumed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ml_debugger.errors import UsageError


@dataclass(frozen=True)
class StabilityConfig:
    """How perturbed copies are made (see ``configs/default.yaml``, section ``stability``)."""

    k: int = 0
    noise_std: float = 0.1  # Gaussian noise, as a fraction of each image's own standard deviation
    max_shift: float = 0.03  # largest translation, as a fraction of the image side (>= 1 px)
    mc_dropout: bool = True  # also enable the model's dropout layers in perturbed forwards
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 0 or self.k > 64:
            raise UsageError(f"--stability {self.k} is out of range; give 0 (off) to 64 perturbed copies, e.g. 4")
        if self.noise_std < 0 or self.max_shift < 0:
            raise UsageError("stability noise_std and max_shift must be >= 0")

    def to_dict(self) -> dict[str, object]:
        return {"k": self.k, "noise_std": self.noise_std, "max_shift": self.max_shift,
                "mc_dropout": self.mc_dropout, "seed": self.seed}  # fmt: skip


def sample_seed(sample_id: str, seed: int) -> int:
    return zlib.crc32(sample_id.encode("utf-8")) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def perturb(x: torch.Tensor, sample_ids: list[str], cfg: StabilityConfig) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B * k, C, H, W]``; rows ``b*k .. b*k+k-1`` are copies of sample b."""
    b, c, h, w = x.shape
    k = cfg.k
    noise = torch.empty((b, k, c, h, w), dtype=torch.float32)
    shifts = torch.empty((b, k, 2), dtype=torch.float32)
    gen = torch.Generator()
    for i, sid in enumerate(sample_ids):
        gen.manual_seed(sample_seed(sid, cfg.seed))
        torch.randn((k, c, h, w), generator=gen, out=noise[i])
        torch.rand((k, 2), generator=gen, out=shifts[i])
    noise = noise.view(b * k, c, h, w).to(x.device, non_blocking=True)
    rep = x.repeat_interleave(k, dim=0)
    scale = rep.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    rep = rep + cfg.noise_std * scale * noise
    max_px = max(1.0, cfg.max_shift * max(h, w)) if cfg.max_shift > 0 else 0.0
    if max_px == 0.0:
        return rep
    # translate by up to max_px pixels in x and y (edges replicated), all copies in one call
    offsets = (shifts.view(b * k, 2) * 2 - 1) * max_px
    theta = torch.zeros(b * k, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offsets[:, 0] * 2.0 / w
    theta[:, 1, 2] = offsets[:, 1] * 2.0 / h
    grid = F.affine_grid(theta.to(x.device), [b * k, c, h, w], align_corners=False)
    return F.grid_sample(rep, grid, mode="bilinear", padding_mode="border", align_corners=False)
