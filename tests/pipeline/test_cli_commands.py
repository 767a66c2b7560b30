"""CLI commands besides run/demo: sites check, compare, protocol errors."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app


def test_sites_check_reports_counts_and_exit_status(demo_run, tmp_path):
    cohort = demo_run[0] / "cohort"
    runner = CliRunner()
    good = runner.invoke(app, ["sites", "check", str(cohort / "sites" / "site-A.yaml")])
    assert good.exit_code == 0, good.output
    assert "site-A" in good.output
    broken = tmp_path / "site-A"
    shutil.copytree(cohort / "site-A", broken)
    victim = sorted((broken / "labels").glob("*.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated gzip
    config = tmp_path / "site.yaml"
    config.write_text((cohort / "sites" / "site-A.yaml").read_text().replace("../site-A", str(broken)))
    bad = runner.invoke(app, ["sites", "check", str(config)])
    assert bad.exit_code == 1, bad.output
    assert victim.stem.split(".")[0] in bad.output


def test_compare_two_runs_finds_the_planted_paired_difference(demo_run, tmp_path):
    other = tmp_path / "better-model"
    shutil.copytree(demo_run[0], other, ignore=shutil.ignore_patterns("cohort", "predictions", "*.html"))
    metrics = pd.read_csv(other / "metrics.csv")
    metrics.loc[metrics["metric"] == "dice", "value"] += 0.01
    metrics.to_csv(other / "metrics.csv", index=False)
    out = tmp_path / "compare.csv"
    result = CliRunner().invoke(app, ["compare", str(demo_run[0]), str(other), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    dice = table[table["metric"] == "dice"]
    assert len(dice) == 4 and ((dice["mean_difference"] - 0.01).abs() < 1e-9).all()
    assert (table.loc[table["metric"] != "dice", "mean_difference"].abs() < 1e-12).all()


def test_compare_all_pairs_gives_every_pair_with_its_planted_difference(demo_run, tmp_path):
    """--all-pairs: three runs give the three pairs; each pair's Dice difference is the planted shift between them."""
    shifts = {"plus1": 0.01, "plus3": 0.03}
    runs = [demo_run[0]]
    for name, shift in shifts.items():
        other = tmp_path / name
        shutil.copytree(demo_run[0], other, ignore=shutil.ignore_patterns("cohort", "predictions", "*.html"))
        metrics = pd.read_csv(other / "metrics.csv")
        metrics.loc[metrics["metric"] == "dice", "value"] += shift
        metrics.to_csv(other / "metrics.csv", index=False)
        runs.append(other)
    out = tmp_path / "pairs.csv"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--all-pairs", "--out", str(out)])
    assert result.exit_code == 0, result.output
    dice = pd.read_csv(out).query("metric == 'dice'")
    planted = {("run", "plus1"): 0.01, ("run", "plus3"): 0.03, ("plus1", "plus3"): 0.02}
    assert set(zip(dice["baseline"], dice["other"])) == set(planted)
    for (base, other), shift in planted.items():
        diffs = dice[(dice["baseline"] == base) & (dice["other"] == other)]["mean_difference"]
        assert len(diffs) == 4 and ((diffs - shift).abs() < 1e-9).all(), (base, other)


@pytest.mark.parametrize("content", ["name: [", "name: x\nversion: '1'\nstructures: [disk]\nmodel: {kind: checkpoint, path: x}\n"], ids=["yaml", "schema"])
def test_invalid_protocol_exits_2_with_the_reason(tmp_path, content):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1


def test_run_the_shipped_demo_protocol_until_sites(tmp_path):
    """`spine-audit run protocols/demo.yaml` reads the same cohort the demo generates (stopped after the manifest)."""
    from pathlib import Path

    protocol = Path(__file__).resolve().parents[2] / "protocols" / "demo.yaml"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(protocol), "--until", "sites", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 48 and manifest["site"].nunique() == 4
    assert not (out / "results.json").exists()  # stopped where asked
