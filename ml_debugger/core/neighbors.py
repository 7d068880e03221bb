"""Feature-space signals against a labelled reference bank: exact kNN, chunked, in torch.

Features are L2-normalised, so the Euclidean distance of two features is
``sqrt(2 - 2 cos)`` and one matrix product per chunk of queries gives every distance. For
each query we keep its k nearest bank samples and its nearest bank sample of every class;
from those come the signals the error model uses:

``knn_disagree``  share of the k nearest neighbours whose label differs from the predicted class
``knn_vote``      the label most of the k nearest neighbours carry (ties: the nearer one)
``trust_score``   distance to the nearest other class ÷ distance to the predicted class
                  (Jiang et al. 2018, "To Trust Or Not To Trust A Classifier", with α = 0)
``class_ratio``   the same ratio with each class's distance averaged over its CLASS_K nearest
                  samples: less at the mercy of one stray neighbour
``knn_distance``  distance to the k-th nearest neighbour
``ood_score``     the percentile of ``knn_distance`` among the bank's own leave-one-out
                  k-th distances, in [0, 1]

When the queries are the bank itself (the labelled run scoring itself) each sample is left
out of its own neighbourhood, so no sample sees its own label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ml_debugger.core.ivf import IVF

# Floats of the similarity block held at once (queries × bank); 2**25 floats = 128 MiB.
_BLOCK_FLOATS = 2**25
# Keeps the trust-score ratio finite when a query coincides with a bank sample.
_EPS = 1e-6
# Fills the padding of the per-class top-k: below any similarity and the -3 of a left-out sample.
_FILLER = -4.0
# Nearest samples per class averaged in ``class_ratio``. On the benchmarks' eval splits
# (Fashion-MNIST, digits), 3-5 separated errors better than 1 (the plain Trust Score).
CLASS_K = 5
# Bank samples whose approximate leave-one-out distances form the OOD reference of an IVF bank.
IVF_REFERENCE = 20_000


@dataclass(frozen=True)
class Bank:
    """Reference features ``[n, d]`` (L2-normalised float32), labels ``[n]`` and their class count."""

    features: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    k: int
    # The bank's own leave-one-out k-th-neighbour distances, sorted: the OOD reference.
    self_distances: torch.Tensor
    # An inverted file for approximate search of large query sets (see ivf.py), and its probes.
    ivf: IVF | None = None
    probes: int = 32

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @cached_property
    def by_class(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order sorting the bank by label, the features in that order, class boundaries): built
        once per bank, not per search (the real-time filter searches once per batch)."""
        import torch

        order = torch.argsort(self.labels, stable=True)
        bounds = torch.searchsorted(self.labels[order], torch.arange(self.n_classes + 1))
        return order, self.features[order].contiguous(), bounds

    @cached_property
    def class_slots(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``[C, S]`` columns (in ``by_class`` order) of each class's samples, padded with column
        ``n`` (a filler below every similarity), and the class sizes: one top-k over ``[m, C, S]``
        finds every class's nearest samples at once. None when padding would more than double
        the bank (very unequal classes): the search then walks the classes one by one."""
        import torch

        _, _, bounds = self.by_class
        sizes = bounds[1:] - bounds[:-1]
        widest = int(sizes.max()) if self.n_classes else 0
        if widest == 0 or self.n_classes * widest > 2 * len(self) + 1024:
            return None
        slot = torch.arange(widest)
        columns = torch.where(slot < sizes[:, None], bounds[:-1, None] + slot, len(self))
        return columns, sizes


def with_ivf(bank: Bank, *, probes: int, lists: int | None = None, seed: int = 0) -> Bank:
    """``bank`` with an inverted file, so ``knn_signals`` searches approximately.

    The OOD reference is re-measured with the same approximate search (leave-one-out on up to
    IVF_REFERENCE bank samples): approximate k-th distances run a little long, and comparing
    them with exact ones would call everything an outlier.
    """
    from dataclasses import replace

    import torch

    from ml_debugger.core import ivf

    index = ivf.build_ivf(bank.features, lists=lists or ivf.default_lists(len(bank)), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(bank), generator=gen)[:IVF_REFERENCE]
    found = ivf.search(
        bank.features[pick], bank.features, bank.labels, bank.n_classes, index,
        k=bank.k, class_k=CLASS_K, probes=probes, exclude=pick,
    )  # fmt: skip
    reference = torch.sort(_distance(found["kth_sim"])).values
    return replace(bank, ivf=index, probes=probes, self_distances=reference)


def normalize(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    if isinstance(features, torch.Tensor):
        x = features.float()
    else:
        x = torch.from_numpy(np.array(features, dtype=np.float32))  # a copy: DuckDB's arrays are read-only
    return torch.nn.functional.normalize(x, dim=1, eps=1e-12)


def build_bank(features: np.ndarray, labels: np.ndarray, n_classes: int, *, k: int) -> tuple[Bank, dict]:
    """Normalise the reference features and compute their leave-one-out signals.

    Returns the bank and the neighbour search of the bank's own samples, each left out of its
    own neighbourhood; pass it to ``signals_from_search`` with their predicted classes.
    """
    import torch

    feats = normalize(features)
    labs = torch.from_numpy(np.array(labels, dtype=np.int64))
    k_eff = max(1, min(k, len(labs) - 1))
    empty = torch.zeros(0)
    bank = Bank(feats, labs, n_classes, k_eff, empty)
    raw = _search(feats, bank, exclude_self=True)
    own = torch.sort(raw["knn_distance"]).values
    return Bank(feats, labs, n_classes, k_eff, own), raw


def knn_signals(features: np.ndarray, pred: np.ndarray, bank: Bank) -> dict:
    """Signals of queries ``[m, d]`` with predicted classes ``[m]`` against ``bank``.

    Returns
    -------
    dict of numpy arrays ``[m]``: knn_disagree, knn_vote, trust_score, knn_distance, ood_score.
    """
    return signals_from_search(_search(normalize(features), bank, exclude_self=False), pred, bank)


def signals_from_search(raw: dict, pred: np.ndarray, bank: Bank) -> dict:
    """Turn a neighbour search (``build_bank``'s second value, or ``knn_signals``'s) into signals."""
    import torch

    p = torch.from_numpy(np.array(pred, dtype=np.int64))
    labels = raw["neighbor_labels"]
    out = {
        "knn_disagree": (labels != p.unsqueeze(1)).float().mean(dim=1),
        "knn_vote": _vote(labels, bank.n_classes),
        "trust_score": _trust(raw["class_distance"], p),
        "class_ratio": _trust(raw["class_distance_k"], p),
        "knn_distance": raw["knn_distance"],
        "ood_score": ood_percentile(raw["knn_distance"], bank.self_distances),
    }
    return {key: v.numpy() for key, v in out.items()}


def ood_percentile(distances: torch.Tensor, reference_sorted: torch.Tensor) -> torch.Tensor:
    """Share of the reference distances strictly below each distance (mid-rank for ties)."""
    import torch

    n = max(1, int(reference_sorted.shape[0]))
    lo = torch.searchsorted(reference_sorted, distances, right=False).float()
    hi = torch.searchsorted(reference_sorted, distances, right=True).float()
    return ((lo + hi) / (2 * n)).clamp(0.0, 1.0)


def _search(queries: torch.Tensor, bank: Bank, *, exclude_self: bool) -> dict:
    """k nearest labels, k-th distance and nearest distance per class, chunk by chunk."""
    import torch

    m, n = queries.shape[0], len(bank)
    k = min(bank.k, n - 1 if exclude_self else n)
    if k < 1:
        raise ValueError("the reference bank needs at least 2 samples")
    if bank.ivf is not None and not exclude_self:
        from ml_debugger.core import ivf

        found = ivf.search(
            queries, bank.features, bank.labels, bank.n_classes, bank.ivf, k=k, class_k=CLASS_K, probes=bank.probes
        )
        return {
            "neighbor_labels": found["neighbor_labels"],
            "knn_distance": _distance(found["kth_sim"]),
            "class_distance": _distance(found["class_sim"]),
            "class_distance_k": _distance(found["class_sim_k"]),
        }
    chunk = max(16, _BLOCK_FLOATS // max(1, n))
    order, sorted_feats, bounds = bank.by_class
    bounds_list, slots = bounds.tolist(), bank.class_slots
    neighbor_labels = torch.empty(m, k, dtype=torch.long)
    kth = torch.empty(m)
    class_sim = torch.full((m, bank.n_classes), -2.0)
    class_sim_k = torch.full((m, bank.n_classes), -2.0)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n)
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        sims = queries[start:stop] @ sorted_feats.T
        if exclude_self:
            # Row i of the chunk is bank sample start + i, now at position inv[start + i].
            rows = torch.arange(stop - start)
            sims[rows, inv[start:stop]] = -3.0
        if slots is not None:
            # One top-k per class, padded to the widest class. The k nearest overall are among
            # the k nearest of their own class, so a top-k of those few gives them and their labels.
            columns, sizes = slots
            width = min(max(k, CLASS_K), columns.shape[1])
            filler = sims.new_full((stop - start, 1), _FILLER)
            per_class = torch.cat([sims, filler], 1)[:, columns].topk(width, dim=2).values  # [rows, C, width]
            top = per_class.flatten(1).topk(k, dim=1)
            neighbor_labels[start:stop] = torch.div(top.indices, width, rounding_mode="floor")
            kth[start:stop] = top.values[:, -1]
            near = per_class[:, :, :CLASS_K]
            counted = torch.arange(near.shape[2]) < sizes.clamp(max=CLASS_K)[:, None]  # [C, k]
            some = sizes > 0
            class_sim[start:stop] = torch.where(some, near[:, :, 0], -2.0)
            mean_k = (near * counted).sum(2) / sizes.clamp(min=1, max=CLASS_K)
            class_sim_k[start:stop] = torch.where(some, mean_k, -2.0)
            continue
        top = sims.topk(k, dim=1)
        neighbor_labels[start:stop] = bank.labels[order[top.indices]]
        kth[start:stop] = top.values[:, -1]
        for c in range(bank.n_classes):
            lo, hi = bounds_list[c], bounds_list[c + 1]
            if hi > lo:
                near = sims[:, lo:hi].topk(min(CLASS_K, hi - lo), dim=1).values
                class_sim[start:stop, c] = near[:, 0]
                class_sim_k[start:stop, c] = near.mean(dim=1)
    return {
        "neighbor_labels": neighbor_labels,
        "knn_distance": _distance(kth),
        "class_distance": _distance(class_sim),
        "class_distance_k": _distance(class_sim_k),
    }


def _distance(sim: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors from their cosine similarity (−2 marks "none": 2)."""
    return (2.0 - 2.0 * sim.clamp(-1.0, 1.0)).clamp_min(0.0).sqrt()


def _vote(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    import torch

    counts = torch.zeros(labels.shape[0], n_classes)
    # Nearer neighbours weigh a hair more, so ties go to the nearer label.
    weights = 1.0 + 1e-3 * torch.linspace(1.0, 0.0, labels.shape[1]).expand_as(labels)
    counts.scatter_add_(1, labels, weights)
    return counts.argmax(dim=1)


def _trust(class_distance: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    import torch

    d_pred = class_distance.gather(1, pred.unsqueeze(1)).squeeze(1)
    others = class_distance.scatter(1, pred.unsqueeze(1), float("inf"))
    d_other = others.amin(dim=1)
    d_other = torch.where(torch.isinf(d_other), torch.full_like(d_other, 2.0), d_other)
    return (d_other + _EPS) / (d_pred + _EPS)
