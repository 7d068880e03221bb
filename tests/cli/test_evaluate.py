"""`mldbg evaluate`, `score`, `results` and `show RESULT` through the CLI, on real digits."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ml_debugger.cli.app import app
from ml_debugger.core.demo import DemoFiles
from ml_debugger.core.store import Store
from tests.conftest import PRE_FLAGS

runner = CliRunner()
NAME = re.compile(r"^digits_v1_classification_v1_\d{8}(_\d+)?$")


def _copy(db: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m.duckdb"
    shutil.copy(db, dst)
    return dst


def _results(db: Path) -> list[dict]:
    r = runner.invoke(app, ["results", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _pool_labels(demo: DemoFiles) -> pl.DataFrame:
    return pl.read_csv(demo.root / "pool_labels.csv").rename({"label": "true"})


def test_evaluate_prints_baselines_and_zones_and_names_the_result(scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db)])
    assert r.exit_code == 0, r.output
    for text in ("max softmax (MSP)", "entropy", "DOCTOR", "energy", "kNN Trust Score", "error_proba (mldbg)",
                 "AUPR-error", "FPR@95%TPR", "critical_hotspot", "stable_coverage", "out-of-fold"):  # fmt: skip
        assert text in r.output, text
    names = [x["name"] for x in _results(db)]
    assert len(names) == 2 and all(NAME.match(n) for n in names)
    assert names[1] == names[0] + "_2"  # a second result the same day never collides
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db), "--result-name", names[0]])
    assert r.exit_code == 2 and "exists (or the name is empty); choose another --result-name" in r.output


def test_result_metrics_are_out_of_fold_and_complete(scored: Path) -> None:
    with Store(scored, read_only=True) as store:
        (name,) = store.result_names()
        info = store.require_result(name)
        oof = store.read_scores(name, "val")
        pairs = store.scored_pairs().to_dicts()
    m = info.metrics
    assert set(m["detectors"]) == {"error_proba", "msp", "entropy", "doctor", "energy", "trust_score"}
    for d in m["detectors"].values():
        assert {"auroc", "aupr_error", "fpr95", "auroc_confident"} <= set(d)
    assert m["detectors"]["error_proba"]["auroc"] > m["detectors"]["msp"]["auroc"]
    assert 0 <= m["ece"] < 0.1 and m["calibration"].startswith("Platt")
    assert sum(z["count"] for z in m["zones"]) == m["samples"] == oof.height
    assert {p["run"]: p["out_of_fold"] for p in pairs} == {"val": True, "pool": False}
    assert oof["error_proba"].is_between(0, 1).all() and oof["zone"].null_count() == 0
    wrong = oof.filter(pl.col("pred") != pl.col("label"))
    assert wrong["error_code"].str.contains(r"^CLS\d->\d").all()
    assert oof.filter(pl.col("pred") == pl.col("label"))["error_code"].null_count() == oof.height - wrong.height


def test_score_is_cached_idempotent_and_identical_after_reopening(scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    r = runner.invoke(app, ["score", "pool", "--db", str(db)])
    assert r.exit_code == 0 and "cached scores" in r.output, r.output
    with Store(db, read_only=True) as store:
        (name,) = store.result_names()
        before = store.read_scores(name, "pool")
    r = runner.invoke(app, ["score", "pool", "--db", str(db), "--force", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cached"] is False
    with Store(db, read_only=True) as store:
        after = store.read_scores(name, "pool")
    assert before.equals(after)  # re-scoring in a new process-level store changes nothing
    assert after["zone"].n_unique() >= 3 and after["error_proba"].is_between(0, 1).all()
    assert after["error_code"].null_count() == after.height  # unlabelled: no codes


def test_calibrated_coverage_bound_holds_on_the_held_out_pool(demo: DemoFiles, scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    cfg = tmp_path / "loose.yaml"
    cfg.write_text("zones:\n  coverage_target: 0.05\n")  # the demo model is weak: 1% needs more data
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db), "--config", str(cfg), "--result-name", "loose"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["score", "pool", "--db", str(db), "--result", "loose"]).exit_code == 0
    with Store(db, read_only=True) as store:
        cov = store.require_result("loose").metrics["coverage"]
        pool = store.read_scores("loose", "pool").drop("label")
    assert cov["cutoff"] is not None and cov["upper_bound"] < 0.05
    pool = pool.join(_pool_labels(demo), on="sample_id")
    stable = pool.filter(pl.col("zone") == "stable_coverage")
    assert stable.height >= 50
    observed = float((stable["pred"] != stable["true"]).mean())  # type: ignore[arg-type]
    assert observed <= 0.05, f"{observed:.3f} of {stable.height} stable_coverage pool samples are wrong"


def test_show_result_and_guarded_drops(scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    (name,) = [x["name"] for x in _results(db)]
    r = runner.invoke(app, ["show", name, "--db", str(db)], terminal_width=160)
    assert r.exit_code == 0, r.output
    for text in ("zone thresholds", "stable_error_proba", "per class", "kNN bank", "best baseline"):
        assert text in r.output, text
    r = runner.invoke(app, ["show", name[:-2], "--db", str(db)])
    assert r.exit_code == 1 and f"did you mean: {name}" in r.output
    r = runner.invoke(app, ["runs", "drop", "val", "--db", str(db)])
    assert r.exit_code == 2 and f"result(s) {name}" in r.output and "results drop" in r.output
    assert runner.invoke(app, ["results", "drop", name, "--db", str(db)]).exit_code == 0
    assert runner.invoke(app, ["runs", "drop", "val", "--db", str(db)]).exit_code == 0
    assert _results(db) == []


@pytest.mark.parametrize(
    ("args", "yaml", "message"),
    [
        (["evaluate", "pool"], None, "run 'pool' is unlabelled"),
        (["score", "pool", "--result", "digits_v1_classification"], None, "did you mean: digits_v1_classification_v1_"),
        (["evaluate", "val", "--config", "CFG"], "zones: [unclosed\n", "is not valid YAML"),
        (["evaluate", "val", "--config", "CFG"], "zones:\n  odd: 1\n", "unknown key(s) odd in 'zones'; valid keys:"),
        (["evaluate", "val", "--config", "CFG"], "zones:\n  ood: 2\n", "ood = 2 is out of range"),
        (["evaluate", "val", "--config", "CFG"], "zones:\n  per_class: {ten: {ood: 0.5}}\n", "unknown class 'ten'"),
        (["evaluate", "nope"], None, "no run named 'nope'"),
    ],
)
def test_bad_input_is_one_clear_line(scored: Path, tmp_path: Path, args: list, yaml: str | None, message: str) -> None:
    db = _copy(scored, tmp_path)
    if yaml is not None:
        (tmp_path / "c.yaml").write_text(yaml)
        args = [str(tmp_path / "c.yaml") if a == "CFG" else a for a in args]
    r = runner.invoke(app, [*args, "--db", str(db)])
    assert r.exit_code in (1, 2), r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(_results(db)) == 1  # nothing half-written


def test_scoring_a_run_of_another_model_or_too_few_samples(demo: DemoFiles, scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    r = runner.invoke(app, ["extract", str(demo.pool), "--model", str(demo.model), "--model-name", "other",
                            "--name", "other", "--classes", str(demo.classes), "--db", str(db), "--workers", "0",
                            *PRE_FLAGS])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["score", "other", "--db", str(db)])
    assert r.exit_code == 2 and "no result for model other/v1" in r.output
    (name,) = [x["name"] for x in _results(db)]
    r = runner.invoke(app, ["score", "other", "--result", name, "--db", str(db)])
    assert r.exit_code == 2 and "model other/v1 ≠ digits/v1" in r.output
    # a labelled run of 12 samples: too few errors for the full model, said as a note
    manifest = tmp_path / "few.csv"
    files = sorted(demo.val.glob("*/*.png"))[::60]
    manifest.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    r = runner.invoke(app, ["extract", str(manifest), "--model", str(demo.model), "--model-name", "few",
                            "--name", "few", "--classes", str(demo.classes), "--db", str(db), "--workers", "0",
                            *PRE_FLAGS])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "few", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "note:" in r.output and ("fitted on confidence alone" in r.output or "nothing to fit" in r.output)


def test_injected_confusion_is_found_by_critical_hotspot(demo: DemoFiles, tmp_path: Path) -> None:
    """Train the demo CNN with every 3 labelled 8: on true labels those are confident errors."""
    import torch

    from ml_debugger.core.demo import _tensors, train_model

    x, y = _tensors(demo.train)
    net = train_model(x, torch.where(y == 3, torch.tensor(8), y), epochs=8)
    weights = tmp_path / "confused.pt"
    torch.save(net.state_dict(), weights)
    db = tmp_path / "c.duckdb"
    common = ["--model", "ml_debugger.core.demo:DigitsNet", "--weights", str(weights), "--model-name", "confused",
              "--db", str(db), "--workers", "0", "--stability", "4", *PRE_FLAGS]  # fmt: skip
    assert runner.invoke(app, ["extract", str(demo.val), "--name", "val", *common]).exit_code == 0
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    name = json.loads(r.stdout)["result"]
    with Store(db, read_only=True) as store:
        s = store.read_scores(name, "val")
    injected = s.filter((pl.col("label") == 3) & (pl.col("pred") == 8))
    assert injected.height >= 40  # the confusion took hold
    critical = s.filter(pl.col("zone") == "critical_hotspot")
    found = injected.filter(pl.col("zone") == "critical_hotspot")
    assert found.height >= 0.6 * injected.height, injected["zone"].value_counts()
    assert (critical["pred"] != critical["label"]).mean() >= 0.9  # what critical flags is wrong
    assert found["error_code"].str.starts_with("CLS3->8").all()
    assert found["error_code"].str.ends_with("**").mean() >= 0.8  # the neighbours vote for 3


def test_streamed_batches_and_inverted_file_scoring(demo: DemoFiles, scored: Path, tmp_path: Path) -> None:
    from ml_debugger.core.metrics import auroc
    from ml_debugger.core.scoring import compute_scores

    db = _copy(scored, tmp_path)
    with Store(db) as store:
        (name,) = store.result_names()
        info, run = store.require_result(name), store.require_run("pool")
        small = compute_scores(store, info, run, batch_rows=97).sort("sample_id")
        whole = compute_scores(store, info, run).sort("sample_id")
    assert small.equals(whole)  # batch boundaries change nothing
    cfg = tmp_path / "ivf.yaml"
    cfg.write_text("evaluate:\n  exact_max_pairs: 0\n")  # always the inverted file
    r = runner.invoke(app, ["evaluate", "val", "--db", str(db), "--config", str(cfg), "--result-name", "ivf"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["score", "pool", "--db", str(db), "--result", "ivf"]).exit_code == 0
    truth = _pool_labels(demo)
    with Store(db, read_only=True) as store:
        a = store.read_scores(name, "pool").join(truth, on="sample_id")
        b = store.read_scores("ivf", "pool").join(truth, on="sample_id")
    y = (a["pred"] != a["true"]).to_numpy()
    assert abs(auroc(y, a["error_proba"].to_numpy()) - auroc(y, b["error_proba"].to_numpy())) < 0.01
    assert abs(float(a["ood_score"].mean()) - float(b["ood_score"].mean())) < 0.1  # type: ignore[arg-type]


def test_reference_run_as_the_knn_bank(demo: DemoFiles, scored: Path, tmp_path: Path) -> None:
    db = _copy(scored, tmp_path)
    r = runner.invoke(app, ["extract", str(demo.train), "--model", str(demo.model), "--model-name", "digits",
                            "--name", "train", "--db", str(db), "--workers", "0", *PRE_FLAGS])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "val", "--reference", "train", "--result-name", "bank", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["score", "pool", "--result", "bank", "--db", str(db)]).exit_code == 0
    with Store(db, read_only=True) as store:
        info = store.require_result("bank")
        pool = store.read_scores("bank", "pool")
    assert info.reference_run == "train" and info.eval_run == "val"
    assert pool["error_proba"].is_between(0, 1).all() and pool.height > 500
    r = runner.invoke(app, ["runs", "drop", "train", "--db", str(db)])
    assert r.exit_code == 2 and "bank" in r.output  # the bank cannot vanish under the result
    r = runner.invoke(app, ["evaluate", "val", "--reference", "pool", "--db", str(db)])
    assert r.exit_code == 2 and "--reference 'pool' is not labelled" in r.output
