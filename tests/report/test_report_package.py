"""Evidence package: contents, checksums, de-identification, tamper detection, CLI."""

from __future__ import annotations

import zipfile

import pandas as pd
from typer.testing import CliRunner

from audit.cli import app
from audit.report import build_package, verify_package


def test_package_contains_everything_and_verifies(demo_run, tmp_path):
    zip_path = build_package(demo_run[0], tmp_path / "evidence.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        manifest = pd.read_csv(zf.open("manifest.csv"))
    assert {"report.html", "results.json", "protocol.yaml", "metrics.csv", "failures.csv", "manifest.csv", "SHA256SUMS", "tables/group_estimates.csv"} <= names
    assert not any(n.endswith(".nii.gz") for n in names)
    assert not {"image_path", "label_path", "prediction_path"} & set(manifest.columns)
    result = verify_package(zip_path)
    assert result.ok, result.problems


def test_tampered_or_incomplete_package_is_rejected(demo_run, tmp_path):
    good = build_package(demo_run[0], tmp_path / "good.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "metrics.csv":
                data = data.replace(b"0.9", b"0.8", 1)
            if item.filename != "failures.csv":
                dst.writestr(item, data)
        dst.writestr("extra.txt", b"not listed")
    problems = verify_package(bad).problems
    assert any("metrics.csv: sha256 does not match" in p for p in problems)
    assert any("failures.csv" in p and "missing" in p for p in problems)
    assert any("extra.txt: not listed" in p for p in problems)
    assert not verify_package(tmp_path / "nothing.zip").ok


def test_cli_package_verify_and_report(demo_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "p.zip"
    assert runner.invoke(app, ["package", str(demo_run[0]), "--out", str(out)]).exit_code == 0
    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0 and "OK" in verified.output
    out.write_bytes(b"corrupt")
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 1
    assert runner.invoke(app, ["report", str(demo_run[0])]).exit_code == 0
