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

Real-time batches (``live=True``) of up to SMALL_QUERIES are searched in NumPy against a
padded copy of the bank (``Bank.padded``): at a batch of 1 to a few hundred, torch's cost per
operation (several microseconds) outweighs the arithmetic, and NumPy's partition beats torch's
top-k. Both searches give the same neighbours; the signals are computed in NumPy for both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

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
# Live batches (``knn_signals(live=True)``) up to this size go through the NumPy search
# (``_search_small``), when the padded bank fits in _PADDED_MAX_FLOATS (1 GiB).
SMALL_QUERIES = 256
_PADDED_MAX_FLOATS = 2**28
# Rows voted at once: bounds the [rows, k, k] comparison.
_VOTE_ROWS = 65_536


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
    def reference(self) -> np.ndarray:
        """``self_distances`` as a NumPy array (no copy), looked up once."""
        return np.asarray(self.self_distances)

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

    @cached_property
    def padded(self) -> torch.Tensor | None:
        """The bank for the small-batch search: a ``[d + 1, C * S]`` float32 matrix whose
        columns are each class's samples padded to the widest class (``class_slots``). Its last
        row is 0 under a sample and _FILLER under padding, so a unit query with a trailing 1 gets
        every class's similarities, padding below them all, from one matrix product. None when
        the classes are too unequal to pad, or the copy would pass _PADDED_MAX_FLOATS."""
        slots = self.class_slots
        if slots is None:
            return None
        columns = slots[0].numpy().ravel()
        d = int(self.features.shape[1])
        if columns.size * (d + 1) > _PADDED_MAX_FLOATS:
            return None
        sorted_feats = self.by_class[1].numpy()
        real = columns < len(self)
        out = np.zeros((d + 1, columns.size), dtype=np.float32)
        out[:d, real] = sorted_feats[columns[real]].T
        out[d, ~real] = _FILLER
        import torch

        return torch.from_numpy(out)

    @cached_property
    def small_search_constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """For ``_search_small``: which of each class's CLASS_K nearest exist (``[C, CLASS_K]``
        float32), how many (the divisor of their mean), the columns of empty classes in the
        ``[nearest | mean]`` block (None when none is empty), and the per-class width searched."""
        assert self.class_slots is not None
        sizes = self.class_slots[1].numpy()
        slots = int(self.class_slots[0].shape[1])
        width = min(max(min(self.k, len(self)), CLASS_K), slots)
        counted = (np.arange(min(CLASS_K, width)) < np.minimum(sizes, CLASS_K)[:, None]).astype(np.float32)
        divisor = np.clip(sizes, 1, CLASS_K).astype(np.float32)
        empty = np.flatnonzero(np.tile(sizes == 0, 2))
        return counted, divisor, (empty if len(empty) else None), width


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


def knn_signals(features: np.ndarray, pred: np.ndarray, bank: Bank, *, live: bool = False) -> dict:
    """Signals of queries ``[m, d]`` with predicted classes ``[m]`` against ``bank``.

    ``live``: a real-time batch; up to SMALL_QUERIES queries are then searched in NumPy
    (``_search_small``), equal to the chunked search to float rounding. Stored runs always go
    through the chunked search, so their scores do not depend on where batches end.

    Returns
    -------
    dict of numpy arrays ``[m]``: knn_disagree, knn_vote, trust_score, knn_distance, ood_score.
    """
    if live and len(features) <= SMALL_QUERIES and bank.ivf is None and bank.padded is not None:
        raw = _search_small(_unit(np.asarray(features, dtype=np.float32)), bank)
    else:
        raw = _search(normalize(features), bank, exclude_self=False)
    return signals_from_search(raw, pred, bank)


def signals_from_search(raw: dict, pred: np.ndarray, bank: Bank) -> dict:
    """Turn a neighbour search (``build_bank``'s second value, or ``knn_signals``'s) into signals."""
    labels = np.asarray(raw["neighbor_labels"])  # torch CPU tensors: no copy
    distance = np.asarray(raw["knn_distance"])
    p = np.asarray(pred, dtype=np.int64)
    trust = _trust(np.stack([np.asarray(raw["class_distance"]), np.asarray(raw["class_distance_k"])]), p)
    return {
        "knn_disagree": (labels != p[:, None]).sum(axis=1, dtype=np.float32) / np.float32(labels.shape[1]),
        "knn_vote": _vote(labels),
        "trust_score": trust[0],
        "class_ratio": trust[1],
        "knn_distance": distance,
        "ood_score": ood_percentile(distance, bank.reference),
    }


def ood_percentile(distances: Any, reference_sorted: Any) -> Any:
    """Share of the reference distances strictly below each distance (mid-rank for ties), as
    float32; NumPy arrays in, NumPy out; torch tensors in, torch out."""
    if isinstance(distances, np.ndarray):
        n = max(1, len(reference_sorted))
        lo = np.searchsorted(reference_sorted, distances, side="left")
        hi = np.searchsorted(reference_sorted, distances, side="right")
        return (lo + hi).astype(np.float32) / np.float32(2 * n)  # in [0, 1] by construction
    import torch

    n = max(1, int(reference_sorted.shape[0]))
    lo_t = torch.searchsorted(reference_sorted, distances, right=False).float()
    hi_t = torch.searchsorted(reference_sorted, distances, right=True).float()
    return ((lo_t + hi_t) / (2 * n)).clamp(0.0, 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (``normalize`` in NumPy)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norms, np.float32(1e-12))[:, None]


def _search_small(queries: np.ndarray, bank: Bank) -> dict:
    """``_search`` of a few unit queries ``[m, d]`` in NumPy, against ``bank.padded``.

    Written for a batch of 1 to 256 in a live loop, where each NumPy call's ~1 µs counts: the
    per-class constants are built once per bank and the three distances come from one pass."""
    import torch

    padded = bank.padded
    assert padded is not None
    counted, divisor, empty, width = bank.small_search_constants
    m, d = queries.shape
    c = bank.n_classes
    slots = padded.shape[1] // c
    k = min(bank.k, len(bank))
    q = np.empty((m, d + 1), dtype=np.float32)
    q[:, :d] = queries
    q[:, d] = 1.0
    # torch's matrix product, not NumPy's: OpenBLAS's threads spin for a while after each call
    # and slowed the user's next forward pass by about 5% (side by side, small CNN, batch 64).
    sims = torch.from_numpy(q).mm(padded).numpy().reshape(m, c, slots)
    if width < slots:
        sims.partition(slots - width, axis=2)  # in place: no second [m, C, S] block
        sims = sims[:, :, slots - width :]
    # The k nearest overall are among the k nearest of their own class: sort those few.
    per_class = np.sort(sims, axis=2)[:, :, ::-1]  # [m, C, width], nearest first
    flat = per_class.reshape(m, c * width)
    top = np.argsort(flat, axis=1)[:, : -k - 1 : -1]
    near = np.empty((m, 1 + 2 * c), dtype=np.float32)  # k-th overall | nearest per class | mean per class
    near[:, 0] = flat[np.arange(m), top[:, -1]]
    near[:, 1 : 1 + c] = per_class[:, :, 0]
    near[:, 1 + c :] = (per_class[:, :, : counted.shape[1]] * counted).sum(axis=2, dtype=np.float32) / divisor
    if empty is not None:
        near[:, 1:][:, empty] = -2.0
    dist = _distance(near)
    return {
        "neighbor_labels": top // width,
        "knn_distance": dist[:, 0],
        "class_distance": dist[:, 1 : 1 + c],
        "class_distance_k": dist[:, 1 + c :],
    }


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


def _distance(sim: Any) -> Any:
    """Euclidean distance of unit vectors from their cosine similarity (−2 marks "none": 2);
    a NumPy array or a torch tensor, in kind."""
    if isinstance(sim, np.ndarray):
        return np.sqrt(np.maximum(2.0 - 2.0 * np.clip(sim, -1.0, 1.0), 0.0))
    return (2.0 - 2.0 * sim.clamp(-1.0, 1.0)).clamp_min(0.0).sqrt()


def _vote(labels: np.ndarray) -> np.ndarray:
    """The label most of each row's neighbours (nearest first) carry; a tie goes to the label
    of the nearer neighbour. Compares neighbours pairwise, so memory does not grow with C."""
    weights = _vote_weights(labels.shape[1])
    best = np.empty(len(labels), dtype=np.int64)
    for start in range(0, len(labels), _VOTE_ROWS):
        part = labels[start : start + _VOTE_ROWS]
        same = part[:, :, None] == part[:, None, :]  # [rows, k, k]
        best[start : start + len(part)] = (same @ weights).argmax(axis=1)
    return labels[np.arange(len(labels)), best]


@functools.cache
def _vote_weights(k: int) -> np.ndarray:
    """Each neighbour's weight in the vote: nearer neighbours weigh a hair more."""
    return 1.0 + 1e-3 * np.linspace(1.0, 0.0, k, dtype=np.float32)


def _trust(class_distance: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Distance to the nearest other class ÷ distance to the predicted class, for distances
    ``[..., m, C]`` (several kinds of class distance at once); ``[..., m]``."""
    rows = np.arange(len(pred))
    d_pred = class_distance[..., rows, pred]
    others = class_distance.copy()
    others[..., rows, pred] = np.inf
    d_other = others.min(axis=-1)
    d_other[np.isinf(d_other)] = 2.0  # one class: no other
    return (d_other + np.float32(_EPS)) / (d_pred + np.float32(_EPS))
