"""Federated audit end to end: the demo cohort's four sites run separately, bundled, merged centrally.

The central run is the session's `spine-audit demo` fixture (16 cases, seed 3); every site runs that run's
own protocol.yaml with `--site S --until metrics --bundle`; `spine-audit merge` must reproduce the central
statistics tables exactly (same estimates, intervals, tests and decisions).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app

KEY = "federation-test-study-key-0123"
SITES = ("site-A", "site-B", "site-C", "site-D")
#: Tables compared exactly; the mixed model is compared within 1e-6 (patient pseudonyms reorder the
#: categories of its patient variance component, which changes floating-point summation order only).
EXACT_TABLES = ("overall", "group_estimates", "gaps", "equivalence", "power", "acceptance", "table1")


@pytest.fixture(scope="module")
def federated(demo_run, tmp_path_factory, monkeypatch_module):
    central, _ = demo_run
    protocol = central / "protocol.yaml"
    root = tmp_path_factory.mktemp("federated")
    monkeypatch_module.setenv("SPINE_AUDIT_STUDY_KEY", KEY)
    runner = CliRunner()
    bundles = []
    for site in SITES:
        out = root / site
        result = runner.invoke(app, ["run", str(protocol), "--site", site, "--until", "metrics", "--bundle", "--out", str(out), "--quiet"])
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


def test_merged_mixed_model_equals_the_central_run_within_1e_6(federated):
    central, merged, _ = federated
    a = pd.read_csv(central / "tables" / "adjusted.csv")
    b = pd.read_csv(merged / "tables" / "adjusted.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)


def test_merged_run_has_a_report_and_records_the_bundles(federated):
    central, merged, bundles = federated
    assert (merged / "report.html").is_file()
    results = json.loads((merged / "results.json").read_text())
    assert results["protocol_sha256"] == json.loads((central / "results.json").read_text())["protocol_sha256"]
    assert results["data"]["n_cases"] == 16 and results["data"]["n_sites"] == 4
    listed = pd.read_csv(merged / "bundles.csv")
    assert sorted(listed["file"]) == sorted(b.name for b in bundles) or len(listed) == 4


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
