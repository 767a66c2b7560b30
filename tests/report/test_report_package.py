"""Evidence package: contents, checksums, de-identification (path columns, identifying folders), tamper detection
(checksums and the manifest sha256 recorded in results.json), CLI."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from report_builders import LEAKY_DIR, synthetic_run
from typer.testing import CliRunner

from audit.cli import app
from audit.errors import IncompleteRunError
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


def _rezip(src: Path, dst: Path, edit) -> None:
    """Copy a package, passing each member through ``edit(name, data) -> data``, and rewrite SHA256SUMS to match."""
    with zipfile.ZipFile(src) as zin:
        members = {n: edit(n, zin.read(n)) for n in zin.namelist() if n != "SHA256SUMS"}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(members.items()))
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
        zout.writestr("SHA256SUMS", sums)


@pytest.fixture(scope="module")
def synthetic_package(tmp_path_factory):
    run = synthetic_run(tmp_path_factory.mktemp("pkg") / "run", images=0)
    (run / "report.html").write_text("<!DOCTYPE html><title>stand-in report</title>", encoding="utf-8")  # the package copies it as is
    return run, build_package(run)


def test_package_hides_identifying_folders_and_keeps_the_audited_manifest(synthetic_package):
    run, zip_path = synthetic_package
    assert zip_path == run / "evidence-package.zip"
    result = verify_package(zip_path)
    assert result.ok, result.problems
    with zipfile.ZipFile(zip_path) as zf:
        leaks = [n for n in zf.namelist() if LEAKY_DIR.encode() in zf.read(n)]
        manifest_bytes = zf.read("manifest.csv")
        info = json.loads(zf.read("package.json"))
        sums = dict(line.split("  ")[::-1] for line in zf.read("SHA256SUMS").decode().splitlines())
        failures = pd.read_csv(io.BytesIO(zf.read("failures.csv")))
        protocol_bytes = zf.read("protocol.yaml")
    assert leaks == []
    assert failures["error"].tolist() == ["corrupt image …/img.nii.gz"]
    assert set(info["redacted"]) == {"failures.csv", "metrics.csv", "results.json"}
    assert protocol_bytes == (run / "protocol.yaml").read_bytes()  # verbatim: its sha256 must still verify
    assert all(line.startswith("/") is False for line in manifest_bytes.decode().splitlines())
    results = json.loads((run / "results.json").read_text())
    assert hashlib.sha256(manifest_bytes).hexdigest() == results["data"]["manifest_sha256"] == sums["manifest.csv"]


def test_verify_detects_a_swapped_manifest_even_with_consistent_checksums(synthetic_package, tmp_path):
    _, zip_path = synthetic_package
    forged = tmp_path / "forged.zip"
    _rezip(zip_path, forged, lambda n, d: d.replace(b",F,", b",M,", 1) if n == "manifest.csv" else d)
    problems = verify_package(forged).problems
    assert len(problems) == 1 and "differs from results.json data.manifest_sha256" in problems[0], problems
    leaky = tmp_path / "leaky.zip"
    _rezip(zip_path, leaky, lambda n, d: d.replace(b"\xe2\x80\xa6/img.nii.gz", f"{LEAKY_DIR}/img.nii.gz".encode()) if n == "failures.csv" else d)
    assert any("failures.csv: holds absolute file paths" in p for p in verify_package(leaky).problems)


def test_build_package_names_missing_files(tmp_path):
    with pytest.raises(IncompleteRunError, match=r"lacks \[.report.html."):
        build_package(synthetic_run(tmp_path / "run", images=0))


# ---- protocol hash and HMAC signature -----------------------------------------------------------

KEY = b"0123456789abcdef-test-signing-key"


def test_an_edited_protocol_is_detected_even_with_consistent_checksums(synthetic_package, tmp_path):
    _, zip_path = synthetic_package
    forged = tmp_path / "forged-protocol.zip"
    _rezip(zip_path, forged, lambda n, d: d.replace(b"threshold: 0.8", b"threshold: 0.5", 1) if n == "protocol.yaml" else d)
    with zipfile.ZipFile(forged) as zf:
        assert b"threshold: 0.5" in zf.read("protocol.yaml")
    problems = verify_package(forged).problems
    assert len(problems) == 1 and problems[0].startswith("protocol.yaml: canonical sha256 differs from results.json protocol_sha256"), problems


@pytest.fixture(scope="module")
def signed_package(synthetic_package, tmp_path_factory):
    run, _ = synthetic_package
    return build_package(run, tmp_path_factory.mktemp("signed") / "signed.zip", key=KEY)


def test_a_signed_package_verifies_with_its_key_only(signed_package):
    good = verify_package(signed_package, key=KEY)
    assert good.ok and good.signature == "signature valid", good.problems
    unchecked = verify_package(signed_package)
    assert unchecked.ok and unchecked.signature == "signed, signature not checked (no key given)"
    other = verify_package(signed_package, key=b"another-key-of-enough-length")
    assert other.problems == ("SHA256SUMS.hmac-sha256: does not match SHA256SUMS under this key (the package changed after signing, or another key)",)


def test_a_consistent_rehash_after_editing_is_detected_only_with_the_key(signed_package, tmp_path):
    edited = tmp_path / "edited.zip"
    _rezip(signed_package, edited, lambda n, d: d.replace(b"0.9", b"0.8", 1) if n == "metrics.csv" else d)
    assert verify_package(edited).ok  # without the key a consistent re-hash cannot be told from the original
    problems = verify_package(edited, key=KEY).problems
    assert any(p.startswith("SHA256SUMS.hmac-sha256: does not match SHA256SUMS") for p in problems), problems
    stripped = tmp_path / "stripped.zip"
    with zipfile.ZipFile(signed_package) as zin, zipfile.ZipFile(stripped, "w") as zout:
        for name in zin.namelist():
            if name != "SHA256SUMS.hmac-sha256":
                zout.writestr(name, zin.read(name))
    assert verify_package(stripped, key=KEY).problems[0].startswith("SHA256SUMS.hmac-sha256: missing, but a key was given")


def test_cli_package_and_verify_with_a_key_file(synthetic_package, tmp_path):
    run, _ = synthetic_package
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY + b"\n")
    out = tmp_path / "signed.zip"
    runner = CliRunner()
    assert runner.invoke(app, ["package", str(run), "--out", str(out), "--key", str(key_file)]).exit_code == 0
    verified = runner.invoke(app, ["verify", str(out), "--key", str(key_file)])
    assert verified.exit_code == 0 and "signature valid" in verified.output
    key_file.write_bytes(b"short")
    short = runner.invoke(app, ["verify", str(out), "--key", str(key_file)])
    assert short.exit_code == 2 and short.stderr.splitlines() == [
        f"Error: --key: key file '{key_file}' holds 5 bytes; at least 16 are needed (e.g. `head -c 32 /dev/urandom | base64 > audit.key`)"
    ]
