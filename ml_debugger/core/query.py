"""Query a scored run: filter (zones OR, conditions AND), then rank by a strategy, then save.

Strategies share one shape, ``pick(candidates, n, spec, features) -> (picked, notes)``, and
live in the ``STRATEGIES`` registry: adding one is a function and an entry. ``candidates``
is a Polars frame (one row per sample: scores, outputs, predicted class name); ``picked`` is
at most ``n`` of its rows, in the order they should be labelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ml_debugger.core.conditions import (
    NUMERIC_COLUMNS,
    check_column,
    filter_expr,
    parse_conditions,
    parse_zones,
)
from ml_debugger.core.detection import DETECTION_TASKS, unit_of
from ml_debugger.core.store import Store
from ml_debugger.errors import UsageError

# What a query answer shows for each sample (all of it is in --json and in exports).
ANSWER_COLUMNS = ("rank", "sample_id", "zone", "error_proba", "confidence", "predicted", "path", "error_code")

Features = Callable[[pl.Series], Any]  # sample ids -> float32 array [len, d]
# diverse: features wider than this are reduced by PCA before the k-center greedy search, whose
# every step reads all candidates (1,000 picks from 100,000 512-wide features: 22 s → ~3 s).
DIVERSE_DIMS = 64


@dataclass(frozen=True)
class QuerySpec:
    """What to select; validated by ``check``. ``mix`` maps strategy names to budget weights."""

    strategy: str = "high_error_proba"
    n: int = 100
    zones: list[str] = field(default_factory=list)
    conditions: list[Any] = field(default_factory=list)
    sort: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    seed: int = 0
    min_per_class: int | None = None
    mix: dict[str, float] | None = None
    include_selected: bool = False
    bbox: dict[str, Any] | None = None  # detection runs: a BBoxStrategy (see core.detection.strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_mix(text: str) -> dict[str, float]:
    """``"high_error_proba=0.6,diverse=0.2,random=0.2"`` → weights (checked, normalised later)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            value = float(weight) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not value >= 0:  # also catches NaN
            raise UsageError(f"--mix part {part!r} is not STRATEGY=WEIGHT, e.g. high_error_proba=0.6,random=0.4")
        out[name.strip()] = value
    if not out or sum(out.values()) <= 0:
        raise UsageError(f"--mix {text!r} gives no positive weight; e.g. high_error_proba=0.6,random=0.4")
    return out


def _sort_key(spec: QuerySpec) -> tuple[str, bool]:
    """(column, descending) of the ranking value; ``--sort COLUMN[:asc|desc]`` overrides."""
    if spec.sort:
        column, _, direction = spec.sort.partition(":")
        check_column(column, "--sort column")
        if direction not in ("", "asc", "desc"):
            raise UsageError(f"--sort {spec.sort!r}: direction must be asc or desc")
        return column, direction != "asc"
    return "error_proba", spec.strategy != "low_error_proba"


def check(spec: QuerySpec) -> QuerySpec:
    """Validate every part of ``spec`` before any data is read (clear errors, no partial work)."""
    if spec.n <= 0:
        raise UsageError(f"--n {spec.n}: ask for at least 1 sample")
    names = list(spec.mix) if spec.mix else [spec.strategy]
    for name in names:
        if name not in STRATEGIES or (spec.mix and name == "mix"):
            valid = ", ".join(s for s in STRATEGIES if s != "mix")
            raise UsageError(f"unknown strategy {name!r}; choose from: {valid} (or --mix)")
    if spec.mix and spec.strategy not in ("mix", "high_error_proba"):
        raise UsageError("--mix and --strategy are exclusive; give one")
    parse_zones(spec.zones)
    parse_conditions(list(spec.conditions))
    _sort_key(spec)
    if spec.min_per_class is not None and spec.min_per_class < 1:
        raise UsageError(f"--min-per-class {spec.min_per_class}: give at least 1")
    for v in (spec.min_value, spec.max_value):
        if v is not None and not v == v:
            raise UsageError("--min-value/--max-value must be numbers")
    return spec


# -- strategies ------------------------------------------------------------------------------
def _ranked(c: pl.DataFrame, spec: QuerySpec) -> pl.DataFrame:
    column, descending = _sort_key(spec)
    return c.sort([column, "sample_id"], descending=[descending, False], nulls_last=True)


def pick_sorted(c: pl.DataFrame, n: int, spec: QuerySpec, features: Features) -> tuple[pl.DataFrame, list[str]]:
    return _ranked(c, spec).head(n), []


def pick_random(c: pl.DataFrame, n: int, spec: QuerySpec, features: Features) -> tuple[pl.DataFrame, list[str]]:
    """Uniformly at random (seeded) among candidates whose ranking value is in [min, max]."""
    column, _ = _sort_key(spec)
    lo = spec.min_value if spec.min_value is not None else float("-inf")
    hi = spec.max_value if spec.max_value is not None else float("inf")
    pool = c.filter(pl.col(column).is_between(lo, hi)).sort("sample_id")
    return pool.sample(n=min(n, pool.height), seed=spec.seed, shuffle=True), []


def pick_class_balanced(c: pl.DataFrame, n: int, spec: QuerySpec, features: Features) -> tuple[pl.DataFrame, list[str]]:
    """Up to a quota per predicted class (highest ranking value first), then the best of the rest."""
    classes = sorted(c["predicted"].unique().drop_nulls().to_list())
    if not classes:
        return c.head(0), []
    quota = spec.min_per_class or max(1, n // len(classes))
    ranked = _ranked(c, spec).with_columns(pl.int_range(pl.len()).over("predicted").alias("_in_class"))
    first = ranked.filter(pl.col("_in_class") < quota)
    notes = []
    counts = dict(ranked.group_by("predicted").len().iter_rows())
    short = [f"{k} ({counts.get(k, 0)})" for k in classes if counts.get(k, 0) < quota]
    if short:
        notes.append(f"quota {quota} per class not met for: {', '.join(short)}")
    first = _ranked(first, spec).head(n)
    rest = ranked.join(first.select("sample_id"), on="sample_id", how="anti").head(max(0, n - first.height))
    return pl.concat([first, rest]).drop("_in_class"), notes


def pick_diverse(c: pl.DataFrame, n: int, spec: QuerySpec, features: Features) -> tuple[pl.DataFrame, list[str]]:
    """k-center greedy on the stored features: start at the highest-ranked sample, then always
    take the candidate farthest (cosine) from everything taken so far."""
    import numpy as np
    import torch

    ranked = _ranked(c, spec)
    if ranked.height <= n:
        return ranked, []
    x = torch.nn.functional.normalize(torch.from_numpy(np.asarray(features(ranked["sample_id"]))), dim=1)
    if x.shape[1] > DIVERSE_DIMS:  # each greedy step reads every candidate: project first (PCA)
        centred = x - x.mean(dim=0)
        _, _, v = torch.pca_lowrank(centred, q=DIVERSE_DIMS, center=False, niter=2)
        x = torch.nn.functional.normalize(centred @ v, dim=1)
    taken = [0]
    dist = 1.0 - x @ x[0]
    dist[0] = -1.0
    for _ in range(n - 1):
        i = int(torch.argmax(dist))
        taken.append(i)
        dist = torch.minimum(dist, 1.0 - x @ x[i])
        dist[taken] = -1.0
    return ranked[taken], []


def pick_mix(c: pl.DataFrame, n: int, spec: QuerySpec, features: Features) -> tuple[pl.DataFrame, list[str]]:
    """Split ``n`` between strategies by weight (largest remainder), never picking a sample twice."""
    weights = spec.mix or {}
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    budget = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - budget[k], reverse=True)[: n - sum(budget.values())]:
        budget[k] += 1
    parts, notes, left = [], [], c
    for name, share in budget.items():
        if share <= 0:
            continue
        got, more = STRATEGIES[name](left, share, spec, features)
        parts.append(got.with_columns(pl.lit(name).alias("picked_by")))
        notes += more
        if got.height < share:
            notes.append(f"{name}: {got.height} of its {share} (ran out of candidates)")
        left = left.join(got.select("sample_id"), on="sample_id", how="anti")
    return (pl.concat(parts, how="diagonal_relaxed") if parts else c.head(0)), notes


STRATEGIES: dict[str, Callable[..., tuple[pl.DataFrame, list[str]]]] = {
    "high_error_proba": pick_sorted,
    "low_error_proba": pick_sorted,
    "sort": pick_sorted,
    "random": pick_random,
    "class_balanced": pick_class_balanced,
    "diverse": pick_diverse,
    "mix": pick_mix,
}


@dataclass(frozen=True)
class QueryAnswer:
    """The ordered answer of a query, where it came from, and whether it was saved."""

    run: str
    result: str
    rows: pl.DataFrame
    candidates: int
    excluded: int
    selection: str | None
    notes: list[str]


def candidates(
    store: Store,
    result: str,
    run: str,
    classes: list[str],
    zones: list[str] | None = None,
    selection: str | None = None,
) -> pl.LazyFrame:
    """Scored samples of ``run`` under ``result`` (in ``zones`` / ``selection`` when given),
    with class names."""
    names = pl.Series(classes, dtype=pl.String)
    idx = list(range(len(classes)))
    return store.scan_scores(result, run, zones, selection).with_columns(
        pl.col("pred").replace_strict(idx, names, default=None).alias("predicted"),
        pl.col("label").replace_strict(idx, names, default=None).alias("label_name"),
    )


def run_query(
    spec: QuerySpec,
    *,
    db: str | Path | None = None,
    run: str | None = None,
    result: str | None = None,
    dry_run: bool = False,
) -> QueryAnswer:
    """Select samples of a scored run (by default the most recently scored unlabelled one) and save them.

    The run is scored first when ``result`` (or the newest matching result) has not scored
    it yet. Unless ``spec.include_selected``, samples already in a selection of the run are
    left out, so nobody labels the same image twice.
    """
    from ml_debugger.core.scoring import check_compatible, compute_scores, find_result

    spec = check(spec)
    zones = parse_zones(spec.zones)
    conditions = parse_conditions(list(spec.conditions))
    with Store(db) as store:
        if run is None:
            pairs = store.scored_pairs()
            pairs = pairs.filter(pl.col("result") == result) if result else pairs
            if pairs.height == 0:
                raise UsageError("no scored runs yet: run `mldbg score RUN` (or name one with --run)")
            # An unlabelled pool is what one labels: the newest scored pool first, then any run.
            labelled = {r["name"]: r["labelled"] for r in store.list_runs().iter_rows(named=True)}
            pairs = pairs.with_columns(pl.col("run").replace_strict(labelled, default=True).alias("_labelled"))
            run = str(pairs.sort(["_labelled", "scored"], descending=[False, True])["run"][0])
        info_run = store.require_run(run)
        info = find_result(store, info_run, result)
        notes: list[str] = []
        if info_run.task in DETECTION_TASKS:
            cands = image_candidates(store, info, info_run, spec, zones, conditions, notes)
        else:
            if spec.bbox:
                raise UsageError(f"run {run!r} is a {info_run.task} run; bbox options are for detection runs")
            check_compatible(info, info_run)
            if store.scored_info(info.name, run) is None:
                store.write_scores(info.name, run, compute_scores(store, info, info_run))
            filtered = candidates(store, info.name, run, info.classes, zones).filter(filter_expr([], conditions))
            cands = filtered.collect()
        total = cands.height
        excluded = 0
        if not spec.include_selected:
            cands = cands.join(pl.DataFrame({"sample_id": store.selected_ids(run)}), on="sample_id", how="anti")
            excluded = total - cands.height
        feats = _feature_reader(store, run)
        strategy = "mix" if spec.mix else spec.strategy
        if info_run.task in DETECTION_TASKS and (strategy == "diverse" or (spec.mix and "diverse" in spec.mix)):
            raise UsageError(
                "the diverse strategy needs one feature vector per sample; detection runs have one per box"
            )
        picked, more = STRATEGIES[strategy](cands, spec.n, spec, feats)
        notes += more
        picked = picked.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("rank"))
        selection = None
        if not dry_run and picked.height:
            selection = store.create_selection(run, info.name, {**spec.to_dict(), "strategy": strategy},
                                               picked["sample_id"].to_list())  # fmt: skip
    if not cands.height:
        notes.append("no sample meets the filters" + (" that is not selected already" if excluded else ""))
    return QueryAnswer(run, info.name, picked, cands.height, excluded, selection, notes)


def image_candidates(store: Store, info: Any, run: Any, spec: QuerySpec, zones: list[str], conditions: list[Any],
                      notes: list[str]) -> pl.DataFrame:  # fmt: skip
    """One row per image of a detection run: its BBoxStrategy score as ``error_proba`` (so every
    ranking strategy applies), box count, flag, and the zone, score and class of its worst box.
    ``zones`` and conditions filter images by those image-level columns."""
    from ml_debugger.core.detection.evaluate import check_detection_compatible, score_boxes
    from ml_debugger.core.detection.strategy import BBoxStrategy, box_frame

    bbox = BBoxStrategy.from_value(spec.bbox)
    check_detection_compatible(info, run)
    if store.scored_info(info.name, run.name) is None:
        store.write_scores(info.name, run.name, score_boxes(store, info, run), table="box_scores")
    boxes = box_frame(store.read_box_scores(info.name, run.name), info.classes)
    samples = store.con.sql("SELECT sample_id, path FROM samples WHERE run = $r", params={"r": run.name}).pl()
    images = bbox.image_scores(boxes, samples["sample_id"])
    worst = (
        boxes.sort(bbox.target_column, descending=True)
        .group_by("sample_id", maintain_order=True)
        .first()
        .select("sample_id", "zone", pl.col("score").alias("confidence"), "predicted", pl.col("label").alias("pred"),
                pl.col("box").alias("worst_box"), "error_code")
    )  # fmt: skip
    frame = (
        images.join(samples, on="sample_id", how="left")
        .join(worst, on="sample_id", how="left")
        .with_columns(pl.col("img_score").alias("error_proba"), pl.col("confidence").fill_null(0.0))
        .with_columns(pl.lit(None, dtype=pl.Int32).alias("label"))
    )
    if bbox.img_error_threshold is not None:
        frame = frame.filter(pl.col("flag"))
        what = f"{unit_of(run.task)}(s) flagged: aggregated {bbox.target_column}"
        notes.append(f"{frame.height:,} {what} ≥ {bbox.img_error_threshold}")
    return frame.filter(filter_expr(zones, conditions))


def _feature_reader(store: Store, run: str) -> Features:
    dim = int(store.require_run(run).feature_dim or 0)

    def read(ids: pl.Series) -> Any:
        return store.features_of(run, dim, ids)

    return read


__all__ = ["NUMERIC_COLUMNS", "STRATEGIES", "QueryAnswer", "QuerySpec", "parse_mix", "run_query"]
