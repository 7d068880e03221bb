"""Per-sample signals computed from model outputs: pure tensor-in, tensor-out functions.

These are the columns of the ``outputs`` table. ``softmax_signals`` needs only the logits;
``stability_signals`` compares a clean forward with K perturbed forwards of the same batch.
"""

from __future__ import annotations

import numpy as np
import torch


def softmax_signals(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signals of logits ``[B, C]``.

    Returns
    -------
    dict with ``probs [B, C]`` (softmax), ``pred [B]`` (argmax), ``confidence`` (max softmax
    probability), ``margin`` (top-1 minus top-2 probability; 1 when C == 1), ``entropy``
    (natural log) and ``energy`` (``-logsumexp(logits)``; lower means more familiar).
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    if probs.shape[1] >= 2:
        top2 = probs.topk(2, dim=1)
        confidence, pred = top2.values[:, 0], top2.indices[:, 0]
        margin = top2.values[:, 0] - top2.values[:, 1]
    else:
        confidence, pred = probs[:, 0], torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
        margin = torch.ones_like(confidence)
    log_probs = torch.log_softmax(logits, dim=1)
    entropy = -(probs * log_probs).sum(dim=1)
    energy = -torch.logsumexp(logits, dim=1)
    return {
        "probs": probs,
        "pred": pred,
        "confidence": confidence,
        "margin": margin,
        "entropy": entropy.clamp_min(0.0),
        "energy": energy,
    }


def softmax_arrays(logits: np.ndarray) -> dict[str, np.ndarray]:
    """``softmax_signals`` in NumPy (float32), the same values to float rounding: the real-time
    filter's path, where a batch is small and torch's cost per operation would dominate."""
    z = np.asarray(logits, dtype=np.float32)
    top = z.max(axis=1, keepdims=True)
    shifted = z - top
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    probs = e / total
    log_total = np.log(total)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    if c >= 2:
        top2 = np.partition(probs, c - 2, axis=1)[:, c - 2 :]  # [second, first]
        confidence, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
    else:
        confidence, margin = probs[:, 0], np.ones(len(probs), dtype=np.float32)
    return {
        "probs": probs,
        "pred": pred,
        "confidence": confidence,
        "margin": margin,
        "entropy": np.maximum(-np.einsum("ij,ij->i", probs, shifted - log_total), np.float32(0.0)),
        "energy": -(log_total[:, 0] + top[:, 0]),
    }


def stability_signals(
    features: torch.Tensor,
    pred: torch.Tensor,
    perturbed_logits: torch.Tensor,
    perturbed_features: torch.Tensor,
    k: int,
) -> dict[str, torch.Tensor]:
    """Compare a clean forward with ``k`` perturbed copies of each sample.

    Parameters
    ----------
    features, pred
        The clean features ``[B, D]`` and predicted classes ``[B]``.
    perturbed_logits, perturbed_features
        ``[B * k, C]`` and ``[B * k, D]``, rows ``b * k .. b * k + k - 1`` belonging to sample b.

    Returns
    -------
    dict with ``stability [B]`` (mean cosine similarity of perturbed to clean features,
    clipped to [0, 1]; 1 = unmoved), ``flip_rate [B]`` (share of perturbed copies predicted as
    another class), ``perturbed_confidence [B]`` (mean perturbed probability of the clean
    predicted class) and ``flip_mask [B, C]`` (classes the perturbed predictions went to).
    """
    b = features.shape[0]
    pf = perturbed_features.float().view(b, k, -1)
    cos = torch.nn.functional.cosine_similarity(pf, features.float().unsqueeze(1), dim=2, eps=1e-8)
    stability = cos.mean(dim=1).clamp(0.0, 1.0)
    pprobs = torch.softmax(perturbed_logits.float(), dim=1).view(b, k, -1)
    ppred = pprobs.argmax(dim=2)
    flipped = ppred != pred.unsqueeze(1)
    flip_rate = flipped.float().mean(dim=1)
    perturbed_confidence = pprobs.gather(2, pred.view(b, 1, 1).expand(b, k, 1)).squeeze(2).mean(dim=1)
    n_classes = pprobs.shape[2]
    counts = torch.zeros(b, n_classes, dtype=torch.long, device=features.device)
    counts.scatter_add_(1, ppred, flipped.long())  # only flipped copies count
    flip_mask = counts > 0
    return {
        "stability": stability,
        "flip_rate": flip_rate,
        "perturbed_confidence": perturbed_confidence,
        "flip_mask": flip_mask,
    }
