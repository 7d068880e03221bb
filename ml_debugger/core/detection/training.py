"""The training loop the demo detectors share: Adam over seeded mini-batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def fit(
    net: nn.Module,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """Train ``net`` for ``epochs`` over ``n`` samples in seeded random batches; ``batch_loss``
    takes a batch's sample indices and returns its loss. Returns the net in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(n, generator=gen).split(batch):
            loss = batch_loss(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
