"""Federated audit end to end: the demo cohort's four sites run separately, bundled, merged centrally.

The protocol is the session `spine-audit demo` fixture's own protocol.yaml (16 cases, seed 3). One central run
(`--until stats`) and four site runs (`--site S --until metrics --bundle`) use it with the same executor
(`--workers 1`); `spine-audit merge` must reproduce the central statistics tables exactly (same estimates,
intervals, tests and decisions).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app

KEY = "federation-test-study-key-0123"
SITES = ("site-A", "site-B", "site-C", "site-D")
#: Tables compared exactly, the mixed model (tables/adjusted.csv) included: the nested REML solver
#: (audit.stats.nested_lmm) does not depend on how patient ids (pseudonyms at the sites) sort.
EXACT_TABLES = ("overall", "group_estimates", "gaps", "equivalence", "power", "acceptance", "table1", "adjusted")


@pytest.fixture(scope="module")
def federated(demo_run, tmp_path_factory, monkeypatch_module):
    protocol = demo_run[0] / "protocol.yaml"
    root = tmp_path_factory.mktemp("federated")
    monkeypatch_module.setenv("SPINE_AUDIT_STUDY_KEY", KEY)
    runner = CliRunner()
    central = root / "central"
    result = runner.invoke(app, ["run", str(protocol), "--until", "stats", "--workers", "1", "--out", str(central), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    bundles = []
    for site in SITES:
        out = root / site
        result = runner.invoke(app, ["run", str(protocol), "--site", site, "--until", "metrics", "--bundle", "--workers", "1", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        bundles.append(out / "site-bundle.zip")
    merged = root / "merged"
    result = runner.invoke(app, ["merge", str(protocol), *map(str, reversed(bundles)), "--out", str(merged), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return central, merged, bundles


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("table", EXACT_TABLES)
def test_merged_statistics_equal_the_central_run(federated, table):
    central, merged, _ = federated
    a = pd.read_csv(central / "tables" / f"{table}.csv")
    b = pd.read_csv(merged / "tables" / f"{table}.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_merged_run_has_a_report_and_records_the_bundles(federated):
    central, merged, bundles = federated
    assert (merged / "report.html").is_file()
    results = json.loads((merged / "results.json").read_text())
    assert results["model"]["sha256"] == json.loads((central / "results.json").read_text())["model"]["sha256"]
    assert results["protocol_sha256"] == json.loads((central / "results.json").read_text())["protocol_sha256"]
    assert results["data"]["n_cases"] == 16 and results["data"]["n_sites"] == 4
    listed = pd.read_csv(merged / "bundles.csv")
    assert listed["sites"].tolist() == list(SITES)  # merged in site order whatever the order given


def test_merge_refuses_a_bundle_of_another_protocol(federated, tmp_path):
    import yaml

    central, _, bundles = federated
    data = yaml.safe_load((central / "protocol.yaml").read_text())
    data["statistics"]["seed"] += 1
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["merge", str(other), *map(str, bundles), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2
    assert "every site must run the same protocol file" in result.output
