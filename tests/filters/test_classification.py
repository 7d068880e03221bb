"""ClassificationDataFilter on real digits: real time equals the batch path, flags, errors, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest
import torch

from ml_debugger.core.demo import PREPROCESS, DemoFiles, DigitsNet
from ml_debugger.core.evaluate import evaluate
from ml_debugger.core.extract import ExtractRequest, extract
from ml_debugger.core.images import load_image
from ml_debugger.core.scoring import score
from ml_debugger.core.store import Store
from ml_debugger.data_filter import ClassificationDataFilter, FilterConfig
from ml_debugger.errors import MldbgError
from tests.conftest import PRE_KW, Models

ZONES = ["critical_hotspot", "hotspot", "recessive_hotspot", "aleatoric_hotspot"]


@pytest.fixture(scope="module")
def live(demo: DemoFiles, models: Models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DigitsNet]:
    """A result fitted without stability on runs of the factory model, the pool scored."""
    db = tmp_path_factory.mktemp("live") / "mldbg.duckdb"
    common = dict(model=models.factory, weights=str(models.weights), model_name="digits", workers=0, **PRE_KW)
    extract(ExtractRequest(dataset=str(demo.val), name="val", **common), db=db)  # type: ignore[arg-type]
    extract(ExtractRequest(dataset=str(demo.pool), name="pool", classes_file=str(demo.classes), **common), db=db)  # type: ignore[arg-type]
    evaluate("val", db=db)
    score("pool", db=db)
    net = DigitsNet()
    net.load_state_dict(torch.load(models.weights, weights_only=True))
    return db, net.eval()


def _pool(demo: DemoFiles) -> tuple[torch.Tensor, list[str]]:
    paths = sorted(demo.pool.glob("*.png"))
    return torch.stack([load_image(str(p), PREPROCESS) for p in paths]), [p.name for p in paths]


def test_real_time_scores_equal_the_batch_path(live, demo: DemoFiles) -> None:
    db, net = live
    f = ClassificationDataFilter(net, model_name="digits", version_name="v1", filter_config={"target_zones": ZONES},
                                 db=db)  # fmt: skip
    x, ids = _pool(demo)
    with torch.no_grad():
        ref = net(x)
    outs, flags, lasts = [], [], []
    for s in range(0, len(ids), 100):  # in batches, as an inference loop would
        out, fl = f(x[s : s + 100], input_ids=ids[s : s + 100])
        outs.append(out)
        flags += fl
        lasts.append(f.last)
    assert torch.equal(torch.cat(outs), ref)  # the model's own output, unchanged
    rt = pl.concat(lasts)
    with Store(db, read_only=True) as store:
        batch = store.read_scores(f.result.name, "pool").select("sample_id", "error_proba", "zone")
    both = rt.join(batch, left_on="input_ids", right_on="sample_id", suffix="_batch")
    assert both.height == len(ids)
    assert (both["error_proba"] - both["error_proba_batch"]).abs().max() < 1e-5  # type: ignore[operator]
    assert (both["zone"] == both["zone_batch"]).all()
    assert flags == rt["zone"].is_in(ZONES).to_list() and all(isinstance(v, bool) for v in flags)
    assert set(rt.columns) == {"input_ids", "error_proba", "zone", "confidence", "predicted", "ood_score"}


def test_no_config_gives_none_flags_and_conditions_work(live, demo: DemoFiles) -> None:
    db, net = live
    x, ids = _pool(demo)
    f = ClassificationDataFilter(net, "digits", "v1", db=db)
    _, flags = f(x[:10])
    assert flags == [None] * 10 and f.last is not None and f.last["input_ids"].to_list() == list(range(10))
    cfg = FilterConfig.from_value({"conditions": [{"error_proba": ">=0.5"}, "confidence>=0.3"]})
    g = ClassificationDataFilter(net, "digits", "v1", filter_config=cfg, db=db)
    _, flags = g(x[:200], input_ids=ids[:200])
    expect = ((g.last["error_proba"] >= 0.5) & (g.last["confidence"] >= 0.3)).to_list()  # type: ignore[index]
    assert flags == expect and any(flags)


def test_bad_input_is_refused_clearly(live, demo: DemoFiles, scored: Path) -> None:
    db, net = live
    x, _ = _pool(demo)
    with pytest.raises(MldbgError, match="unknown zone 'hotpsot'; did you mean 'hotspot'"):
        ClassificationDataFilter(net, "digits", "v1", filter_config={"target_zones": ["hotpsot"]}, db=db)
    with pytest.raises(MldbgError, match="unknown key"):
        ClassificationDataFilter(net, "digits", "v1", filter_config={"zones": ["hotspot"]}, db=db)
    with pytest.raises(MldbgError, match="no classification result for model other/v1"):
        ClassificationDataFilter(net, "other", "v1", db=db)
    f = ClassificationDataFilter(net, "digits", "v1", db=db)
    with pytest.raises(MldbgError, match="input_ids has 2 entries for a batch of 3"):
        f(x[:3], input_ids=["a", "b"])
    wide = ClassificationDataFilter(net, "digits", "v1", target_layers="conv2", db=db)
    with pytest.raises(MldbgError, match="gives 32 features, but result .* was fitted on 64"):
        wide(x[:3])
    with pytest.raises(MldbgError, match="fitted with --stability 4 signals; pass stability=True"):
        ClassificationDataFilter(net, "digits", "v1", db=scored)  # the scored fixture used K=4
    with pytest.raises(MldbgError, match="has no stability signals"):
        ClassificationDataFilter(net, "digits", "v1", db=db, stability=True)


def test_concurrent_calls_are_serialised_and_each_gets_its_own_answer(live, demo: DemoFiles) -> None:
    db, net = live
    x, ids = _pool(demo)
    f = ClassificationDataFilter(net, "digits", "v1", filter_config={"target_zones": ZONES}, db=db)
    expected = {}
    for s in range(0, 400, 50):
        expected[s] = f(x[s : s + 50], input_ids=ids[s : s + 50])[1]
    got: dict[int, list] = {}

    def work(s: int) -> None:
        for _ in range(3):
            _, fl = f(x[s : s + 50], input_ids=ids[s : s + 50])
            got.setdefault(s, []).append(fl)

    threads = [threading.Thread(target=work, args=(s,)) for s in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(all(fl == expected[s] for fl in got[s]) for s in expected)


def test_query_shares_the_cli_implementation(live) -> None:
    db, net = live
    f = ClassificationDataFilter(net, "digits", "v1", db=db)
    top = f.query(n_data=10, strategy="high_error_proba", run="pool")
    zoned = f.query(n_data=10, strategy={"target_zones": ["hotspot", "critical_hotspot"], "seed": 1})
    assert len(top) == 10 and not set(top) & set(zoned)  # saved: the second never resends the first
    with Store(db, read_only=True) as store:
        assert store.list_selections()["id"].to_list() == ["sel-1", "sel-2"]
    with pytest.raises(MldbgError, match="unknown key"):
        f.query(n_data=5, strategy={"zones": ["hotspot"]})


def test_tracer_writes_the_rows_extract_writes_and_evaluator_fits(demo: DemoFiles, live, tmp_path: Path) -> None:
    from ml_debugger.data_filter import ClassificationTracer, Evaluator

    db_live, net = live
    db = tmp_path / "t.duckdb"
    files = sorted(demo.val.glob("*/*.png"))
    x = torch.stack([load_image(str(p), PREPROCESS) for p in files])
    y = torch.tensor([int(p.parent.name) for p in files])
    ids = [f"{p.parent.name}/{p.name}" for p in files]
    with ClassificationTracer(net, "digits", "v1", db=db) as tracer:
        for s in range(0, len(ids), 64):
            out = tracer(x[s : s + 64], y[s : s + 64], input_ids=ids[s : s + 64], dataset_type="val")
            assert out.shape == (min(64, len(ids) - s), 10)
    with Store(db, read_only=True) as mine, Store(db_live, read_only=True) as theirs:
        a = mine.read_outputs("digits_v1_val")
        b = theirs.read_outputs("val")
        run = mine.require_run("digits_v1_val")
        _, fa = mine.read_features("digits_v1_val")
        _, fb = theirs.read_features("val")
    assert run.status == "complete" and run.labelled and a.height == b.height == len(ids)
    assert a["sample_id"].to_list() == b["sample_id"].to_list() and a["label"].equals(b["label"])
    assert (a["confidence"] - b["confidence"]).abs().max() < 1e-5  # type: ignore[operator]
    assert float(abs(fa - fb).max()) < 1e-5
    ev = Evaluator("digits", "v1", db=db)
    info = ev.request_evaluation("digits_v1_val", result_name="from_code", options={"zones": {"coverage_target": 0.05}})
    assert info.config["zones"]["coverage_target"] == 0.05
    assert ev.list_results()["name"].to_list() == ["from_code"]
    assert ev.get_result("from_code").eval_run == "digits_v1_val"
    with pytest.raises(MldbgError, match="exists"):
        ClassificationTracer(net, "digits", "v1", db=db)(x[:2], y[:2], dataset_type="val")


def test_config_flags_on_arrays_equal_the_polars_filter() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    cols = {
        "zone": rng.choice(["hotspot", "critical_hotspot", "stable_coverage"], 300),
        "error_proba": rng.random(300),
        "confidence": rng.random(300),
        "predicted": rng.choice(["cat", "dog"], 300),
        "stability": np.full(300, np.nan),
    }
    for cfg in (
        {"target_zones": ["hotspot", "critical_hotspot"]},
        {"conditions": ["error_proba>=0.5", "predicted==cat"]},
        {"target_zones": ["hotspot"], "conditions": [{"confidence": "<0.7"}]},
        {"conditions": ["stability<0.5"]},  # not measured: never true
    ):
        fc = FilterConfig.from_value(cfg)
        frame = pl.DataFrame(cols)
        assert fc.flags(cols) == frame.select(fc.expr().fill_null(False)).to_series().to_list(), cfg


def test_record_stores_the_scored_inputs_as_a_queryable_run(live, demo: DemoFiles, tmp_path: Path) -> None:
    import shutil

    db0, net = live
    db = tmp_path / "rec.duckdb"
    shutil.copy(db0, db)
    x, ids = _pool(demo)
    with ClassificationDataFilter(net, "digits", "v1", db=db, record=True, run_name="live") as f:
        lasts = []
        for s in range(0, 300, 50):
            f(x[s : s + 50], input_ids=ids[s : s + 50])
            lasts.append(f.last)
    rt = pl.concat(lasts)
    with Store(db, read_only=True) as store:
        run = store.require_run("live")
        stored = store.read_scores(f.result.name, "live")
        batch = store.read_scores(f.result.name, "pool").select("sample_id", pl.col("error_proba").alias("b"))
        outputs = store.read_outputs("live").select("sample_id", pl.col("confidence").alias("stored_confidence"))
    assert run.status == "complete" and not run.labelled and stored.height == 300
    # the recorded outputs are the signals this call scored (computed once, in NumPy)
    same = outputs.join(rt, left_on="sample_id", right_on="input_ids")
    assert same.height == 300 and (same["stored_confidence"] - same["confidence"]).abs().max() < 1e-6  # type: ignore[operator]
    both = stored.join(rt, left_on="sample_id", right_on="input_ids").join(batch, on="sample_id")
    assert both.height == 300 and (both["zone"] == both["zone_right"]).all()
    assert (both["error_proba"] - both["b"]).abs().max() < 1e-5  # type: ignore[operator]
    picked = f.query(n_data=5, strategy="high_error_proba", run="live")
    assert len(picked) == 5 and set(picked) <= set(ids[:300])
    with pytest.raises(MldbgError, match="a run named 'live' exists"):
        ClassificationDataFilter(net, "digits", "v1", db=db, record=True, run_name="live")


def test_real_time_stability_matches_the_extracted_stability(scored: Path, models: Models, demo: DemoFiles) -> None:
    """The runs came from the .pt2 (exported in eval mode: no MC-dropout), so the live module is
    scored without it too; noise and shifts are seeded per input id, so real time equals batch."""
    import numpy as np

    net = DigitsNet()
    net.load_state_dict(torch.load(models.weights, weights_only=True))
    net.eval()
    f = ClassificationDataFilter(net, "digits", "v1", db=scored, stability=True, mc_dropout=False)
    x, ids = _pool(demo)
    torch.manual_seed(0)
    lasts = []
    for s in range(0, len(ids), 128):
        f(x[s : s + 128], input_ids=ids[s : s + 128])
        lasts.append(f.last)
    assert not net.training and not any(m.training for m in net.modules())  # dropout switched back off
    rt = pl.concat(lasts)
    with Store(scored, read_only=True) as store:
        (name,) = store.result_names()
        batch = store.read_scores(name, "pool").select("sample_id", "error_proba", "zone")
    both = rt.join(batch, left_on="input_ids", right_on="sample_id", suffix="_batch")
    a, b = both["error_proba"].to_numpy(), both["error_proba_batch"].to_numpy()
    assert both.height == len(ids) and float(np.abs(a - b).max()) < 1e-4
    assert (both["zone"] == both["zone_batch"]).all()
