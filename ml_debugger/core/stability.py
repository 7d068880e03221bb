"""Input perturbations for feature stability: K noisy, slightly shifted copies of each sample.

Every sample's perturbations come from its own seed (CRC32 of its sample_id mixed with the
run seed), so the stored stability does not depend on batch size, order, or on whether the
extraction was interrupted and resumed. A perturbation is a few tensor gathers: the noise
images come from a bank drawn once, the translations are whole pixels.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ml_debugger.errors import UsageError


@dataclass(frozen=True)
class StabilityConfig:
    """How perturbed copies are made (see ``configs/default.yaml``, section ``stability``)."""

    k: int = 0
    noise_std: float = 0.1  # Gaussian noise, as a fraction of each image's own standard deviation
    max_shift: float = 0.03  # largest translation in whole pixels, as a fraction of the side (>= 1 px)
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


# Distinct noise images drawn once per extraction; each perturbed copy picks one by its sample's
# seed. Drawing fresh noise per sample cost more than the perturbed forward pass of a small
# CNN; a shared bank makes a perturbation one gather, and a sample's K copies still differ.
NOISE_BANK_SIZE = 64
_MIX = 0x9E3779B97F4A7C15


@lru_cache(maxsize=4)
def _noise_bank(shape: tuple[int, int, int], seed: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((NOISE_BANK_SIZE, *shape), generator=gen).to(device)


def _copy_codes(sample_ids: list[str], cfg: StabilityConfig) -> torch.Tensor:
    """One 63-bit pseudo-random code per (sample, copy), from the sample's own seed: ``[B * k]``."""
    codes = []
    for sid in sample_ids:
        base = sample_seed(sid, cfg.seed)
        for j in range(cfg.k):
            h = ((base + 1) * _MIX + j * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
            h ^= h >> 31
            codes.append((h * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF) >> 1)
    return torch.tensor(codes, dtype=torch.int64)


def perturb(x: torch.Tensor, sample_ids: list[str], cfg: StabilityConfig) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B * k, C, H, W]``; rows ``b*k .. b*k+k-1`` are copies of sample b.

    Each copy adds Gaussian noise (``noise_std`` × the image's own standard deviation, the noise
    image chosen from a seeded bank by the sample's seed) and translates the image by a whole
    number of pixels, up to ``max_shift`` × its side (at least 1), edges replicated.
    """
    b, c, h, w = x.shape
    k = cfg.k
    codes = _copy_codes(sample_ids, cfg).to(x.device)
    bank = _noise_bank((c, h, w), cfg.seed, str(x.device))
    rep = x.repeat_interleave(k, dim=0)
    scale = rep.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    rep = rep + cfg.noise_std * scale * bank[codes % NOISE_BANK_SIZE]
    if cfg.max_shift <= 0:
        return rep
    pad = max(1, round(cfg.max_shift * max(h, w)))
    span = 2 * pad + 1
    dy = (codes // NOISE_BANK_SIZE) % span - pad
    dx = (codes // (NOISE_BANK_SIZE * span)) % span - pad
    padded = F.pad(rep, (pad, pad, pad, pad), mode="replicate")
    rows = torch.arange(h, device=x.device) + pad - dy[:, None]  # source row of each output row
    cols = torch.arange(w, device=x.device) + pad - dx[:, None]
    n = b * k
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
