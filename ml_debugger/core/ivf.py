"""Approximate kNN for large runs: an inverted file (IVF) over the reference bank, in torch.

The bank is split into ``lists`` clusters by spherical k-means; a query is compared only with
the samples of its ``probes`` nearest clusters. For each (query, probed cluster) pair the
``keep`` most similar samples become candidates, and every kNN signal is derived from those
candidates: the k nearest, and per class the nearest and the mean of the CLASS_K nearest. A
class with no candidate is taken to lie at the farthest candidate's distance (a lower bound).
With 4·√n lists and 32 probes a 50,000-sample bank costs ~1/17 of the exact search; the
error-detection benchmark measures how far the scores move from exact (AUROC within 0.005).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# k-means iterations: the lists only need to be coherent, not converged.
_KMEANS_ITERS = 10
# Queries per chunk: bounds the candidate buffers ([chunk, probes × keep]).
_CHUNK = 8192


@dataclass(frozen=True)
class IVF:
    """Cluster centroids ``[lists, d]`` and the bank's indices grouped by cluster."""

    centroids: torch.Tensor
    order: torch.Tensor  # bank indices sorted by cluster
    offsets: torch.Tensor  # cluster c holds order[offsets[c]:offsets[c + 1]]

    @property
    def lists(self) -> int:
        return int(self.centroids.shape[0])


def default_lists(n: int) -> int:
    """About 4·√n clusters (the usual IVF rule of thumb), at least 1."""
    return max(1, min(n, round(4 * math.sqrt(n))))


def build_ivf(features: torch.Tensor, *, lists: int, seed: int = 0) -> IVF:
    """Spherical k-means of L2-normalised ``features`` ``[n, d]`` into ``lists`` clusters."""
    n = features.shape[0]
    lists = max(1, min(lists, n))
    gen = torch.Generator().manual_seed(seed)
    centroids = features[torch.randperm(n, generator=gen)[:lists]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(_KMEANS_ITERS):
        assign = _nearest(features, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=lists)
        empty = counts == 0
        if empty.any():  # re-seed empty clusters with random samples
            sums[empty] = features[torch.randint(0, n, (int(empty.sum()),), generator=gen)]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    assign = _nearest(features, centroids)
    order = torch.argsort(assign, stable=True)
    offsets = torch.zeros(lists + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(assign, minlength=lists), 0)
    return IVF(centroids, order, offsets)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape[0], dtype=torch.long)
    step = max(1, 2**24 // max(1, centroids.shape[0]))
    for s in range(0, x.shape[0], step):
        out[s : s + step] = (x[s : s + step] @ centroids.T).argmax(dim=1)
    return out


def search(
    queries: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    ivf: IVF,
    *,
    k: int,
    class_k: int,
    probes: int,
    exclude: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Labels of the k nearest, the k-th similarity, and per class the nearest and ``class_k``-mean.

    ``exclude`` gives, per query, a bank index to leave out (the query itself, for the bank's
    own reference distances). Returns ``neighbor_labels [m, k]``, ``kth_sim [m]``,
    ``class_sim [m, C]`` and ``class_sim_k [m, C]``.
    """
    m = queries.shape[0]
    probes = max(1, min(probes, ivf.lists))
    keep = max(k, class_k)
    feats_by_list = features[ivf.order]
    labels_by_list = labels[ivf.order]
    out = {
        "neighbor_labels": torch.empty(m, k, dtype=torch.long),
        "kth_sim": torch.empty(m),
        "class_sim": torch.empty(m, n_classes),
        "class_sim_k": torch.empty(m, n_classes),
    }
    for start in range(0, m, _CHUNK):
        q = queries[start : start + _CHUNK]
        b = q.shape[0]
        probe = (q @ ivf.centroids.T).topk(probes, dim=1).indices  # [b, P]
        cand_sim = torch.full((b, probes, keep), -float("inf"))
        cand_pos = torch.zeros((b, probes, keep), dtype=torch.long)
        flat = probe.reshape(-1)
        by_list = torch.argsort(flat, stable=True)
        bounds = torch.searchsorted(flat[by_list], torch.arange(ivf.lists + 1))
        for c in torch.nonzero(bounds[1:] > bounds[:-1]).flatten().tolist():
            lo, hi = int(ivf.offsets[c]), int(ivf.offsets[c + 1])
            if hi == lo:
                continue
            pairs = by_list[bounds[c] : bounds[c + 1]]
            rows, slots = pairs // probes, pairs % probes
            sims = q[rows] @ feats_by_list[lo:hi].T
            if exclude is not None:
                own = ivf.order[lo:hi].unsqueeze(0) == exclude[start + rows].unsqueeze(1)
                sims = sims.masked_fill(own, -float("inf"))
            top = sims.topk(min(keep, hi - lo), dim=1)
            width = top.values.shape[1]
            cand_sim[rows, slots, :width] = top.values
            cand_pos[rows, slots, :width] = top.indices + lo
        _derive(cand_sim.view(b, -1), labels_by_list[cand_pos.view(b, -1)], n_classes, k, class_k, out, start)
    return out


def _derive(sim: torch.Tensor, lab: torch.Tensor, n_classes: int, k: int, class_k: int, out: dict, start: int) -> None:
    """Fill rows ``start…`` of ``out`` from candidates ``sim``/``lab`` ``[b, M]`` (−inf = none)."""
    b = sim.shape[0]
    valid = torch.isfinite(sim)
    top = sim.topk(k, dim=1)
    out["neighbor_labels"][start : start + b] = lab.gather(1, top.indices)
    out["kth_sim"][start : start + b] = torch.where(torch.isfinite(top.values[:, -1]), top.values[:, -1], -1.0)
    floor = torch.where(valid, sim, torch.inf).amin(dim=1, keepdim=True)  # the farthest candidate
    floor = torch.where(torch.isfinite(floor), floor, torch.full_like(floor, -1.0))
    # sort candidates by (class, similarity descending): key = 4·class − sim, sim in [−1, 1]
    key = torch.where(valid, 4.0 * lab.float() - sim, torch.full_like(sim, 4.0 * (n_classes + 1)))
    sorted_key, perm = key.sort(dim=1)
    sorted_sim = sim.gather(1, perm)
    cls = torch.arange(n_classes, dtype=torch.float32).expand(b, n_classes).contiguous()
    first = torch.searchsorted(sorted_key, 4.0 * cls - 1.5)
    last = torch.searchsorted(sorted_key, 4.0 * cls + 1.5)
    count = last - first
    width = sorted_sim.shape[1]
    steps = torch.arange(class_k)
    idx = (first.unsqueeze(2) + steps).clamp(max=width - 1)  # [b, C, class_k]
    vals = sorted_sim.gather(1, idx.view(b, -1)).view(b, n_classes, class_k)
    ok = steps < count.unsqueeze(2)
    mean = torch.where(ok, vals, 0.0).sum(2) / count.clamp(min=1).clamp(max=class_k)
    present = count > 0
    out["class_sim"][start : start + b] = torch.where(present, vals[:, :, 0], floor)
    out["class_sim_k"][start : start + b] = torch.where(present, mean, floor)
