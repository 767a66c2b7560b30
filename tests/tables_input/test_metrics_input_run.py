"""`input: metrics` end to end: statistics, model comparison and report from published-style tables, no images.

Oracle: the per-site mean Dice in results.json is recomputed with plain pandas from the table the test wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.protocol import load_protocol

from test_metric_tables import SHORT, clinical_table, published_long_results, wide_from_long


def write_metrics_protocol(folder, *, n_cases: int = 30) -> tuple:
    """Two models' published tables (long CSV, wide Parquet) and a clinical TSV, plus the protocol using them."""
    a, b = published_long_results(0.0, n_cases=n_cases, seed=4), published_long_results(0.05, n_cases=n_cases, seed=5)
    a.to_csv(folder / "model_a.csv", index=False)
    wide_from_long(b).to_parquet(folder / "model_b.parquet")
    clinical_table(n_cases).to_csv(folder / "clinical.tsv", sep="\t", index=False)
    common = {"layout": "long", "case_id": "case", "structures": SHORT, "metrics": {"dsc": "dice", "nsd": "nsd_2mm"}}
    protocol = {
        "name": "published nnU-Net results",
        "version": "1",
        "input": "metrics",
        "model": {"name": "model-a"},
        "structures": ["vertebral_body", "intervertebral_disc"],
        "metrics": {"names": ["dice", "hd95"], "nsd_tolerances_mm": [2.0]},
        "subgroups": {"columns": ["site", "sex", "race", "age_band"]},
        "statistics": {"bootstrap_iterations": 200, "min_group_size": 3, "adjusted_model": {"enabled": False}},
        "acceptance": [{"id": "dice", "metric": "dice", "threshold": 0.8}],
        "metric_input": {
            "metadata": {"path": "clinical.tsv", "columns": {"case_id": "case", "patient_id": "patient", "site": "site_id", "age": "age_at_index", "sex": "sex", "race": "race", "vendor": "manufacturer"}},
            "tables": [
                {"model": "model-a", "path": "model_a.csv", **common},
                {"model": "model-b", "path": "model_b.parquet", **{**common, "layout": "wide", "pattern": "{metric}_{structure}"}},
            ],
        },
    }
    (folder / "protocol.yaml").write_text(yaml.safe_dump(protocol), encoding="utf-8")
    return folder / "protocol.yaml", a, b


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    protocol, a, b = write_metrics_protocol(folder)
    out = folder / "run"
    result = CliRunner().invoke(app, ["run", str(protocol), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, a, b


def test_metrics_input_run_writes_results_report_and_comparison_without_images(metrics_run):
    out, _, _ = metrics_run
    for name in ("results.json", "report.html", "metrics.csv", "manifest.csv", "metric-tables/model-a.csv", "metric-tables/model-b.csv", "metric-tables/comparison.csv"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["name"] == "model-a" and results["model"]["kind"] == "metric_table"
    assert results["data"]["n_cases"] == 30 and results["data"]["n_sites"] == 2
    comparison = pd.read_csv(out / "metric-tables" / "comparison.csv")
    disc = comparison[(comparison["structure"] == "intervertebral_disc") & (comparison["metric"] == "dice")].iloc[0]
    assert disc["baseline"] == "model-a" and disc["other"] == "model-b"
    assert disc["mean_difference"] < 0  # model-b was built 0.05 Dice lower


def test_site_means_equal_a_pandas_recomputation_of_the_input_table(metrics_run):
    out, a, _ = metrics_run
    results = json.loads((out / "results.json").read_text())
    clinical = clinical_table(30).rename(columns={"case": "case_id_local"})
    dice = a[a["metric"] == "dsc"].merge(clinical, left_on="case", right_on="case_id_local")
    expected = dice.assign(structure=dice["structure"].map(SHORT)).groupby(["site_id", "structure"])["value"].mean()
    rows = [r for r in results["statistics"]["group_estimates"] if r["axis"] == "site" and r["metric"] == "dice"]
    assert len(rows) == 4
    for r in rows:
        np.testing.assert_allclose(r["mean"], expected[(r["group"], r["structure"])], rtol=1e-12)


def test_protocol_in_metrics_mode_needs_no_sites_and_checks_the_model_name(tmp_path):
    protocol, _, _ = write_metrics_protocol(tmp_path, n_cases=6)
    assert load_protocol(protocol).input == "metrics"
    data = yaml.safe_load(protocol.read_text())
    data["model"] = {"name": "model-c"}
    protocol.write_text(yaml.safe_dump(data))
    from audit.protocol import ProtocolError

    with pytest.raises(ProtocolError, match=r"model.name: with input: metrics, the audited model is one of the tables' models \['model-a', 'model-b'\]; found 'model-c'"):
        load_protocol(protocol)
